"""Application key registration and signature checks (SECURITY-CASES 4, 26)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from jwcrypto import jwk as jwcrypto_jwk

from sceau.core.b64 import b64u_decode, b64u_encode
from sceau.core.jwk import jwk_thumbprint, jws_sign
from sceau.errors import InvalidRequest, InvalidToken
from sceau.jose.appkeys import (
    AppKey,
    app_key_from_jwk,
    app_key_from_pem,
    enc_key_from_jwk,
)

RSA_2048 = rsa.generate_private_key(65537, 2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
MSG = b"header.claims"


def public_jwk(key: Any, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = jwcrypto_jwk.JWK.from_pyca(key.public_key()).export_public(
        as_dict=True
    )
    out.pop("kid")
    out.update(extra)
    return out


def private_jwk(key: Any, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = jwcrypto_jwk.JWK.from_pyca(key).export_private(as_dict=True)
    out.pop("kid")
    out.update(extra)
    return out


RSA_PUB = public_jwk(RSA_2048, alg="RS256")
EC_PUB = public_jwk(EC_KEY, alg="ES256")
ED_PUB = public_jwk(ED_KEY, alg="EdDSA")


def _rsa_with(n: int | None = None, e: int | None = None) -> dict[str, Any]:
    numbers = RSA_2048.public_key().public_numbers()
    n = numbers.n if n is None else n
    e = numbers.e if e is None else e
    return {
        "kty": "RSA",
        "alg": "RS256",
        "n": b64u_encode(n.to_bytes((n.bit_length() + 7) // 8, "big")),
        "e": b64u_encode(e.to_bytes((e.bit_length() + 7) // 8, "big")),
    }


def _off_curve() -> dict[str, Any]:
    y = bytearray(b64u_decode(EC_PUB["y"]))
    y[-1] ^= 1
    return {**EC_PUB, "y": b64u_encode(bytes(y))}


# RFC 7638 §3.1 example key and thumbprint.
RFC7638_N = (
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc"
    "_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQ"
    "R0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bF"
    "TWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
)


def test_thumbprint_rfc7638_vector() -> None:
    jwk = {"kty": "RSA", "n": RFC7638_N, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"}
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.mark.parametrize(
    ("jwk", "alg"),
    [
        pytest.param(RSA_PUB, "RS256", id="rsa-rs256"),
        pytest.param({**RSA_PUB, "alg": "PS256"}, "PS256", id="rsa-ps256"),
        pytest.param(EC_PUB, "ES256", id="ec-es256"),
        pytest.param(ED_PUB, "EdDSA", id="ed25519-eddsa"),
        pytest.param({**EC_PUB, "use": "sig"}, "ES256", id="use-sig"),
    ],
)
def test_registration_accepts(jwk: dict[str, Any], alg: str) -> None:
    key = app_key_from_jwk(jwk)
    assert key.alg == alg
    assert key.kid == jwk_thumbprint(jwk)  # default kid
    assert set(key.public_jwk) - {"kid", "alg", "use"} == set(jwk) - {"alg", "use"}
    assert key.public_jwk["kid"] == key.kid and key.public_jwk["alg"] == alg


def test_registration_keeps_given_kid() -> None:
    assert app_key_from_jwk({**EC_PUB, "kid": "my-key.2026"}).kid == "my-key.2026"


REGISTRATION_REFUSALS = [
    pytest.param(public_jwk(rsa.generate_private_key(65537, 1024), alg="RS256"), "2048 to 4096",
                 id="rsa-1024"),
    pytest.param(_rsa_with(n=(1 << 8191) | 1), "2048 to 4096", id="rsa-8192"),
    pytest.param(_rsa_with(n=(1 << 2047) | 2), "odd", id="rsa-even-modulus"),
    pytest.param(_rsa_with(e=3), "exponent", id="rsa-e3"),
    pytest.param(_rsa_with(e=65536), "exponent", id="rsa-e-even"),
    pytest.param(_rsa_with(e=2**64 + 1), "exponent", id="rsa-e-huge"),
    pytest.param({**RSA_PUB, "n": b64u_encode(b"\x00" + b64u_decode(RSA_PUB["n"]))}, "minimal",
                 id="rsa-leading-zero"),
    pytest.param({**RSA_PUB, "n": RSA_PUB["n"] + "="}, "base64url", id="rsa-padded"),
    pytest.param({**RSA_PUB, "n": 12345}, "base64url", id="rsa-n-int"),
    pytest.param(_off_curve(), "not on curve", id="ec-off-curve"),
    pytest.param({**EC_PUB, "x": b64u_encode(b64u_decode(EC_PUB["x"])[1:])}, "32 bytes",
                 id="ec-short-x"),
    pytest.param(public_jwk(ec.generate_private_key(ec.SECP384R1()), alg="ES256"), "P-256",
                 id="ec-p384"),
    pytest.param(public_jwk(x25519.X25519PrivateKey.generate(), alg="EdDSA"), "Ed25519",
                 id="x25519-for-signing"),
    pytest.param({k: v for k, v in RSA_PUB.items() if k != "alg"}, "'alg' is required",
                 id="rsa-no-alg"),
    pytest.param({k: v for k, v in EC_PUB.items() if k != "alg"}, "'alg' is required",
                 id="ec-no-alg"),
    pytest.param({**RSA_PUB, "alg": "ES256"}, "PS256, RS256", id="rsa-with-es256"),
    pytest.param({**RSA_PUB, "alg": "EdDSA"}, "PS256, RS256", id="rsa-with-eddsa"),
    pytest.param({**EC_PUB, "alg": "RS256"}, "ES256", id="ec-with-rs256"),
    pytest.param({**ED_PUB, "alg": "ES256"}, "EdDSA", id="ed-with-es256"),
    pytest.param({**RSA_PUB, "alg": "HS256"}, "PS256, RS256", id="rsa-with-hs256"),
    pytest.param({**RSA_PUB, "alg": "none"}, "PS256, RS256", id="rsa-with-none"),
    pytest.param(private_jwk(RSA_2048, alg="RS256"), "private key", id="rsa-private"),
    pytest.param(private_jwk(EC_KEY, alg="ES256"), "private key", id="ec-private"),
    pytest.param(private_jwk(ED_KEY, alg="EdDSA"), "private key", id="ed-private"),
    pytest.param({"kty": "oct", "k": "AAAA", "alg": "HS256"}, "private key", id="oct"),
    pytest.param({"kty": "AKP", "alg": "ML-DSA-44"}, "RSA, EC or OKP", id="kty-akp"),
    pytest.param({**EC_PUB, "x5c": ["MII..."]}, "x5c", id="x5c"),
    pytest.param({**EC_PUB, "key_ops": ["verify"]}, "key_ops", id="key-ops"),
    pytest.param({**EC_PUB, "use": "enc"}, "'use'", id="use-enc"),
    pytest.param({**EC_PUB, "kid": "../x"}, "kid", id="kid-path"),
    pytest.param({**EC_PUB, "kid": "a" * 300}, "kid", id="kid-long"),
    pytest.param(["kty", "EC"], "JSON object", id="not-an-object"),
]


@pytest.mark.parametrize(("jwk", "message"), REGISTRATION_REFUSALS)
def test_registration_refusals(jwk: Any, message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        app_key_from_jwk(jwk)
    assert message in info.value.detail


def test_appkey_constructor_validates_too() -> None:
    with pytest.raises(InvalidRequest):
        AppKey(kid="k", alg="RS256", public_jwk={**_rsa_with(e=3), "kid": "k"})
    with pytest.raises(InvalidRequest, match="differ"):
        AppKey(kid="k", alg="PS256", public_jwk={**RSA_PUB, "kid": "k"})


def test_from_pem() -> None:
    pem = EC_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key = app_key_from_pem(pem, "ES256")
    assert key.kid == jwk_thumbprint(EC_PUB)
    assert app_key_from_pem(pem, "ES256", kid="pem-1").kid == "pem-1"
    with pytest.raises(InvalidRequest, match="ES256"):
        app_key_from_pem(pem, "RS256")


@pytest.mark.parametrize(
    ("pem", "message"),
    [
        pytest.param(
            EC_KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()),
            "private key", id="private-pem"),
        pytest.param(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
                     "PEM public key", id="garbage"),
    ],
)
def test_from_pem_refusals(pem: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        app_key_from_pem(pem, "ES256")


# --- signature verification ----------------------------------------------------------------

SIGNERS: dict[str, tuple[Any, dict[str, Any]]] = {
    "RS256": (RSA_2048, RSA_PUB),
    "PS256": (RSA_2048, {**RSA_PUB, "alg": "PS256"}),
    "ES256": (EC_KEY, EC_PUB),
    "EdDSA": (ED_KEY, ED_PUB),
}


@pytest.mark.parametrize("alg", sorted(SIGNERS))
def test_verify_accepts_good_signature_and_rejects_other_message(alg: str) -> None:
    private, public = SIGNERS[alg]
    key = app_key_from_jwk(public)
    signature = jws_sign(alg, private, MSG)
    key.verify(MSG, signature)
    with pytest.raises(InvalidToken):
        key.verify(MSG + b"x", signature)


def _der_es256(msg: bytes) -> bytes:
    der: bytes = EC_KEY.sign(msg, ec.ECDSA(hashes.SHA256()))
    return der


def _rsa_sig(msg: bytes) -> bytes:
    sig: bytes = RSA_2048.sign(msg, padding.PKCS1v15(), hashes.SHA256())
    return sig


P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

BAD_SIGNATURES: list[Any] = [
    pytest.param("ES256", lambda m: b"\x00" * 64, id="es256-all-zero"),
    pytest.param("ES256", lambda m: jws_sign("ES256", EC_KEY, m)[:32] + b"\x00" * 32,
                 id="es256-s0"),
    pytest.param("ES256", lambda m: b"\x00" * 32 + jws_sign("ES256", EC_KEY, m)[32:],
                 id="es256-r0"),
    pytest.param("ES256", lambda m: P256_N.to_bytes(32, "big") + jws_sign("ES256", EC_KEY, m)[32:],
                 id="es256-r-equals-order"),
    pytest.param("ES256", _der_es256, id="es256-der"),
    pytest.param("ES256", lambda m: jws_sign("ES256", EC_KEY, m) + b"\x00", id="es256-65-bytes"),
    pytest.param("ES256", lambda m: encode_dss_signature(1, 1), id="es256-der-r1-s1"),
    pytest.param("RS256", lambda m: b"\x00" + _rsa_sig(m), id="rs256-leading-zero"),
    pytest.param("RS256", lambda m: _rsa_sig(m)[1:], id="rs256-short"),
    pytest.param("RS256", lambda m: b"\x00" * 256, id="rs256-zero"),
    pytest.param("PS256", lambda m: _rsa_sig(m), id="pkcs1-sig-on-ps256-key"),
    pytest.param("RS256", lambda m: jws_sign("PS256", RSA_2048, m), id="pss-sig-on-rs256-key"),
    pytest.param("EdDSA", lambda m: b"\x00" * 64, id="eddsa-zero"),
    pytest.param("EdDSA", lambda m: ED_KEY.sign(m)[:63], id="eddsa-short"),
]


@pytest.mark.parametrize(("alg", "make"), BAD_SIGNATURES)
def test_verify_refuses(alg: str, make: Callable[[bytes], bytes]) -> None:
    key = app_key_from_jwk(SIGNERS[alg][1])
    with pytest.raises(InvalidToken, match="signature does not verify"):
        key.verify(MSG, make(MSG))


# --- encryption keys ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "alg"),
    [
        pytest.param(RSA_2048, "RSA-OAEP-256", id="rsa"),
        pytest.param(EC_KEY, "ECDH-ES+A256KW", id="p256"),
        pytest.param(x25519.X25519PrivateKey.generate(), "ECDH-ES+A256KW", id="x25519"),
    ],
)
def test_enc_key_accepts(key: Any, alg: str) -> None:
    enc = enc_key_from_jwk(public_jwk(key))
    assert enc.alg == alg and enc.public_jwk["use"] == "enc"
    assert enc_key_from_jwk(public_jwk(key, alg=alg, use="enc")).kid == enc.kid


@pytest.mark.parametrize(
    ("jwk", "message"),
    [
        pytest.param(public_jwk(ED_KEY), "X25519", id="ed25519"),
        pytest.param(public_jwk(RSA_2048, alg="RSA1_5"), "RSA-OAEP-256", id="rsa1_5"),
        pytest.param(public_jwk(EC_KEY, alg="ECDH-ES"), "'alg' must be", id="ecdh-es"),
        pytest.param(public_jwk(rsa.generate_private_key(65537, 1024)), "2048", id="rsa-1024"),
        pytest.param(private_jwk(EC_KEY), "private key", id="private"),
        pytest.param(public_jwk(EC_KEY, use="sig"), "'use'", id="use-sig"),
    ],
)
def test_enc_key_refusals(jwk: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        enc_key_from_jwk(jwk)
