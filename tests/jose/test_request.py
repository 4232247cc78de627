"""Request verification end to end at the JOSE layer (SECURITY-CASES 1-8, 10-13)."""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, x25519
from jwcrypto import jwe as jwcrypto_jwe
from jwcrypto import jwk as jwcrypto_jwk

from sceau.core.b64 import b64u_decode, b64u_encode
from sceau.core.jwk import jwk_thumbprint
from sceau.errors import (
    InvalidToken,
    PayloadTooLarge,
    SceauError,
    TokenExpired,
    UnknownApplication,
)
from sceau.jose.appkeys import AppKey, app_key_from_jwk
from sceau.jose.client import ClientIdentity, sign_request, wrap_for_service
from sceau.jose.request import JWE_REFUSED, RequestVerifier, TokenRefused, VerifiedRequest
from sceau.jose.response import compact_jws

SERVICE = "https://127.0.0.1:8443"
NOW = 1_800_000_000
APP1, APP2 = "app-1", "app-2"
OP = "encrypt"


def _jwks(key: Any, alg: str) -> tuple[dict[str, Any], dict[str, Any]]:
    jwk = jwcrypto_jwk.JWK.from_pyca(key)
    private: dict[str, Any] = jwk.export_private(as_dict=True)
    public: dict[str, Any] = jwk.export_public(as_dict=True)
    for part in (private, public):
        part["alg"] = alg
    return private, public


RSA_KEY = rsa.generate_private_key(65537, 2048)
PS_KEY = rsa.generate_private_key(65537, 2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
APP2_KEY = ec.generate_private_key(ec.SECP256R1())

IDENTITIES: dict[str, ClientIdentity] = {}
REGISTRY: dict[str, tuple[str, AppKey]] = {}
for _app, _key, _alg in [
    (APP1, RSA_KEY, "RS256"),
    (APP1, PS_KEY, "PS256"),
    (APP1, EC_KEY, "ES256"),
    (APP1, ED_KEY, "EdDSA"),
    (APP2, APP2_KEY, "ES256"),
]:
    _private, _public = _jwks(_key, _alg)
    _ident = ClientIdentity(_app, _public["kid"], _alg, _private, None)
    IDENTITIES[f"{_app}/{_alg}"] = _ident
    REGISTRY[_ident.kid] = (_app, app_key_from_jwk(_public))

SERVICE_ENC: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "rsa": _jwks(rsa.generate_private_key(65537, 2048), "RSA-OAEP-256"),
    "p256": _jwks(ec.generate_private_key(ec.SECP256R1()), "ECDH-ES+A256KW"),
    "x25519": _jwks(x25519.X25519PrivateKey.generate(), "ECDH-ES+A256KW"),
}


class Lookup:
    """The registry as the store would serve it, recording every kid asked for."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, kid: str) -> tuple[str, AppKey] | None:
        self.asked.append(kid)
        return REGISTRY.get(kid)


def verifier(lookup: Callable[[str], tuple[str, AppKey] | None] | None = None,
             enc: str | None = "rsa", **kwargs: Any) -> RequestVerifier:
    return RequestVerifier(
        service_id=SERVICE,
        lookup_key=lookup or Lookup(),
        jwe_private_jwks=[SERVICE_ENC[enc][0]] if enc else (),
        **kwargs,
    )


def ident(alg: str = "ES256", app: str = APP1) -> ClientIdentity:
    return IDENTITIES[f"{app}/{alg}"]


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": APP1, "sub": "alice@example.com", "aud": SERVICE, "iat": NOW, "exp": NOW + 60,
        "jti": "AAAAAAAAAAAAAAAAAAAAAQ", "op": OP, "params": {"plaintext": "aGk"},
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not DROP}


DROP = object()


def token(alg: str = "ES256", *, header: Mapping[str, Any] | None = None,
          signer: ClientIdentity | None = None, **overrides: Any) -> bytes:
    """A request signed by ``signer`` (default: app-1's ``alg`` key) with claim overrides."""
    who = signer or ident(alg)
    hdr = header if header is not None else {"alg": who.alg, "kid": who.kid,
                                             "typ": "sceau-req+jwt"}
    return compact_jws(hdr, claims(**overrides), who.sign).encode()


def raw_token(header: bytes, payload: bytes, who: ClientIdentity | None = None) -> bytes:
    """A token from exact JSON bytes, correctly signed, to isolate structural refusals."""
    who = who or ident()
    signing_input = f"{b64u_encode(header)}.{b64u_encode(payload)}"
    return f"{signing_input}.{b64u_encode(who.sign(signing_input.encode()))}".encode()


def unsigned(header: Mapping[str, Any], sig: bytes = b"") -> bytes:
    hdr = b64u_encode(json.dumps(header).encode())
    return f"{hdr}.{b64u_encode(json.dumps(claims()).encode())}.{b64u_encode(sig)}".encode()


def hs256(secret: bytes) -> bytes:
    """HS256 "signed" with the app's public key as the MAC secret (key confusion)."""
    who = ident("RS256")
    hdr = b64u_encode(json.dumps({"alg": "HS256", "kid": who.kid,
                                  "typ": "sceau-req+jwt"}).encode())
    body = b64u_encode(json.dumps(claims()).encode())
    mac = hmac.new(secret, f"{hdr}.{body}".encode(), "sha256").digest()
    return f"{hdr}.{body}.{b64u_encode(mac)}".encode()


RSA_PUBLIC = RSA_KEY.public_key()
PUBLIC_FORMS = {
    "pem": RSA_PUBLIC.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo),
    "der": RSA_PUBLIC.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo),
    "jwk-json": json.dumps(REGISTRY[ident("RS256").kid][1].public_jwk).encode(),
}


