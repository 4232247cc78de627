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

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from jwcrypto import jwe as jwcrypto_jwe
from jwcrypto import jwk as jwcrypto_jwk

from sceau.core.b64 import b64u_encode
from sceau.errors import IntegrityFailure, InvalidRequest, InvalidToken
from sceau.jose.appkeys import SIGNING_ALGS, app_key_from_jwk, enc_key_from_jwk, thumbprint
from sceau.jose.guard import (
    JWE_ENC,
    looks_like_jwe,
    parse_unverified_jwe,
    parse_unverified_jws,
)
from sceau.jose.request import REQUEST_TYP
from sceau.jose.response import compact_jws, encrypt_to

__all__ = [
    "RESPONSE_TYP",
    "UnknownServiceKey",
    "ClientIdentity",
    "generate_app_keys",
    "open_response",
    "sign_request",
    "wrap_for_service",
]

RESPONSE_TYP = "sceau-resp+jwt"


class UnknownServiceKey(IntegrityFailure):
    """A response signed by a service key that is not pinned (the service may have rotated)."""
_RSA_BITS = 3072
_P256_COORD_BYTES = 32
_SIGNING_KEY_TYPES: dict[str, type] = {
    "PS256": rsa.RSAPrivateKey,
    "RS256": rsa.RSAPrivateKey,
    "ES256": ec.EllipticCurvePrivateKey,
    "EdDSA": ed25519.Ed25519PrivateKey,
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


def _sign(alg: str, key: Any, data: bytes) -> bytes:
    """Raw JWS signature of ``data`` (ES256 as r||s, RFC 7518 §3.4)."""
    if alg == "ES256":
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(_P256_COORD_BYTES, "big") + s.to_bytes(_P256_COORD_BYTES, "big")
    if alg == "EdDSA":
        signature: bytes = key.sign(data)
        return signature
    if alg == "PS256":
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        signature = key.sign(data, pss, hashes.SHA256())
        return signature
    if alg == "RS256":
        signature = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        return signature
    raise ValueError(f"unsupported alg {alg}")


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
        if not isinstance(key, _SIGNING_KEY_TYPES[self.alg]):
            raise ValueError(f"private_jwk cannot sign with {self.alg}")
        object.__setattr__(self, "_signer", key)

    def sign(self, data: bytes) -> bytes:
        """Raw signature of ``data`` with this identity's key and algorithm."""
        return _sign(self.alg, self._signer, data)


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
) -> str:
    """A compact request JWS: header exactly ``{alg, kid, typ}``, the SPEC §3 claims.

    ``jti`` defaults to 16 fresh random bytes in base64url (22 characters).
    """
    header = {"alg": identity.alg, "kid": identity.kid, "typ": REQUEST_TYP}
    claims = {
        "iss": identity.app_id,
        "sub": sub,
        "aud": aud,
        "iat": now,
        "exp": now + lifetime,
        "jti": jti if jti is not None else b64u_encode(secrets.token_bytes(16)),
        "op": str(op),
        "params": dict(params),
    }
    return compact_jws(header, claims, identity.sign)


def wrap_for_service(jws: str, service_enc_jwk: Mapping[str, Any]) -> str:
    """Nest ``jws`` in a compact JWE to the service's encryption key.

    ``RSA-OAEP-256`` for an RSA key, ``ECDH-ES+A256KW`` for EC P-256 / X25519; ``A256GCM``;
    ``cty`` ``JWT``; ``kid`` the service key's.
    """
    return encrypt_to(jws, enc_key_from_jwk(service_enc_jwk))


def _jwe_alg(jwk: Mapping[str, Any]) -> str:
    return "RSA-OAEP-256" if jwk.get("kty") == "RSA" else "ECDH-ES+A256KW"


def _open_jwe(raw: bytes, enc_private_jwk: Mapping[str, Any] | None) -> bytes:
    if enc_private_jwk is None:
        raise IntegrityFailure("response is a JWE but no encryption key is configured")
    try:
        alg = _jwe_alg(enc_private_jwk)
        kid = enc_private_jwk.get("kid") or thumbprint(enc_private_jwk)
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
    kid = thumbprint(public)
    for part in (private, public):
        part.update(kid=kid, alg=alg, use=use)
    return private, public


def generate_app_keys(
    alg: str = "ES256",
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Fresh keys for an application: ``(sign_private, sign_public, enc_private, enc_public)``.

    Signing: P-256 for ES256, Ed25519 for EdDSA, RSA-3072 for PS256/RS256. Encryption:
    RSA-3072 ``RSA-OAEP-256`` alongside RSA signing keys, EC P-256 ``ECDH-ES+A256KW``
    otherwise. ``kid`` = RFC 7638 thumbprint; every JWK carries ``kid``, ``alg``, ``use``.
    """
    sign_key: Any
    enc_key: Any
    if alg == "ES256":
        sign_key = ec.generate_private_key(ec.SECP256R1())
    elif alg == "EdDSA":
        sign_key = ed25519.Ed25519PrivateKey.generate()
    elif alg in ("PS256", "RS256"):
        sign_key = rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS)
    else:
        raise ValueError(f"alg must be one of {sorted(SIGNING_ALGS)}")
    if alg in ("PS256", "RS256"):
        enc_key, enc_alg = rsa.generate_private_key(65537, _RSA_BITS), "RSA-OAEP-256"
    else:
        enc_key, enc_alg = ec.generate_private_key(ec.SECP256R1()), "ECDH-ES+A256KW"
    sign_private, sign_public = _jwk_pair(sign_key, alg, "sig")
    enc_private, enc_public = _jwk_pair(enc_key, enc_alg, "enc")
    return sign_private, sign_public, enc_private, enc_public
