"""The one JWK toolkit: keys to JWKs and back, thumbprints, raw JWS signatures, the lists."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519

from sceau.core.b64 import b64u_decode, b64u_encode
from sceau.core.jwk import (
    APP_SIGNING_ALGS,
    ISSUER_SIGNING_ALGS,
    P256_ORDER,
    SERVICE_SIGNING_ALGS,
    JwkError,
    jwk_thumbprint,
    jws_sign,
    jws_verify,
    public_jwk,
    public_key_from_jwk,
)
from sceau.errors import InvalidRequest
from sceau.vocab import SigAlg

KEYS: dict[str, Any] = {
    "rsa": rsa.generate_private_key(65537, 2048),
    "p256": ec.generate_private_key(ec.SECP256R1()),
    "ed25519": ed25519.Ed25519PrivateKey.generate(),
    "x25519": x25519.X25519PrivateKey.generate(),
}
SIGNERS = {SigAlg.PS256: "rsa", SigAlg.RS256: "rsa", SigAlg.ES256: "p256",
           SigAlg.EDDSA: "ed25519"}


def test_the_three_lists_derive_from_one_table() -> None:
    assert APP_SIGNING_ALGS == {"PS256", "RS256", "ES256", "EdDSA"}
    assert SERVICE_SIGNING_ALGS == ("EdDSA", "ES256")
    assert ISSUER_SIGNING_ALGS == {"PS256", "RS256", "ES256"}


@pytest.mark.parametrize("kind", sorted(KEYS))
def test_public_jwk_round_trip(kind: str) -> None:
    jwk = public_jwk(KEYS[kind])
    assert public_key_from_jwk(jwk) == KEYS[kind].public_key()
    assert public_jwk(KEYS[kind].public_key()) == jwk
    assert "d" not in jwk


def test_thumbprint_rfc7638_vector() -> None:
    n = ("0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc"
         "_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQ"
         "R0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bF"
         "TWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw")
    jwk = {"kty": "RSA", "n": n, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"}
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    assert jwk_thumbprint({**jwk, "d": "ignored"}) == jwk_thumbprint(jwk)


@pytest.mark.parametrize("jwk", [
    pytest.param({"kty": "oct", "k": "AAAA"}, id="symmetric"),
    pytest.param({"kty": "EC", "crv": "P-256", "x": "AAAA"}, id="no-y"),
    pytest.param({"kty": "OKP", "crv": "Ed25519", "x": 12}, id="x-not-a-string"),
])
def test_thumbprint_refusals(jwk: dict[str, Any]) -> None:
    with pytest.raises(JwkError):
        jwk_thumbprint(jwk)


@pytest.mark.parametrize(("jwk", "member"), [
    pytest.param({**public_jwk(KEYS["p256"]), "x": public_jwk(KEYS["p256"])["x"] + "="}, "'x'",
                 id="padded"),
    pytest.param({**public_jwk(KEYS["p256"]), "y": b64u_encode(bytes(31))}, "'y'",
                 id="short-y"),
    pytest.param({**public_jwk(KEYS["rsa"]), "e": b64u_encode(b"\x00\x01\x00\x01")}, "'e'",
                 id="rsa-leading-zero"),
    pytest.param({"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"}, "P-256", id="p384"),
])
def test_member_refusals_name_the_member(jwk: dict[str, Any], member: str) -> None:
    with pytest.raises(JwkError) as refused:
        public_key_from_jwk(jwk)
    assert member in refused.value.detail
    assert isinstance(refused.value, InvalidRequest) and isinstance(refused.value, ValueError)


def test_a_point_off_the_curve_is_refused() -> None:
    jwk = public_jwk(KEYS["p256"])
    y = bytearray(b64u_decode(jwk["y"]))
    y[-1] ^= 1
    with pytest.raises(JwkError, match="not on curve"):
        public_key_from_jwk({**jwk, "y": b64u_encode(bytes(y))})


@pytest.mark.parametrize("alg", sorted(SIGNERS))
def test_raw_signatures_round_trip(alg: SigAlg) -> None:
    key = KEYS[SIGNERS[alg]]
    signature = jws_sign(alg, key, b"signing input")
    jws_verify(alg, key.public_key(), b"signing input", signature)
    with pytest.raises(InvalidSignature):
        jws_verify(alg, key.public_key(), b"another input", signature)
    with pytest.raises(InvalidSignature):  # a longer signature is never valid
        jws_verify(alg, key.public_key(), b"signing input", signature + b"\x00")


def test_es256_is_raw_r_s_within_the_group_order() -> None:
    key = KEYS["p256"]
    signature = jws_sign(SigAlg.ES256, key, b"m")
    assert len(signature) == 64
    for bad in (bytes(32) + signature[32:], P256_ORDER.to_bytes(32, "big") + signature[32:]):
        with pytest.raises(InvalidSignature):
            jws_verify(SigAlg.ES256, key.public_key(), b"m", bad)


def test_an_algorithm_never_verifies_with_a_key_of_another_shape() -> None:
    signature = jws_sign(SigAlg.EDDSA, KEYS["ed25519"], b"m")
    with pytest.raises(InvalidSignature):
        jws_verify(SigAlg.ES256, KEYS["ed25519"].public_key(), b"m", signature)
    with pytest.raises(ValueError, match="cannot sign"):
        jws_sign(SigAlg.RS256, KEYS["p256"], b"m")