def resign(tok: bytes, signature: bytes) -> bytes:
    return tok.rsplit(b".", 1)[0] + b"." + b64u_encode(signature).encode()


def _es256_der(tok: bytes) -> bytes:
    signing_input = tok.rsplit(b".", 1)[0]
    return resign(tok, EC_KEY.sign(signing_input, ec.ECDSA(hashes.SHA256())))


def _ps256_on_rs256_key() -> bytes:
    rs = ident("RS256")
    hdr = {"alg": "PS256", "kid": rs.kid, "typ": "sceau-req+jwt"}
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    return compact_jws(hdr, claims(),
                       lambda m: RSA_KEY.sign(m, pss, hashes.SHA256())).encode()


def _eddsa_on_rsa_key() -> bytes:
    hdr = {"alg": "EdDSA", "kid": ident("RS256").kid, "typ": "sceau-req+jwt"}
    return compact_jws(hdr, claims(), ED_KEY.sign).encode()


def _header_plus(name: str, value: Any) -> bytes:
    who = ident()
    return token(header={"alg": who.alg, "kid": who.kid, "typ": "sceau-req+jwt", name: value})


def _with_kid(kid: str) -> bytes:
    return token(header={"alg": "ES256", "kid": kid, "typ": "sceau-req+jwt"})


GOOD_HEADER_JSON = b'{"alg":"ES256","kid":"%s","typ":"sceau-req+jwt"}'


def _dup_header() -> bytes:
    kid = ident().kid.encode()
    header = b'{"alg":"ES256","kid":"%s","typ":"sceau-req+jwt","alg":"ES256"}' % kid
    return raw_token(header, json.dumps(claims()).encode())


def _dup_claims() -> bytes:
    body = json.dumps(claims())[:-1] + ', "iss": "app-2"}'
    return raw_token(GOOD_HEADER_JSON % ident().kid.encode(), body.encode())


def _claims_text(text: str) -> bytes:
    """Claims with ``exp`` given as raw JSON text (NaN, 1e400, ...), correctly signed."""
    body = json.dumps(claims(exp=0)).replace('"exp": 0', f'"exp": {text}')
    return raw_token(GOOD_HEADER_JSON % ident().kid.encode(), body.encode())


IT, TE, UA = InvalidToken, TokenExpired, UnknownApplication

