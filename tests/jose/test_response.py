"""Service outputs: JWS assembled around a keystore callback, and JWE to an app's key."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from jwcrypto import jwe as jwcrypto_jwe
from jwcrypto import jwk as jwcrypto_jwk
from jwcrypto import jws as jwcrypto_jws

from sceau.core.b64 import b64u_decode, b64u_encode
from sceau.jose.appkeys import app_key_from_jwk, enc_key_from_jwk
from sceau.jose.guard import parse_unverified_jwe, parse_unverified_jws
from sceau.jose.response import compact_jws, concat_kdf, lowlevel_jwe_encrypt

ED_KEY = ed25519.Ed25519PrivateKey.generate()
EC_KEY = ec.generate_private_key(ec.SECP256R1())
CLAIMS = {"iss": "https://svc", "aud": "app-1", "iat": 1, "jti": "j" * 22, "req": "r" * 22,
          "op": "encrypt", "result": {"key_id": "AAAAAAAAAAAAAAAAAAAAAA", "note": "héllo"}}


def _es256_raw(data: bytes) -> bytes:
    r, s = decode_dss_signature(EC_KEY.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


SIGNERS: dict[str, tuple[Any, Any]] = {
    "EdDSA": (ED_KEY, ED_KEY.sign),
    "ES256": (EC_KEY, _es256_raw),
}


def _public(key: Any, alg: str) -> dict[str, Any]:
    out: dict[str, Any] = jwcrypto_jwk.JWK.from_pyca(key.public_key()).export_public(
        as_dict=True
    )
    out["alg"] = alg
    return out


@pytest.mark.parametrize("alg", sorted(SIGNERS))
def test_compact_jws_with_keystore_callback(alg: str) -> None:
    key, sign = SIGNERS[alg]
    public = _public(key, alg)
    seen: list[bytes] = []

    def keystore_sign(data: bytes) -> bytes:
        seen.append(data)
        signature: bytes = sign(data)
        return signature

    header = {"alg": alg, "kid": public["kid"], "typ": "sceau-resp+jwt"}
    token = compact_jws(header, CLAIMS, keystore_sign)
    head, body, sig = token.split(".")
    assert seen == [f"{head}.{body}".encode()]
    # Compact JSON, no whitespace, UTF-8 kept as is.
    assert b64u_decode(head) == b'{"alg":"%s","kid":"%s","typ":"sceau-resp+jwt"}' % (
        alg.encode(), public["kid"].encode())
    assert b" " not in b64u_decode(body)
    assert json.loads(b64u_decode(body)) == CLAIMS
    assert len(b64u_decode(sig)) == 64
    # Our own strict parser and verifier accept it...
    parsed = parse_unverified_jws(token.encode(), expected_typ="sceau-resp+jwt",
                                  allowed_algs=frozenset({alg}))
    app_key_from_jwk(public).verify(parsed.signing_input, parsed.signature)
    # ...and so does an independent implementation.
    check = jwcrypto_jws.JWS()
    check.deserialize(token)
    check.verify(jwcrypto_jwk.JWK(**public), alg=alg)


@pytest.mark.parametrize(
    ("header", "sign"),
    [
        pytest.param({"kid": "k"}, lambda d: b"x", id="no-alg"),
        pytest.param({"alg": "EdDSA"}, lambda d: b"", id="empty-signature"),
        pytest.param({"alg": "EdDSA"}, lambda d: "sig", id="str-signature"),
    ],
)
def test_compact_jws_refuses_misuse(header: dict[str, Any], sign: Any) -> None:
    with pytest.raises(ValueError):
        compact_jws(header, CLAIMS, sign)


def test_compact_jws_refuses_nan() -> None:
    with pytest.raises(ValueError):
        compact_jws({"alg": "EdDSA"}, {"x": float("nan")}, ED_KEY.sign)


ENC_KEYS = {
    "rsa": rsa.generate_private_key(65537, 2048),
    "p256": ec.generate_private_key(ec.SECP256R1()),
    "x25519": x25519.X25519PrivateKey.generate(),
}


@pytest.mark.parametrize("kind", sorted(ENC_KEYS))
def test_lowlevel_jwe_round_trip(kind: str) -> None:
    private = jwcrypto_jwk.JWK.from_pyca(ENC_KEYS[kind])
    enc_key = enc_key_from_jwk(private.export_public(as_dict=True))
    jws = compact_jws({"alg": "EdDSA", "kid": "k", "typ": "sceau-resp+jwt"}, CLAIMS, ED_KEY.sign)
    token = lowlevel_jwe_encrypt(jws, enc_key)
    parsed = parse_unverified_jwe(token.encode(), keys={enc_key.kid: enc_key.alg})
    assert parsed.alg == enc_key.alg and parsed.header["cty"] == "JWT"
    assert set(parsed.header) == {"alg", "enc", "cty", "kid"} | (
        {"epk"} if enc_key.alg == "ECDH-ES+A256KW" else set())
    envelope = jwcrypto_jwe.JWE(algs=[enc_key.alg, "A256GCM"])
    envelope.deserialize(token, key=private)
    assert envelope.payload.decode() == jws


def test_concat_kdf_matches_rfc7518_appendix_c() -> None:
    """RFC 7518 Appendix C: ECDH-ES between its two P-256 keys, A128GCM, apu Alice, apv Bob."""
    alice = ec.derive_private_key(
        int.from_bytes(b64u_decode("0_NxaRPUMQoAJt50Gz8YiTr8gRTwyEaCumd-MToTmIo"), "big"),
        ec.SECP256R1(),
    )
    bob = ec.EllipticCurvePublicKey.from_encoded_point(
        ec.SECP256R1(),
        b"\x04" + b64u_decode("weNJy2HscCSM6AEDTDg04biOvhFhyyWvOHQfeF_PxMQ")
        + b64u_decode("e8lnCO-AlStT-NJVX-crhB7QRYhiix03illJOVAOyck"),
    )
    shared = alice.exchange(ec.ECDH(), bob)
    assert b64u_encode(concat_kdf(shared, "A128GCM", 16, b"Alice", b"Bob")) == (
        "VqqN6vgjbSBcIijNcacQGg"
    )


@pytest.mark.parametrize("kind", sorted(ENC_KEYS))
def test_lowlevel_jwe_is_fresh_each_time(kind: str) -> None:
    """A new content key, IV (and ephemeral key for ECDH-ES) per call."""
    enc_key = enc_key_from_jwk(
        jwcrypto_jwk.JWK.from_pyca(ENC_KEYS[kind]).export_public(as_dict=True)
    )
    first, second = (lowlevel_jwe_encrypt("a.b.c", enc_key).split(".") for _ in range(2))
    assert len(first) == len(second) == 5
    for index in (1, 2, 3, 4):  # encrypted key, IV, ciphertext, tag
        assert first[index] != second[index]
    if enc_key.alg == "ECDH-ES+A256KW":
        assert first[0] != second[0]  # the header carries a fresh epk
        epk = json.loads(b64u_decode(first[0]))["epk"]
        assert set(epk) == ({"kty", "crv", "x", "y"} if kind == "p256" else {"kty", "crv", "x"})
        assert "d" not in epk
