"""The application side of the protocol: sign requests, wrap them, open responses.

Used by the SDK and by tests. Like the server side, it trusts nothing it did not check:
a response is accepted only when signed by a pinned service key with that key's one
algorithm, and bound to the request (``req`` = the request's ``jti``, same ``op``).

Decisions: responses may carry claims beyond the SPEC's list (they are ignored — the
response is authenticated by a pinned key, so extra claims carry no risk, and this keeps
old SDKs working against a newer service); the response ``iat`` is not compared with the
local clock, because binding to the fresh request ``jti`` already proves freshness.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwcrypto import jwe as jwcrypto_jwe
from jwcrypto import jwk as jwcrypto_jwk

from sceau.core.b64 import b64u_encode
from sceau.core.jwk import KEY_SHAPE, jwk_thumbprint, jws_sign
from sceau.errors import IntegrityFailure, InvalidRequest, InvalidToken
from sceau.jose.appkeys import SIGNING_ALGS, app_key_from_jwk, enc_key_from_jwk
from sceau.jose.guard import (
    JWE_ENC,
    looks_like_jwe,
    parse_unverified_jwe,
    parse_unverified_jws,
)
from sceau.jose.request import REQUEST_TYP
from sceau.jose.response import compact_jws, lowlevel_jwe_encrypt
from sceau.vocab import SigAlg

__all__ = [
    "RESPONSE_TYP",
    "ClientIdentity",
    "SignedRequest",
    "UnknownServiceKey",
    "generate_app_keys",
    "open_response",
    "sign_request",
    "wrap_for_service",
]

RESPONSE_TYP = "sceau-resp+jwt"


class UnknownServiceKey(IntegrityFailure):
    """A response signed by a service key that is not pinned (the service may have rotated)."""
_RSA_BITS = 3072
# The private key type of each key type (``kty``) an application signs with.
_PRIVATE_KEY_TYPES: dict[str, type] = {
    "RSA": rsa.RSAPrivateKey,
    "EC": ec.EllipticCurvePrivateKey,
    "OKP": ed25519.Ed25519PrivateKey,
}
_RESPONSE_CLAIMS = ("iss", "aud", "iat", "jti", "req", "op", "result")


def _private_key(jwk: Mapping[str, Any]) -> Any:
    try:
        key = jwcrypto_jwk.JWK(**dict(jwk))
        if not key.has_private:
            raise ValueError("not a private key")
        return key.get_op_key("sign")
    except Exception as exc:  # noqa: BLE001 - jwcrypto raises assorted types on bad input
        raise ValueError("private_jwk is not a usable private signing key") from exc


@dataclass(frozen=True)
class ClientIdentity:
    """An application's credentials: its id, signing key (kid, alg) and optional enc key."""

    app_id: str
    kid: str
    alg: str
    private_jwk: Mapping[str, Any]
    enc_private_jwk: Mapping[str, Any] | None
    _signer: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.alg not in SIGNING_ALGS:
            raise ValueError(f"alg must be one of {sorted(SIGNING_ALGS)}")
        key = _private_key(self.private_jwk)
        if not isinstance(key, _PRIVATE_KEY_TYPES[KEY_SHAPE[SigAlg(self.alg)][0]]):
            raise ValueError(f"private_jwk cannot sign with {self.alg}")
        object.__setattr__(self, "_signer", key)

    def sign(self, data: bytes) -> bytes:
        """Raw signature of ``data`` with this identity's key and algorithm."""
        return jws_sign(self.alg, self._signer, data)


class SignedRequest(str):
    """A compact request JWS (a ``str``) that also carries its ``jti``."""

    __slots__ = ("jti",)
    jti: str

    def __new__(cls, token: str, jti: str) -> SignedRequest:
        signed = super().__new__(cls, token)
        signed.jti = jti
        return signed


def sign_request(
    identity: ClientIdentity,
    *,
    sub: str,
    aud: str,
    op: str,
    params: Mapping[str, Any],
    now: int,
    jti: str | None = None,
    lifetime: int = 60,
) -> SignedRequest:
    """A compact request JWS: header exactly ``{alg, kid, typ}``, the SPEC §3 claims.

    ``jti`` defaults to 16 fresh random bytes in base64url (22 characters); the result's
    ``.jti`` says which one was used (a response names it in its ``req`` claim).
    """
    if jti is None:
        jti = b64u_encode(secrets.token_bytes(16))
    header = {"alg": identity.alg, "kid": identity.kid, "typ": REQUEST_TYP}
    claims = {
        "iss": identity.app_id,
        "sub": sub,
        "aud": aud,
        "iat": now,
        "exp": now + lifetime,
        "jti": jti,
        "op": str(op),
        "params": dict(params),
    }
    return SignedRequest(compact_jws(header, claims, identity.sign), jti)


def wrap_for_service(jws: str, service_enc_jwk: Mapping[str, Any]) -> str:
    """Nest ``jws`` in a compact JWE to the service's encryption key.

    ``RSA-OAEP-256`` for an RSA key, ``ECDH-ES+A256KW`` for EC P-256 / X25519; ``A256GCM``;
    ``cty`` ``JWT``; ``kid`` the service key's.
    """
    return lowlevel_jwe_encrypt(jws, enc_key_from_jwk(service_enc_jwk))