# (token factory, expected error, expected TokenRefused.app_id)
REFUSALS: list[Any] = [
    # SECURITY-CASES 1: alg none in every spelling, with and without a signature part.
    *(pytest.param(lambda a=a: unsigned({"alg": a, "kid": ident().kid, "typ": "sceau-req+jwt"}),
                   IT, None, id=f"alg-{a}") for a in ["none", "None", "nOnE", "NONE"]),
    pytest.param(lambda: unsigned({"alg": "none", "kid": ident().kid, "typ": "sceau-req+jwt"},
                                  b"x"), IT, None, id="alg-none-with-sig"),
    # 2: HS256 with the public key as the MAC secret, in each form an attacker might try.
    *(pytest.param(lambda f=f: hs256(PUBLIC_FORMS[f]), IT, None, id=f"hs256-{f}")
      for f in PUBLIC_FORMS),
    # 3: a real algorithm that is not the key's.
    pytest.param(_ps256_on_rs256_key, IT, APP1, id="ps256-on-rs256-key"),
    pytest.param(_eddsa_on_rsa_key, IT, APP1, id="eddsa-on-rsa-key"),
    pytest.param(lambda: token("ES256", header={"alg": "ES256", "kid": ident("EdDSA").kid,
                                                 "typ": "sceau-req+jwt"}),
                 IT, APP1, id="es256-on-ed25519-key"),
    # 4: malformed signatures.
    pytest.param(lambda: resign(token("ES256"), b"\x00" * 64), IT, APP1, id="es256-all-zero"),
    pytest.param(lambda: resign(token("ES256"), b"\x00" * 32 + token_sig("ES256")[32:]),
                 IT, APP1, id="es256-r0"),
    pytest.param(lambda: _es256_der(token("ES256")), IT, APP1, id="es256-der"),
    pytest.param(lambda: resign(token("RS256"), b"\x00" + token_sig("RS256")), IT, APP1,
                 id="rs256-sig-too-long"),
    pytest.param(lambda: resign(token("RS256"), token_sig("RS256")[:-1]), IT, APP1,
                 id="rs256-sig-too-short"),
    pytest.param(lambda: resign(token("EdDSA"), token_sig("ES256")), IT, APP1,
                 id="eddsa-other-sig"),
    pytest.param(lambda: token("ES256", sub="mallory@example.com")[:-8] + b"AAAAAAAA",
                 IT, APP1, id="tampered-signature"),
    # 5: hostile kids: refused by the cheap check, or looked up exactly and not found.
    pytest.param(lambda: _with_kid("' OR '1'='1"), IT, None, id="kid-sql-spaces"),
    pytest.param(lambda: _with_kid("x'OR'1'='1';--"), IT, None, id="kid-sql-quotes"),
    pytest.param(lambda: _with_kid("1;DROP(TABLE)apps;--"), UA, None, id="kid-sql-no-quotes"),
    pytest.param(lambda: _with_kid("../../../etc/passwd"), IT, None, id="kid-dotdot"),
    pytest.param(lambda: _with_kid("..\\..\\boot.ini"), IT, None, id="kid-backslash"),
    pytest.param(lambda: _with_kid("k\x00"), IT, None, id="kid-nul"),
    pytest.param(lambda: _with_kid("k" * 10_240), IT, None, id="kid-10kb"),
    pytest.param(lambda: _with_kid("unregistered"), UA, None, id="kid-unknown"),
    pytest.param(lambda: token(signer=ident("ES256", APP2)), IT, APP2, id="kid-of-other-app"),
    pytest.param(lambda: token(header={"alg": "ES256", "kid": ident("ES256", APP2).kid,
                                       "typ": "sceau-req+jwt"}),
                 IT, APP2, id="other-apps-kid-own-signature"),
    # 6: forbidden header members, before any signature work.
    *(pytest.param(lambda h=h: _header_plus(h, "https://attacker.example/k"), IT, None,
                   id=f"header-{h}")
      for h in ["jku", "x5u", "x5c", "crit", "zip", "b64", "cty", "x5t", "nonce"]),
    pytest.param(lambda: _header_plus("jwk", REGISTRY[ident().kid][1].public_jwk), IT, None,
                 id="header-jwk"),
    # 7: serialization games.
    pytest.param(lambda: json.dumps({
        "protected": token().split(b".")[0].decode(), "payload": token().split(b".")[1].decode(),
        "signature": token().split(b".")[2].decode()}).encode(), IT, None,
        id="json-flattened"),
    pytest.param(lambda: json.dumps({
        "payload": token().split(b".")[1].decode(),
        "signatures": [{"protected": token().split(b".")[0].decode(), "header": {"kid": "x"},
                        "signature": token().split(b".")[2].decode()}]}).encode(), IT, None,
        id="json-general-unprotected"),
    pytest.param(lambda: token() + b".", IT, None, id="extra-empty-segment"),
    pytest.param(lambda: token() + b".e30", IT, None, id="extra-segment"),
    pytest.param(lambda: token().rsplit(b".", 1)[0], IT, None, id="missing-signature-segment"),
    pytest.param(lambda: b".".join(token().split(b".")[::2]), IT, None, id="missing-payload"),
    pytest.param(lambda: token() + b"==", IT, None, id="padding"),
    pytest.param(lambda: token().replace(b".", b"==.", 1), IT, None, id="padded-header"),
    pytest.param(lambda: token() + b"\r\n", IT, None, id="trailing-crlf"),
    pytest.param(lambda: b"\t" + token(), IT, None, id="leading-tab"),
    pytest.param(lambda: token().replace(b".", b" .", 1), IT, None, id="inner-space"),
    pytest.param(lambda: token() + "\u00e9".encode(), IT, None, id="non-ascii"),
    pytest.param(lambda: token().replace(b".", b"\xff.", 1), IT, None, id="invalid-byte"),
    pytest.param(lambda: raw_token(GOOD_HEADER_JSON % ident().kid.encode(),
                                   b'{"iss":"app-1","sub":"\xc3\x28"}'), IT, None,
                 id="claims-invalid-utf8"),
    # 8: duplicate member names.
    pytest.param(_dup_header, IT, None, id="duplicate-header-member"),
    pytest.param(_dup_claims, IT, None, id="duplicate-claim"),
    # 10: claims.
    *(pytest.param(lambda c=c: token(**{c: DROP}), IT, APP1, id=f"missing-{c}")
      for c in ["exp", "iat", "jti", "aud", "iss", "sub", "op", "params"]),
    pytest.param(lambda: token(nbf=NOW), IT, APP1, id="unknown-claim-nbf"),
    pytest.param(lambda: token(iat=NOW - 200, exp=NOW - 61), TE, APP1, id="exp-past"),
    pytest.param(lambda: token(iat=NOW + 61, exp=NOW + 120), IT, APP1, id="iat-future"),
    pytest.param(lambda: token(iat=NOW, exp=NOW + 301), IT, APP1, id="lifetime-301"),
    pytest.param(lambda: token(iat=NOW, exp=NOW - 1), IT, APP1, id="exp-before-iat"),
    pytest.param(lambda: token(exp=str(NOW + 60)), IT, APP1, id="exp-string"),
    pytest.param(lambda: token(exp=True), IT, APP1, id="exp-bool"),
    pytest.param(lambda: token(iat=False), IT, APP1, id="iat-bool"),
    pytest.param(lambda: token(exp=float(NOW + 60)), IT, APP1, id="exp-float"),
    pytest.param(lambda: token(exp=-1), IT, APP1, id="exp-negative"),
    pytest.param(lambda: token(exp=2**64), IT, APP1, id="exp-2-64"),
    pytest.param(lambda: _claims_text("NaN"), IT, None, id="exp-nan"),
    pytest.param(lambda: _claims_text("1e400"), IT, None, id="exp-1e400"),
    pytest.param(lambda: _claims_text("9" * 5000), IT, None, id="exp-5000-digits"),
    pytest.param(lambda: _claims_text("1" + "0" * 4000), IT, APP1, id="exp-4001-digits"),
    pytest.param(lambda: token(jti="short"), IT, APP1, id="jti-short"),
    pytest.param(lambda: token(jti="A" * 129), IT, APP1, id="jti-long"),
    pytest.param(lambda: token(jti="A" * 21 + "/"), IT, APP1, id="jti-charset"),
    pytest.param(lambda: token(jti=12345678901234567890123), IT, APP1, id="jti-int"),
    pytest.param(lambda: token(sub=""), IT, APP1, id="sub-empty"),
    pytest.param(lambda: token(sub="a" * 321), IT, APP1, id="sub-too-long"),
    pytest.param(lambda: token(sub="alice\n@x"), IT, APP1, id="sub-control-char"),
    pytest.param(lambda: token(sub=["alice"]), IT, APP1, id="sub-array"),
    pytest.param(lambda: token(params=[1]), IT, APP1, id="params-array"),
    pytest.param(lambda: token(params=None), IT, APP1, id="params-null"),
    pytest.param(lambda: token(iss=APP2), IT, APP1, id="iss-not-owner"),
    pytest.param(lambda: token(params={"a": json.loads("[" * 20 + "]" * 20)}),
                 None, None, id="params-depth-20-ok"),
    pytest.param(lambda: raw_token(GOOD_HEADER_JSON % ident().kid.encode(),
                                   b'{"params":' + b"[" * 10_000 + b"]" * 10_000 + b"}"),
                 IT, None, id="params-10000-deep"),
    # 11: wrong token kind, audience or operation.
    pytest.param(lambda: token(header={"alg": "ES256", "kid": ident().kid,
                                       "typ": "sceau-resp+jwt"}), IT, None,
                 id="response-typ"),
    pytest.param(lambda: token(header={"alg": "ES256", "kid": ident().kid, "typ": "JWT"}), IT,
                 None, id="typ-jwt"),
    pytest.param(lambda: token(aud="https://other.example:8443"), IT, APP1, id="aud-other"),
    pytest.param(lambda: token(aud=SERVICE + "/"), IT, APP1, id="aud-trailing-slash"),
    pytest.param(lambda: token(aud=[SERVICE]), IT, APP1, id="aud-array"),
    pytest.param(lambda: token(op="decrypt"), IT, APP1, id="op-mismatch"),
]


