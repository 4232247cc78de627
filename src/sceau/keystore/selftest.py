"""Start-up known-answer tests of the keystore (SECURITY-CASES 22).

Each test has a stable name; the first that fails raises :class:`KeystoreUnavailable`
naming it, and the service refuses to serve crypto operations (``/readyz`` says why).
The setting ``keystore.selftest_fail`` (``SCEAU_SELFTEST_FAIL=<name>``) forces one named test
to fail, so the refusal path itself can be tested; the forced failure corrupts the expected
answer, it does not skip the test.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from jwcrypto import jwk as jwcrypto_jwk

from sceau.errors import KeystoreUnavailable, SceauError
from sceau.keystore.base import KeyPurpose, derivation_input, verify_signature

if TYPE_CHECKING:
    from sceau.keystore.base import Keystore

__all__ = ["DERIVATION_VECTOR", "SELF_TESTS", "run_self_tests"]

SELF_TESTS = (
    "sha256",
    "hmac_sha256",
    "hmac_sha256_keystore",
    "derivation",
    "aes256_gcm",
    "sign_response",
    "sign_audit",
    "rsa_oaep_256",
    "ecdh_p256",
)

# FIPS 180-2 appendix B.1: SHA-256("abc").
_SHA256_KAT = (b"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
# RFC 4231 test case 6. Its 131-byte key also satisfies tokens that refuse HMAC keys shorter
# than the digest (SoftHSM2 does), so the same vector runs in software and in the token.
_HMAC_KAT = (
    b"\xaa" * 131,
    b"Test Using Larger Than Block-Size Key - Hash Key First",
    "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
)
# The SPEC §5 derivation with a fixed (test-only) master key: (master, key_id, seed, data key).
DERIVATION_VECTOR = (
    bytes(range(0x00, 0x20)),
    bytes(range(0x40, 0x50)),
    bytes(range(0x80, 0xA0)),
    "f487a3ca029641c9dd0eacee16f7f8d63277f774a3b2ca1b7a8870cdd82993e0",
)
# GCM specification (McGrew-Viega) test case 14: AES-256, zero key, IV and one zero block.
_GCM_KAT = (
    bytes(32),
    bytes(12),
    bytes(16),
    "cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919",
)
_SIGN_MESSAGE = b"sceau self-test message"


class _Failed(Exception):
    pass


def _expect(got: bytes, want_hex: str, corrupt: bool) -> None:
    want = bytearray.fromhex(want_hex)
    if corrupt:
        want[0] ^= 0x01
    if got != bytes(want):
        raise _Failed


def _software_hmac(key: bytes, data: bytes) -> bytes:
    mac = hmac.HMAC(key, hashes.SHA256())
    mac.update(data)
    return mac.finalize()


def run_self_tests(keystore: Keystore, *, forced: str = "") -> None:
    """Run every known-answer test against ``keystore``; raise on the first failure.

    ``forced`` names a test whose expected answer is corrupted (empty: none).
    """
    if forced and forced not in SELF_TESTS:
        raise KeystoreUnavailable(
            f"keystore.selftest_fail names no self-test ({', '.join(SELF_TESTS)})")
    for name in SELF_TESTS:
        corrupt = name == forced
        try:
            _run_one(keystore, name, corrupt)
        except (_Failed, InvalidTag, ValueError, SceauError):
            # The cause is not carried outward: a KAT failure says which test, nothing more.
            raise KeystoreUnavailable(f"keystore self-test failed: {name}") from None


def _run_one(keystore: Keystore, name: str, corrupt: bool) -> None:
    if name == "sha256":
        _expect(hashlib.sha256(_SHA256_KAT[0]).digest(), _SHA256_KAT[1], corrupt)
    elif name == "hmac_sha256":
        _expect(_software_hmac(_HMAC_KAT[0], _HMAC_KAT[1]), _HMAC_KAT[2], corrupt)
    elif name == "hmac_sha256_keystore":
        _expect(keystore.hmac_with_test_key(_HMAC_KAT[0], _HMAC_KAT[1]), _HMAC_KAT[2], corrupt)
    elif name == "derivation":
        master, key_id, seed, want = DERIVATION_VECTOR
        got = keystore.hmac_with_test_key(master, derivation_input(key_id, seed))
        _expect(got, want, corrupt)
    elif name == "aes256_gcm":
        key, nonce, plaintext, want = _GCM_KAT
        sealed = AESGCM(key).encrypt(nonce, plaintext, None)
        _expect(sealed, want, corrupt)
        if AESGCM(key).decrypt(nonce, sealed, None) != plaintext:
            raise _Failed
    elif name in ("sign_response", "sign_audit"):
        purpose = KeyPurpose.RESPONSE if name == "sign_response" else KeyPurpose.AUDIT
        info, signature = keystore.sign(purpose, _SIGN_MESSAGE)
        if corrupt:
            signature = bytes([signature[0] ^ 0x01]) + signature[1:]
        verify_signature(info.public_jwk, _SIGN_MESSAGE, signature)
        # A verifier that accepts anything would pass the line above; make sure it does not.
        try:
            verify_signature(info.public_jwk, _SIGN_MESSAGE + b"!", signature)
        except SceauError:
            pass
        else:
            raise _Failed
    elif name == "rsa_oaep_256":
        key = jwcrypto_jwk.JWK(**keystore.jwe_private_jwk()).get_op_key("unwrapKey")
        if not isinstance(key, rsa.RSAPrivateKey):
            raise _Failed
        oaep = padding.OAEP(
            mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
        )
        secret = bytes(range(32))
        ciphertext = bytearray(key.public_key().encrypt(secret, oaep))
        if corrupt:
            ciphertext[-1] ^= 0x01
        if key.decrypt(bytes(ciphertext), oaep) != secret:
            raise _Failed
    elif name == "ecdh_p256":
        # The preferred JWE key: ECDH both ways with a throw-away peer must agree.
        jwks = [j for j in keystore.jwe_private_jwks() if j.get("kty") == "EC"]
        if not jwks:
            raise _Failed
        own = jwcrypto_jwk.JWK(**jwks[0]).get_op_key("unwrapKey")
        if not isinstance(own, ec.EllipticCurvePrivateKey):
            raise _Failed
        peer = ec.generate_private_key(ec.SECP256R1())
        ours = bytearray(own.exchange(ec.ECDH(), peer.public_key()))
        if corrupt:
            ours[0] ^= 0x01
        if len(ours) != 32 or bytes(ours) != peer.exchange(ec.ECDH(), own.public_key()):
            raise _Failed
    else:  # pragma: no cover - SELF_TESTS and this dispatch are kept in step
        raise _Failed
