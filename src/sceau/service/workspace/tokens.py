"""Verification of the external bearer tokens of SPEC §11 (IdP, Google, Entra ID).

One function, :func:`verify_jwt`, for every vendor token: the vendors' checks are the same
list (signature by a trusted issuer's published key, ``aud``, ``exp``) and differ only in
which issuers and audiences are trusted, which the caller passes in.

Order, cheapest first, so that junk never reaches RSA work or a JWKS fetch: size and
shape of the compact JWS; header (allow-listed members: a token never names where its
key comes from, so ``jku``, ``x5u``, ``jwk``, ``x5c`` and ``crit`` are refused and no
outbound request is ever made for them); ``alg`` in Sceau's allow-list; claims parse;
``iss`` among the trusted issuers; the key by ``kid`` (one refresh of that issuer's JWKS
when unknown); the signature; then ``aud``, ``exp``, ``nbf``, ``iat``.

Every refusal is :class:`~sceau.errors.InvalidToken` (or ``TokenExpired``), answered 401
by the endpoints. Details say which check failed and never echo token content.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sceau.errors import InvalidToken, TokenExpired
from sceau.jose.guard import MalformedJson, check_kid, strict_json_loads, token_part
from sceau.service.workspace.jwks import JWT_ALGS, JwksSource

__all__ = ["MAX_JWT_BYTES", "TrustedIssuer", "VerifiedJwt", "verify_jwt"]

MAX_JWT_BYTES = 16 * 1024
# x5t is a certificate thumbprint Entra ID puts beside kid; it is ignored, never fetched.
_HEADER_MEMBERS = frozenset({"alg", "kid", "typ", "x5t"})
_TYPS = frozenset({"jwt", "at+jwt"})
_MAX_DATE = 2**53 - 1


@dataclass(frozen=True)
class TrustedIssuer:
    """An issuer whose tokens are accepted for one purpose, with its audience and keys."""

    issuer: str
    audience: str
    keys: JwksSource


@dataclass(frozen=True)
class VerifiedJwt:
    """A token whose signature, issuer, audience and times verified."""

    issuer: str
    kid: str
    claims: Mapping[str, Any]


def _object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = strict_json_loads(raw, max_depth=16)
    except MalformedJson:
        raise InvalidToken(f"{what}: not valid JSON") from None
    if not isinstance(value, dict):
        raise InvalidToken(f"{what}: not a JSON object")
    return value


def _date(claims: Mapping[str, Any], name: str, *, required: bool) -> int | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise InvalidToken(f"claim {name} missing")
        return None
    if type(value) is not int or not 0 <= value <= _MAX_DATE:
        raise InvalidToken(f"claim {name} must be an integer NumericDate")
    return value


def _audience_ok(aud: Any, expected: str) -> bool:
    if isinstance(aud, str):
        return aud == expected
    if isinstance(aud, list) and 0 < len(aud) <= 16:
        return all(isinstance(a, str) for a in aud) and expected in aud
    return False


async def verify_jwt(
    token: Any,
    trusted: Mapping[str, TrustedIssuer],
    *,
    now: int,
    skew: int,
    what: str,
) -> VerifiedJwt:
    """Verify ``token`` against ``trusted`` (by ``iss``); raise ``InvalidToken``/``TokenExpired``.

    ``what`` names the token in error details (``authentication``, ``authorization``,
    ``bearer``).
    """
    if not isinstance(token, str) or not token:
        raise InvalidToken(f"{what} token missing")
    if len(token) > MAX_JWT_BYTES or not token.isascii():
        raise InvalidToken(f"{what} token malformed")
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidToken(f"{what} token is not a compact JWS")
    header = _object(token_part(parts[0], f"{what} token header"), f"{what} token header")
    extra = set(header) - _HEADER_MEMBERS
    if extra:
        raise InvalidToken(f"{what} token header has a member that is not allowed")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in JWT_ALGS:
        raise InvalidToken(f"{what} token alg not allowed")
    typ = header.get("typ")
    if typ is not None and (not isinstance(typ, str) or typ.lower() not in _TYPS):
        raise InvalidToken(f"{what} token typ not allowed")
    try:
        kid = check_kid(header.get("kid"))
    except ValueError:
        raise InvalidToken(f"{what} token kid missing or malformed") from None
    signature = token_part(parts[2], f"{what} token signature")
    claims = _object(token_part(parts[1], f"{what} token claims"), f"{what} token claims")
    issuer = claims.get("iss")
    entry = trusted.get(issuer) if isinstance(issuer, str) else None
    if entry is None:
        raise InvalidToken(f"{what} token issuer is not trusted")
    key = await entry.keys.key(kid)
    if key is None:
        raise InvalidToken(f"{what} token kid is not among the issuer's keys")
    key.verify(alg, f"{parts[0]}.{parts[1]}".encode("ascii"), signature)
    if not _audience_ok(claims.get("aud"), entry.audience):
        raise InvalidToken(f"{what} token aud is not the configured audience")
    exp = _date(claims, "exp", required=True)
    iat = _date(claims, "iat", required=False)
    nbf = _date(claims, "nbf", required=False)
    if iat is not None and iat > now + skew:
        raise InvalidToken(f"{what} token iat in the future")
    if nbf is not None and nbf > now + skew:
        raise InvalidToken(f"{what} token not yet valid")
    if exp is None:  # unreachable: _date raised for the required exp
        raise InvalidToken(f"{what} token exp missing")
    if now > exp + skew:
        raise TokenExpired(f"{what} token expired")
    return VerifiedJwt(issuer=entry.issuer, kid=kid, claims=claims)