def token_sig(alg: str) -> bytes:
    return b64u_decode(token(alg).rsplit(b".", 1)[1])


@pytest.mark.parametrize(("make", "error", "app_id"), REFUSALS)
def test_refusals(make: Callable[[], bytes], error: type[SceauError] | None,
                  app_id: str | None) -> None:
    tok = make()
    if error is None:  # a control row: the same factory shape is accepted
        assert isinstance(verifier().verify(tok, op=OP, now=NOW), VerifiedRequest)
        return
    with pytest.raises(TokenRefused) as info:
        verifier().verify(tok, op=OP, now=NOW)
    assert type(info.value.error) is error
    assert info.value.app_id == (app_id if app_id is not None else named_app(tok))
    assert info.value.error.status == 401


def named_app(tok: bytes) -> str | None:
    """The app a refused token's header names (it is audited under that app, SPEC §10)."""
    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({k for k, _ in pairs}) != len(pairs):
            raise ValueError("duplicate member: no app is named unambiguously")
        return dict(pairs)

    try:
        header = json.loads(b64u_decode(tok.split(b".", 1)[0]), object_pairs_hook=unique)
    except (ValueError, TypeError):
        return None
    kid = header.get("kid") if isinstance(header, dict) else None
    found = Lookup()(kid) if isinstance(kid, str) else None
    return found[0] if found is not None else None


