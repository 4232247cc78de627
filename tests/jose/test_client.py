"""The application side: request signing, wrapping, and strict response opening."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from sceau.core.b64 import b64u_decode, b64u_encode
from sceau.core.jwk import jwk_thumbprint
from sceau.errors import IntegrityFailure
from sceau.jose.appkeys import app_key_from_jwk, enc_key_from_jwk
from sceau.jose.client import (
    ClientIdentity,
    generate_app_keys,
    open_response,
    sign_request,
    wrap_for_service,
)
from sceau.jose.guard import parse_unverified_jws
from sceau.jose.response import compact_jws, lowlevel_jwe_encrypt

SERVICE = "https://127.0.0.1:8443"
APP = "app-1"
REQ = "cmVxdWVzdC1qdGktMTIzNDU"
OP = "generate-data-key"

SIGN_PRIV, SIGN_PUB, ENC_PRIV, ENC_PUB = generate_app_keys("ES256")
IDENTITY = ClientIdentity(APP, SIGN_PUB["kid"], "ES256", SIGN_PRIV, ENC_PRIV)

SERVICE_KEY = ed25519.Ed25519PrivateKey.generate()
OTHER_KEY = ed25519.Ed25519PrivateKey.generate()
_raw = SERVICE_KEY.public_key().public_bytes_raw()
SERVICE_PUB = {"kty": "OKP", "crv": "Ed25519", "x": b64u_encode(_raw), "alg": "EdDSA",
               "use": "sig"}
SERVICE_KID = jwk_thumbprint(SERVICE_PUB)
SERVICE_PUB["kid"] = SERVICE_KID
SERVICE_KEYS = {SERVICE_KID: SERVICE_PUB}


def response(*, sign: Callable[[bytes], bytes] = SERVICE_KEY.sign, header: Any = None,
             **overrides: Any) -> str:
    claims = {"iss": SERVICE, "aud": APP, "iat": 1_800_000_000, "jti": "c2VydmljZS1qdGktMDAwMDA",
              "req": REQ, "op": OP, "result": {"key_id": "AAAAAAAAAAAAAAAAAAAAAA"}}
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    hdr = header or {"alg": "EdDSA", "kid": SERVICE_KID, "typ": "sceau-resp+jwt"}
    return compact_jws(hdr, claims, sign)


def open_(token: str, **kwargs: Any) -> Any:
    args: dict[str, Any] = {
        "service_keys": SERVICE_KEYS, "enc_private_jwk": ENC_PRIV, "expected_aud": APP,
        "expected_iss": SERVICE, "expected_req": REQ, "expected_op": OP,
    }
    args.update(kwargs)
    return open_response(token, **args)


def test_open_plain_and_encrypted_response() -> None:
    assert open_(response())["result"] == {"key_id": "AAAAAAAAAAAAAAAAAAAAAA"}
    wrapped = lowlevel_jwe_encrypt(response(), enc_key_from_jwk(ENC_PUB))
    assert open_(wrapped, require_jwe=True)["req"] == REQ


def _tamper_claims(token: str) -> str:
    head, body, sig = token.split(".")
    claims = json.loads(b64u_decode(body))
    claims["result"]["key_id"] = "BBBBBBBBBBBBBBBBBBBBBB"
    return ".".join([head, b64u_encode(json.dumps(claims).encode()), sig])


def _flip_ciphertext(token: str) -> str:
    parts = token.split(".")
    raw = bytearray(b64u_decode(parts[3]))
    raw[0] ^= 1
    parts[3] = b64u_encode(bytes(raw))
    return ".".join(parts)


FORGERIES: list[Any] = [
    pytest.param(lambda: _tamper_claims(response()), {}, id="tampered-claims"),
    pytest.param(lambda: response(sign=OTHER_KEY.sign), {}, id="forged-same-kid"),
    pytest.param(lambda: response(header={"alg": "EdDSA", "kid": "rogue", "typ": "sceau-resp+jwt"},
                                  sign=OTHER_KEY.sign), {}, id="unpinned-kid"),
    pytest.param(lambda: response(header={"alg": "ES256", "kid": SERVICE_KID,
                                          "typ": "sceau-resp+jwt"}), {}, id="alg-not-keys"),
    pytest.param(lambda: response(header={"alg": "EdDSA", "kid": SERVICE_KID,
                                          "typ": "sceau-req+jwt"}), {}, id="request-typ"),
    pytest.param(lambda: response(header={"alg": "EdDSA", "kid": SERVICE_KID,
                                          "typ": "sceau-resp+jwt", "jku": "https://x"}), {},
                 id="extra-header"),
    pytest.param(lambda: response(iss="https://evil"), {}, id="wrong-iss"),
    pytest.param(lambda: response(aud="app-2"), {}, id="wrong-aud"),
    pytest.param(lambda: response(aud=[APP]), {}, id="aud-array"),
    pytest.param(lambda: response(req="b3RoZXItcmVxdWVzdC1qdGk"), {}, id="wrong-req"),
    pytest.param(lambda: response(op="decrypt"), {}, id="wrong-op"),
    pytest.param(lambda: response(result=None), {}, id="no-result"),
    pytest.param(lambda: response(iat="now"), {}, id="iat-string"),
    pytest.param(lambda: response(), {"require_jwe": True}, id="plain-when-jwe-required"),
    pytest.param(lambda: lowlevel_jwe_encrypt(response(), enc_key_from_jwk(ENC_PUB)),
                 {"enc_private_jwk": None}, id="jwe-without-key"),
    pytest.param(lambda: _flip_ciphertext(lowlevel_jwe_encrypt(response(),
                                                               enc_key_from_jwk(ENC_PUB))),
                 {}, id="jwe-bit-flip"),
    pytest.param(lambda: "é" + response(), {}, id="non-ascii"),
    pytest.param(lambda: response() + ".", {}, id="four-parts"),
]


@pytest.mark.parametrize(("make", "kwargs"), FORGERIES)
def test_open_response_refuses(make: Callable[[], str], kwargs: dict[str, Any]) -> None:
    with pytest.raises(IntegrityFailure):
        open_(make(), **kwargs)


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "PS256", "RS256"])
def test_generate_app_keys_and_sign_request(alg: str) -> None:
    sign_priv, sign_pub, enc_priv, enc_pub = generate_app_keys(alg)
    assert "d" in sign_priv and "d" not in sign_pub and "d" in enc_priv and "d" not in enc_pub
    assert sign_pub["alg"] == alg and sign_pub["use"] == "sig" and enc_pub["use"] == "enc"
    assert sign_pub["kid"] == jwk_thumbprint(sign_pub) == sign_priv["kid"]
    assert enc_pub["alg"] == ("RSA-OAEP-256" if alg in ("PS256", "RS256") else "ECDH-ES+A256KW")
    key = app_key_from_jwk(sign_pub)  # registrable as is
    enc_key_from_jwk(enc_pub)
    ident = ClientIdentity(APP, key.kid, alg, sign_priv, enc_priv)
    token = sign_request(ident, sub="alice@example.com", aud=SERVICE, op="encrypt",
                         params={"plaintext": "aGk"}, now=1000)
    parsed = parse_unverified_jws(token.encode(), expected_typ="sceau-req+jwt",
                                  allowed_algs=frozenset({alg}))
    assert dict(parsed.header) == {"alg": alg, "kid": key.kid, "typ": "sceau-req+jwt"}
    assert set(parsed.claims) == {"iss", "sub", "aud", "iat", "exp", "jti", "op", "params"}
    assert parsed.claims["exp"] - parsed.claims["iat"] == 60
    assert len(parsed.claims["jti"]) == 22
    key.verify(parsed.signing_input, parsed.signature)


def test_jti_is_fresh_each_call() -> None:
    tokens = {sign_request(IDENTITY, sub="a@b", aud=SERVICE, op="encrypt", params={}, now=1)
              for _ in range(5)}
    assert len(tokens) == 5


@pytest.mark.parametrize(
    ("alg", "jwk"),
    [
        pytest.param("EdDSA", SIGN_PRIV, id="ec-key-as-eddsa"),
        pytest.param("HS256", SIGN_PRIV, id="hs256"),
        pytest.param("ES256", SIGN_PUB, id="public-key-only"),
    ],
)
def test_client_identity_refuses_mismatch(alg: str, jwk: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ClientIdentity(APP, "k", alg, jwk, None)


def test_wrap_for_service_header() -> None:
    _, _, svc_priv, svc_pub = generate_app_keys("ES256")
    wrapped = wrap_for_service("a.b.c", svc_pub)
    header = json.loads(b64u_decode(wrapped.split(".")[0]))
    assert {k: header[k] for k in ("alg", "enc", "cty", "kid")} == {
        "alg": "ECDH-ES+A256KW", "enc": "A256GCM", "cty": "JWT", "kid": svc_pub["kid"]}