def _jwe_alg(jwk: Mapping[str, Any]) -> str:
    return "RSA-OAEP-256" if jwk.get("kty") == "RSA" else "ECDH-ES+A256KW"


def _open_jwe(raw: bytes, enc_private_jwk: Mapping[str, Any] | None) -> bytes:
    if enc_private_jwk is None:
        raise IntegrityFailure("response is a JWE but no encryption key is configured")
    try:
        alg = _jwe_alg(enc_private_jwk)
        kid = enc_private_jwk.get("kid") or jwk_thumbprint(enc_private_jwk)
        parse_unverified_jwe(raw, keys={str(kid): alg})
        envelope = jwcrypto_jwe.JWE(algs=[alg, JWE_ENC])
        envelope.deserialize(raw.decode("ascii"), key=jwcrypto_jwk.JWK(**dict(enc_private_jwk)))
        inner: bytes = envelope.payload
        return inner
    except Exception as exc:  # noqa: BLE001 - every failure is one opaque refusal
        raise IntegrityFailure("response JWE could not be decrypted") from exc


def open_response(
    token: str,
    *,
    service_keys: Mapping[str, Mapping[str, Any]],
    enc_private_jwk: Mapping[str, Any] | None,
    expected_aud: str,
    expected_iss: str,
    expected_req: str,
    expected_op: str,
    require_jwe: bool = False,
) -> Mapping[str, Any]:
    """Verify a service response and return its claims; raise :class:`IntegrityFailure`.

    ``service_keys`` maps pinned ``kid`` -> the service's public signing JWK (with its
    ``alg``). A JWE (five parts) is decrypted first with ``enc_private_jwk``; with
    ``require_jwe`` a bare JWS is refused (use it for operations returning key material).
    """
    try:
        raw = token.encode("ascii")
    except (UnicodeEncodeError, AttributeError):
        raise IntegrityFailure("response is not a compact JOSE object") from None
    if looks_like_jwe(raw):
        raw = _open_jwe(raw, enc_private_jwk)
    elif require_jwe:
        raise IntegrityFailure("response should have been encrypted")
    try:
        jws = parse_unverified_jws(raw, expected_typ=RESPONSE_TYP, allowed_algs=SIGNING_ALGS)
        pinned = service_keys.get(jws.kid)
        if pinned is None:
            raise UnknownServiceKey("response signed by an unknown key")
        key = app_key_from_jwk(pinned)
        if jws.alg != key.alg:
            raise IntegrityFailure("response alg is not the service key's")
        key.verify(jws.signing_input, jws.signature)
    except (InvalidToken, InvalidRequest) as exc:
        raise IntegrityFailure(f"response does not verify: {exc.detail}") from None
    claims = jws.claims
    missing = [name for name in _RESPONSE_CLAIMS if name not in claims]
    if missing:
        raise IntegrityFailure(f"response claim {missing[0]} missing")
    expected = {"iss": expected_iss, "aud": expected_aud, "req": expected_req, "op": expected_op}
    for name, value in expected.items():
        if not isinstance(claims[name], str) or claims[name] != str(value):
            raise IntegrityFailure(f"response claim {name} does not match")
    if type(claims["iat"]) is not int or not isinstance(claims["jti"], str):
        raise IntegrityFailure("response iat/jti mistyped")
    return claims


def _jwk_pair(key: Any, alg: str, use: str) -> tuple[dict[str, Any], dict[str, Any]]:
    jwk = jwcrypto_jwk.JWK.from_pyca(key)
    private: dict[str, Any] = jwk.export_private(as_dict=True)
    public: dict[str, Any] = jwk.export_public(as_dict=True)
    kid = jwk_thumbprint(public)
    for part in (private, public):
        part.update(kid=kid, alg=alg, use=use)
    return private, public


def generate_app_keys(
    alg: str = SigAlg.ES256,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Fresh keys for an application: ``(sign_private, sign_public, enc_private, enc_public)``.

    Signing: P-256 for ES256, Ed25519 for EdDSA, RSA-3072 for PS256/RS256. Encryption:
    RSA-3072 ``RSA-OAEP-256`` alongside RSA signing keys, EC P-256 ``ECDH-ES+A256KW``
    otherwise. ``kid`` = RFC 7638 thumbprint; every JWK carries ``kid``, ``alg``, ``use``.
    """
    if alg not in SIGNING_ALGS:
        raise ValueError(f"alg must be one of {sorted(SIGNING_ALGS)}")
    sign_key: Any
    enc_key: Any
    kty = KEY_SHAPE[SigAlg(alg)][0]
    if kty == "RSA":
        sign_key = rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS)
        enc_key, enc_alg = rsa.generate_private_key(65537, _RSA_BITS), "RSA-OAEP-256"
    else:
        sign_key = (ec.generate_private_key(ec.SECP256R1()) if kty == "EC"
                    else ed25519.Ed25519PrivateKey.generate())
        enc_key, enc_alg = ec.generate_private_key(ec.SECP256R1()), "ECDH-ES+A256KW"
    sign_private, sign_public = _jwk_pair(sign_key, alg, "sig")
    enc_private, enc_public = _jwk_pair(enc_key, enc_alg, "enc")
    return sign_private, sign_public, enc_private, enc_public