def test_response_from_service_replayed_as_request() -> None:
    signer = ident("EdDSA")
    response = compact_jws(
        {"alg": "EdDSA", "kid": signer.kid, "typ": "sceau-resp+jwt"},
        {"iss": SERVICE, "aud": APP1, "iat": NOW, "jti": "A" * 22, "req": "B" * 22, "op": OP,
         "result": {}},
        signer.sign,
    ).encode()
    with pytest.raises(TokenRefused) as info:
        verifier().verify(response, op=OP, now=NOW)
    assert "typ" in info.value.error.detail


@pytest.mark.parametrize(
    ("iat", "exp", "now"),
    [
        pytest.param(NOW, NOW + 300, NOW, id="lifetime-300"),
        pytest.param(NOW + 60, NOW + 120, NOW, id="iat-at-skew"),
        pytest.param(NOW - 100, NOW - 60, NOW, id="exp-at-skew"),
        pytest.param(NOW, NOW, NOW, id="zero-lifetime"),
    ],
)
def test_time_boundaries_accepted(iat: int, exp: int, now: int) -> None:
    assert verifier().verify(token(iat=iat, exp=exp), op=OP, now=now).exp == exp


def test_signature_checked_before_unknown_claims_are_reported() -> None:
    # A forged token with a bad claim must say "signature", never leak claim checks.
    tok = resign(token(nbf=1), b"\x01" * 64)
    with pytest.raises(TokenRefused) as info:
        verifier().verify(tok, op=OP, now=NOW)
    assert "signature" in info.value.error.detail


@pytest.mark.parametrize("alg", ["PS256", "RS256", "ES256", "EdDSA"])
def test_happy_path_each_alg(alg: str) -> None:
    lookup = Lookup()
    tok = sign_request(ident(alg), sub="bob@example.com", aud=SERVICE, op=OP,
                       params={"plaintext": "eA"}, now=NOW)
    result = verifier(lookup).verify(tok.encode(), op=OP, now=NOW + 5)
    assert result == VerifiedRequest(
        app_id=APP1, kid=ident(alg).kid, sub="bob@example.com", jti=result.jti, iat=NOW,
        exp=NOW + 60, op=OP, params={"plaintext": "eA"}, was_jwe=False,
    )
    assert len(result.jti) == 22
    assert lookup.asked == [ident(alg).kid]


def test_hostile_kid_never_reaches_lookup() -> None:
    lookup = Lookup()
    for kid in ["../x", "a b", "k\x00", "k" * 300]:
        with pytest.raises(TokenRefused):
            verifier(lookup).verify(_with_kid(kid), op=OP, now=NOW)
    assert lookup.asked == []


def test_forbidden_header_refused_before_signature_work() -> None:
    # The kid is looked up only to name the application in the audit record; the token is
    # refused by the guard, so no key is parsed for verification and nothing is fetched.
    lookup = Lookup()
    with pytest.raises(TokenRefused) as info:
        verifier(lookup).verify(_header_plus("jku", "https://attacker.example/"), op=OP,
                                now=NOW)
    assert "header" in info.value.error.detail
    assert len(lookup.asked) == 1


def test_str_token_refused_not_crashing() -> None:
    with pytest.raises(TokenRefused):
        verifier().verify(token().decode(), op=OP, now=NOW)


def test_size_cap() -> None:
    with pytest.raises(TokenRefused) as info:
        verifier(max_token_bytes=100).verify(token(), op=OP, now=NOW)
    assert isinstance(info.value.error, PayloadTooLarge)


# --- JWE requests ----------------------------------------------------------------------------


