"""Service side outputs: compact JWS assembled around a keystore signature, and JWE.

The JWS is assembled here rather than by a JOSE library because the signing key may live
in a PKCS#11 token: the keystore only ever sees the signing input and returns the raw
signature (Ed25519: 64 bytes; ES256: raw r||s, 64 bytes).

The outbound JWE (to an application's registered, already validated encryption key) is
composed low level, by :func:`lowlevel_jwe_encrypt`, from ``cryptography``'s primitives
(ECDH, Concat KDF, AES key wrap, RSA-OAEP, AES-GCM) for the two key-management algorithms
of SPEC §8 and ``enc`` A256GCM only.
jwcrypto spends ~0.5 ms of Python per ECDH-ES JWE (a deep copy of its header registry, an
ephemeral key built as a JWK object) against ~0.08 ms for the primitives themselves
(docs/performance.md); producing is the safe side, since nothing untrusted is parsed.
Every JWE *received* is still parsed by jwcrypto behind :mod:`sceau.jose.guard`, and the
tests decrypt what this module produces with jwcrypto and check RFC 7518's KDF vector.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import aes_key_wrap

from sceau.core.b64 import b64u_encode
from sceau.core.canonical import compact_json_encoder
from sceau.core.jwk import public_jwk
from sceau.jose.appkeys import EncKey
from sceau.jose.guard import JWE_ENC

__all__ = ["compact_json", "compact_jws", "concat_kdf", "lowlevel_jwe_encrypt"]

_OAEP_SHA256 = padding.OAEP(
    mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
)
_CEK_BYTES = 32  # A256GCM
_IV_BYTES = 12
_TAG_BYTES = 16


_COMPACT = compact_json_encoder(sort_keys=False)


def compact_json(value: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON (no whitespace, no NaN) as used for JOSE headers and claims."""
    return _COMPACT(value)


def compact_jws(
    header: Mapping[str, Any],
    claims: Mapping[str, Any],
    sign: Callable[[bytes], bytes],
) -> str:
    """Serialize ``header`` and ``claims``, have ``sign`` sign them, return the compact JWS.

    ``sign`` receives the JWS signing input (ASCII ``b64u(header) "." b64u(claims)``) and
    returns the raw signature for ``header["alg"]``.
    """
    if not isinstance(header.get("alg"), str):
        raise ValueError("JWS header needs an alg")
    signing_input = (
        b64u_encode(compact_json(header)) + "." + b64u_encode(compact_json(claims))
    )
    signature = sign(signing_input.encode("ascii"))
    if not isinstance(signature, bytes) or not signature:
        raise ValueError("sign() must return the raw signature bytes")
    return signing_input + "." + b64u_encode(signature)


def concat_kdf(
    shared: bytes, alg: str, key_bytes: int, apu: bytes = b"", apv: bytes = b""
) -> bytes:
    """RFC 7518 §4.6.2: the key derived from an ECDH-ES shared secret (SHA-256 Concat KDF).

    ``alg`` is the header's ``alg`` for key agreement with key wrapping (or ``enc`` for
    direct key agreement); AlgorithmID, PartyUInfo and PartyVInfo are length-prefixed and
    SuppPubInfo is the key length in bits, all big-endian 32-bit.
    """

    def prefixed(data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + data

    other = prefixed(alg.encode("ascii")) + prefixed(apu) + prefixed(apv)
    other += struct.pack(">I", key_bytes * 8)
    return ConcatKDFHash(hashes.SHA256(), key_bytes, otherinfo=other).derive(shared)


def _ephemeral_agreement(public: Any) -> tuple[dict[str, str], bytes]:
    """A fresh ephemeral key on ``public``'s curve: (its public JWK, the shared secret)."""
    if isinstance(public, ec.EllipticCurvePublicKey):
        eph = ec.generate_private_key(ec.SECP256R1())
        return public_jwk(eph), eph.exchange(ec.ECDH(), public)
    if isinstance(public, x25519.X25519PublicKey):
        eph_x = x25519.X25519PrivateKey.generate()
        # exchange() refuses a low-order peer key (all-zero shared secret).
        return public_jwk(eph_x), eph_x.exchange(public)
    raise ValueError("ECDH-ES needs an EC P-256 or X25519 public key")


def lowlevel_jwe_encrypt(jws: str, enc_key: EncKey) -> str:
    """Wrap a compact JWS in a compact JWE to ``enc_key`` (RFC 7516 compact serialization).

    Low level: the JWE is composed by hand from ``cryptography``'s primitives, not by a JOSE
    library (see the module's docstring for why). Only for what this service produces, to
    an already validated key; never a model for parsing anything received.

    Protected header ``{alg: enc_key.alg, enc: A256GCM, cty: JWT, kid: enc_key.kid}``, plus
    the ephemeral ``epk`` for ECDH-ES+A256KW. A fresh 256-bit content key and 96-bit IV per
    call; the AAD is the ASCII of the encoded protected header.
    """
    protected: dict[str, Any] = {"alg": enc_key.alg, "enc": JWE_ENC, "cty": "JWT",
                                 "kid": enc_key.kid}
    cek = os.urandom(_CEK_BYTES)
    public = enc_key.public_key
    if enc_key.alg == "RSA-OAEP-256":
        if not isinstance(public, rsa.RSAPublicKey):
            raise ValueError("RSA-OAEP-256 needs an RSA public key")
        encrypted_key = public.encrypt(cek, _OAEP_SHA256)
    elif enc_key.alg == "ECDH-ES+A256KW":
        epk, shared = _ephemeral_agreement(public)
        protected["epk"] = epk
        encrypted_key = aes_key_wrap(concat_kdf(shared, enc_key.alg, 32), cek)
    else:
        raise ValueError(f"unsupported JWE alg {enc_key.alg!r}")
    header = b64u_encode(compact_json(protected))
    iv = os.urandom(_IV_BYTES)
    sealed = AESGCM(cek).encrypt(iv, jws.encode("ascii"), header.encode("ascii"))
    return ".".join((
        header,
        b64u_encode(encrypted_key),
        b64u_encode(iv),
        b64u_encode(sealed[:-_TAG_BYTES]),
        b64u_encode(sealed[-_TAG_BYTES:]),
    ))