@pytest.mark.parametrize("enc", sorted(SERVICE_ENC))
@pytest.mark.parametrize("alg", ["ES256", "PS256"])
def test_jwe_happy_path(enc: str, alg: str) -> None:
    jws = sign_request(ident(alg), sub="bob@example.com", aud=SERVICE, op=OP, params={},
                       now=NOW)
    wrapped = wrap_for_service(jws, SERVICE_ENC[enc][1])
    result = verifier(enc=enc).verify(wrapped.encode(), op=OP, now=NOW)
    assert result.was_jwe and result.sub == "bob@example.com"


def _fake_jwe(header: Mapping[str, Any], ek: bytes = b"\x02" * 256) -> bytes:
    parts = [b64u_encode(json.dumps(header).encode()),
             *(b64u_encode(p) for p in (ek, b"\x03" * 12, b"\x04" * 40, b"\x05" * 16))]
    return ".".join(parts).encode()


RSA_KID = SERVICE_ENC["rsa"][0]["kid"]
BASE = {"alg": "RSA-OAEP-256", "enc": "A256GCM", "cty": "JWT", "kid": RSA_KID}


def _off_curve_epk() -> dict[str, Any]:
    epk = {k: v for k, v in SERVICE_ENC["p256"][1].items() if k in ("kty", "crv", "x", "y")}
    y = bytearray(b64u_decode(epk["y"]))
    y[0] ^= 0x80
    return {**epk, "y": b64u_encode(bytes(y))}


JWE_BEFORE_DECRYPT = [
    pytest.param({**BASE, "alg": "RSA1_5"}, "rsa", id="rsa1_5"),
    pytest.param({**BASE, "alg": "dir"}, "rsa", id="dir"),
    pytest.param({**BASE, "alg": "PBES2-HS256+A128KW", "p2c": 10**9,
                  "p2s": "c2FsdHNhbHRzYWx0"}, "rsa", id="pbes2-huge-p2c"),
    pytest.param({**BASE, "alg": "A256KW"}, "rsa", id="a256kw"),
    pytest.param({**BASE, "alg": "ECDH-ES+A256KW"}, "rsa", id="alg-not-the-keys"),
    pytest.param({**BASE, "enc": "A128GCM"}, "rsa", id="enc-a128gcm"),
    pytest.param({**BASE, "zip": "DEF"}, "rsa", id="zip"),
    pytest.param({**BASE, "kid": "someone-else"}, "rsa", id="kid-not-ours"),
    pytest.param({**BASE, "alg": "ECDH-ES+A256KW", "kid": SERVICE_ENC["p256"][0]["kid"],
                  "epk": _off_curve_epk()}, "p256", id="epk-off-curve"),
]


class DecryptSpy:
    """Counts jwcrypto decryptions: the guard must refuse before any private-key work."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        original = jwcrypto_jwe.JWE.deserialize

        def spy(obj: Any, *args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return original(obj, *args, **kwargs)

        monkeypatch.setattr(jwcrypto_jwe.JWE, "deserialize", spy)


@pytest.mark.parametrize(("header", "enc"), JWE_BEFORE_DECRYPT)
def test_jwe_refused_before_any_private_key_operation(
    header: dict[str, Any], enc: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = DecryptSpy(monkeypatch)
    ek = b"\x02" * 40 if header["alg"] == "ECDH-ES+A256KW" else b"\x02" * 256
    with pytest.raises(TokenRefused) as info:
        verifier(enc=enc).verify(_fake_jwe(header, ek), op=OP, now=NOW)
    assert info.value.error.detail == JWE_REFUSED
    assert info.value.app_id is None
    assert spy.calls == 0


def _flip(tok: bytes, part: int, where: int) -> bytes:
    parts = tok.split(b".")
    raw = bytearray(b64u_decode(parts[part]))
    raw[where % len(raw)] ^= 0x01
    parts[part] = b64u_encode(bytes(raw)).encode()
    return b".".join(parts)


JWE_PARTS = ["header", "encrypted_key", "iv", "ciphertext", "tag"]


@pytest.mark.parametrize("enc", ["rsa", "p256"])
def test_jwe_bit_flip_anywhere_gives_one_answer(enc: str) -> None:
    jws = sign_request(ident(), sub="bob@example.com", aud=SERVICE, op=OP, params={}, now=NOW)
    good = wrap_for_service(jws, SERVICE_ENC[enc][1]).encode()
    check = verifier(enc=enc)
    assert check.verify(good, op=OP, now=NOW).was_jwe
    details = set()
    for part, name in enumerate(JWE_PARTS):
        if name == "encrypted_key" and enc == "p256":
            positions = [0, 20, -1]
        else:
            positions = [0, 7, -1]
        for where in positions:
            with pytest.raises(TokenRefused) as info:
                check.verify(_flip(good, part, where), op=OP, now=NOW)
            assert isinstance(info.value.error, InvalidToken), name
            details.add(info.value.error.detail)
    assert details == {JWE_REFUSED}


def test_jwe_refused_when_service_has_no_encryption_key() -> None:
    jws = sign_request(ident(), sub="b@x", aud=SERVICE, op=OP, params={}, now=NOW)
    wrapped = wrap_for_service(jws, SERVICE_ENC["rsa"][1]).encode()
    with pytest.raises(TokenRefused) as info:
        verifier(enc=None).verify(wrapped, op=OP, now=NOW)
    assert info.value.error.detail == JWE_REFUSED


def _encrypt_raw(payload: bytes) -> bytes:
    public = SERVICE_ENC["rsa"][1]
    envelope = jwcrypto_jwe.JWE(plaintext=payload, protected={
        "alg": "RSA-OAEP-256", "enc": "A256GCM", "cty": "JWT", "kid": public["kid"]})
    envelope.add_recipient(jwcrypto_jwk.JWK(**public))
    return str(envelope.serialize(compact=True)).encode()


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(lambda: _encrypt_raw(b"a.b.c.d.e"), id="nested-jwe"),
        pytest.param(lambda: b"not a jws", id="garbage"),
        pytest.param(lambda: json.dumps({"payload": "x", "signature": "y"}).encode(),
                     id="json-jws"),
    ],
)
def test_jwe_payload_must_be_compact_jws(payload: Callable[[], bytes]) -> None:
    with pytest.raises(TokenRefused) as info:
        verifier().verify(_encrypt_raw(payload()), op=OP, now=NOW)
    assert isinstance(info.value.error, InvalidToken)


def test_jwe_inner_token_still_fully_checked() -> None:
    jws = token(op="decrypt").decode()
    wrapped = wrap_for_service(jws, SERVICE_ENC["rsa"][1]).encode()
    with pytest.raises(TokenRefused) as info:
        verifier().verify(wrapped, op=OP, now=NOW)
    assert "op" in info.value.error.detail and info.value.app_id == APP1


def test_verifier_jwe_kid_defaults_to_thumbprint() -> None:
    private = {k: v for k, v in SERVICE_ENC["p256"][0].items() if k != "kid"}
    check = RequestVerifier(service_id=SERVICE, lookup_key=Lookup(), jwe_private_jwks=[private])
    public = {**SERVICE_ENC["p256"][1], "kid": jwk_thumbprint(private)}
    jws = sign_request(ident(), sub="b@x", aud=SERVICE, op=OP, params={}, now=NOW)
    assert check.verify(wrap_for_service(jws, public).encode(), op=OP, now=NOW).was_jwe


def test_decrypt_spy_sees_a_real_decryption(monkeypatch: pytest.MonkeyPatch) -> None:
    # Control for the "before any private-key operation" tests: the spy does count.
    spy = DecryptSpy(monkeypatch)
    jws = sign_request(ident(), sub="b@x", aud=SERVICE, op=OP, params={}, now=NOW)
    verifier().verify(wrap_for_service(jws, SERVICE_ENC["rsa"][1]).encode(), op=OP, now=NOW)
    assert spy.calls == 1


# --- two service keys, and the two-step verification the API budgets between ------------------


def _both_keys() -> RequestVerifier:
    return RequestVerifier(service_id=SERVICE, lookup_key=Lookup(),
                           jwe_private_jwks=[SERVICE_ENC["p256"][0], SERVICE_ENC["rsa"][0]])


@pytest.mark.parametrize("enc", ["p256", "rsa"])
def test_a_service_with_both_keys_opens_either(enc: str) -> None:
    jws = sign_request(ident(), sub="b@x", aud=SERVICE, op=OP, params={}, now=NOW)
    wrapped = wrap_for_service(jws, SERVICE_ENC[enc][1]).encode()
    assert _both_keys().verify(wrapped, op=OP, now=NOW).was_jwe


def test_two_keys_with_one_kid_are_refused() -> None:
    private = SERVICE_ENC["p256"][0]
    with pytest.raises(ValueError, match="kid"):
        RequestVerifier(service_id=SERVICE, lookup_key=Lookup(),
                        jwe_private_jwks=[private, {**SERVICE_ENC["rsa"][0],
                                                    "kid": private["kid"]}])


def test_a_public_key_is_refused_as_jwe_key() -> None:
    with pytest.raises(ValueError, match="private"):
        RequestVerifier(service_id=SERVICE, lookup_key=Lookup(),
                        jwe_private_jwks=[SERVICE_ENC["p256"][1]])


class OpLog:
    """Records, in order, the hook's calls and jwcrypto's decryptions."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[str] = []
        original = jwcrypto_jwe.JWE.deserialize

        def spy(obj: Any, *args: Any, **kwargs: Any) -> Any:
            self.events.append("decrypt")
            return original(obj, *args, **kwargs)

        monkeypatch.setattr(jwcrypto_jwe.JWE, "deserialize", spy)

    def hook(self, alg: str) -> None:
        self.events.append(f"hook {alg}")


@pytest.mark.parametrize(("enc", "alg"), [("p256", "ECDH-ES+A256KW"), ("rsa", "RSA-OAEP-256")])
def test_screen_names_the_private_key_operation_and_finish_calls_the_hook_first(
    enc: str, alg: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = OpLog(monkeypatch)
    check = _both_keys()
    jws = sign_request(ident(), sub="b@x", aud=SERVICE, op=OP, params={}, now=NOW)
    screened = check.screen(wrap_for_service(jws, SERVICE_ENC[enc][1]).encode())
    assert screened.private_key_alg == alg
    assert log.events == []  # screening used no key
    result = check.finish(screened, op=OP, now=NOW, before_private_key_op=log.hook)
    assert result.was_jwe
    assert log.events == [f"hook {alg}", "decrypt"]


def test_a_bare_jws_needs_no_private_key_operation(monkeypatch: pytest.MonkeyPatch) -> None:
    log = OpLog(monkeypatch)
    screened = _both_keys().screen(token())
    assert screened.private_key_alg is None
    _both_keys().finish(screened, op=OP, now=NOW, before_private_key_op=log.hook)
    assert log.events == []


def test_a_hook_that_refuses_prevents_the_operation(monkeypatch: pytest.MonkeyPatch) -> None:
    log = OpLog(monkeypatch)

    def refuse(_alg: str) -> None:
        raise TokenRefused(InvalidToken("over budget"), None)

    jws = sign_request(ident(), sub="b@x", aud=SERVICE, op=OP, params={}, now=NOW)
    screened = _both_keys().screen(wrap_for_service(jws, SERVICE_ENC["rsa"][1]).encode())
    with pytest.raises(TokenRefused, match="over budget"):
        _both_keys().finish(screened, op=OP, now=NOW, before_private_key_op=refuse)
    assert log.events == []


@pytest.mark.parametrize(("header", "enc"), JWE_BEFORE_DECRYPT)
def test_screen_refuses_what_the_guard_refuses(header: dict[str, Any], enc: str) -> None:
    ek = b"\x02" * 40 if header["alg"] == "ECDH-ES+A256KW" else b"\x02" * 256
    with pytest.raises(TokenRefused) as info:
        verifier(enc=enc).screen(_fake_jwe(header, ek))
    assert info.value.error.detail == JWE_REFUSED and not info.value.bound


@pytest.mark.parametrize("enc", ["p256", "rsa"])
def test_random_encrypted_key_reaches_the_operation_and_fails_unbound(
    enc: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flood of SECURITY-CASES 49: well formed, so only the private key can refuse it."""
    log = OpLog(monkeypatch)
    jws = sign_request(ident(), sub="b@x", aud=SERVICE, op=OP, params={}, now=NOW)
    parts = wrap_for_service(jws, SERVICE_ENC[enc][1]).split(".")
    parts[1] = b64u_encode(os.urandom(len(b64u_decode(parts[1]))))
    check = _both_keys()
    screened = check.screen(".".join(parts).encode())
    with pytest.raises(TokenRefused) as info:
        check.finish(screened, op=OP, now=NOW, before_private_key_op=log.hook)
    assert info.value.error.detail == JWE_REFUSED
    assert info.value.app_id is None and not info.value.bound
    assert log.events[0].startswith("hook") and "decrypt" in log.events


@pytest.mark.parametrize(
    ("make", "bound"),
    [
        pytest.param(lambda: token(op="decrypt"), True, id="claims-after-signature"),
        pytest.param(lambda: token(exp=NOW - 600, iat=NOW - 700), True, id="expired"),
        pytest.param(lambda: token(signer=ClientIdentity(APP1, ident().kid, "ES256",
                                                         _jwks(APP2_KEY, "ES256")[0], None)),
                     False, id="bad-signature"),
        pytest.param(lambda: token(header={"alg": "none", "kid": ident().kid,
                                           "typ": "sceau-req+jwt"}), False, id="guard"),
    ],
)
def test_bound_says_whether_the_signature_verified(make: Callable[[], bytes],
                                                   bound: bool) -> None:
    with pytest.raises(TokenRefused) as info:
        verifier().verify(make(), op=OP, now=NOW)
    assert info.value.bound is bound
