"""Server side: turn a request body into a :class:`VerifiedRequest` or refuse it (SPEC §3).

Order of checks, cheapest first, so that a flood of junk never reaches RSA/EC work
(SECURITY-CASES 43): size cap; if JWE, the header allow-list then decryption; the JWS
structure and header; the key lookup by ``kid``; ``alg`` = the key's algorithm; the
signature; the claims.

Claim policy (decided here where the SPEC is silent):

* The claim set is exactly ``iss sub aud iat exp jti op params``: all required, any other
  claim (``nbf`` included) refused — clients are written against the SPEC's list, and a
  claim we would silently ignore is a claim someone may believe we enforce.
* ``params`` is a required JSON object (``{}`` when an operation takes none).
* ``iat``/``exp`` are JSON integers (not bool, not float) in ``[0, 2**53)``; ``exp >= iat``;
  ``exp - iat <= max_lifetime``; ``iat <= now + skew``; ``now > exp + skew`` is
  ``token_expired`` (checked last, so a wrong audience is never reported as "expired").
* ``sub``: 1..320 characters, no control characters. ``jti``: 22..128 base64url
  characters (22 characters carry 132 bits). ``aud``: a JSON string equal to the service
  id, never an array.
* Replay of ``jti`` is not checked here: the store does it, across all nodes.

Every JWE refusal — header, structure or decryption, whichever part was changed — carries
one identical detail, so the answer is no oracle on the ciphertext; the specific cause is
kept as the exception's ``__cause__`` for logs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from jwcrypto import jwe as jwcrypto_jwe
from jwcrypto import jwk as jwcrypto_jwk

from sceau.core.b64 import MalformedBase64, b64u_decode
from sceau.errors import (
    InvalidToken,
    PayloadTooLarge,
    SceauError,
    TokenExpired,
    UnknownApplication,
)
from sceau.jose.appkeys import SIGNING_ALGS, AppKey, thumbprint
from sceau.jose.guard import (
    JWE_ENC,
    MAX_TOKEN_BYTES,
    check_kid,
    looks_like_jwe,
    parse_unverified_jwe,
    parse_unverified_jws,
    safe_name,
    strict_json_loads,
)

__all__ = [
    "MAX_LIFETIME",
    "REQUEST_TYP",
    "SKEW",
    "JWE_REFUSED",
    "RequestVerifier",
    "TokenRefused",
    "VerifiedRequest",
]

REQUEST_TYP = "sceau-req+jwt"
MAX_LIFETIME = 300
SKEW = 60
JWE_REFUSED = "JWE could not be decrypted"
REQUEST_CLAIMS = frozenset({"iss", "sub", "aud", "iat", "exp", "jti", "op", "params"})
MAX_SUB_CHARS = 320
MIN_JTI_CHARS = 22
MAX_JTI_CHARS = 128
# NumericDates beyond 2**53 cannot round-trip through JSON doubles in other clients.
_MAX_NUMERIC_DATE = 2**53 - 1
_JTI_CHARS = re.compile(r"[A-Za-z0-9_-]+")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True, slots=True)
class VerifiedRequest:
    """A request whose token verified; ``params`` are not yet validated for the op."""

    app_id: str
    kid: str
    sub: str
    jti: str
    iat: int
    exp: int
    op: str
    params: Mapping[str, Any]
    was_jwe: bool


class TokenRefused(Exception):
    """A request token was refused.

    Not a :class:`SceauError`: it wraps the one to answer with (``error``) and says which
    application the ``kid`` named (``app_id``, ``None`` when it named none), so that the
    caller can audit the refusal under that application (SPEC §10).
    """

    def __init__(self, error: SceauError, app_id: str | None, jti: str | None = None) -> None:
        super().__init__(error.detail)
        self.error = error
        self.app_id = app_id
        # Set only when the signature verified: refusals decided after that point are
        # audited with the request's jti (SPEC §10).
        self.jti = jti


def _numeric_date(claims: Mapping[str, Any], name: str) -> int:
    value = claims[name]
    # bool is an int subclass; floats (1e400, 1.5) are refused rather than truncated.
    if type(value) is not int or not 0 <= value <= _MAX_NUMERIC_DATE:
        raise InvalidToken(f"claim {name} must be an integer NumericDate")
    return value


def _wellformed_jti(value: Any) -> str | None:
    if (
        isinstance(value, str)
        and MIN_JTI_CHARS <= len(value) <= MAX_JTI_CHARS
        and _JTI_CHARS.fullmatch(value) is not None
    ):
        return value
    return None


class RequestVerifier:
    """Verifies request tokens for one service id. Pure: ``now`` comes in as an argument.

    ``lookup_key(kid)`` returns ``(app_id, AppKey)`` for an active key of any application,
    or ``None``. ``jwe_private_jwk`` is the service's private encryption key (RSA ->
    ``RSA-OAEP-256``, EC P-256 / X25519 -> ``ECDH-ES+A256KW``); with ``None``, JWE requests
    are refused. ``jwe_kid`` defaults to the JWK's ``kid``, else its thumbprint.
    """

    def __init__(
        self,
        *,
        service_id: str,
        lookup_key: Callable[[str], tuple[str, AppKey] | None],
        jwe_private_jwk: Mapping[str, Any] | None,
        jwe_kid: str | None,
        max_lifetime: int = MAX_LIFETIME,
        skew: int = SKEW,
        max_token_bytes: int = MAX_TOKEN_BYTES,
    ) -> None:
        self._service_id = service_id
        self._lookup_key = lookup_key
        self._max_lifetime = max_lifetime
        self._skew = skew
        self._max_token_bytes = max_token_bytes
        self._jwe_key: jwcrypto_jwk.JWK | None = None
        self._jwe_kid = ""
        self._jwe_algs: frozenset[str] = frozenset()
        if jwe_private_jwk is not None:
            key = jwcrypto_jwk.JWK(**dict(jwe_private_jwk))
            if not key.has_private:
                raise ValueError("jwe_private_jwk must be a private key")
            kty, crv = jwe_private_jwk.get("kty"), jwe_private_jwk.get("crv")
            if kty == "RSA":
                self._jwe_algs = frozenset({"RSA-OAEP-256"})
            elif (kty, crv) in (("EC", "P-256"), ("OKP", "X25519")):
                self._jwe_algs = frozenset({"ECDH-ES+A256KW"})
            else:
                raise ValueError("jwe_private_jwk must be RSA, EC P-256 or OKP X25519")
            self._jwe_key = key
            default_kid = jwe_private_jwk.get("kid") or thumbprint(jwe_private_jwk)
            self._jwe_kid = jwe_kid or str(default_kid)

    def verify(self, token: bytes, *, op: str, now: int) -> VerifiedRequest:
        """Verify ``token`` for the URL's ``op`` at time ``now``; raise :class:`TokenRefused`."""
        if not isinstance(token, bytes):
            raise TokenRefused(InvalidToken("token must be bytes"), None)
        if len(token) > self._max_token_bytes:
            raise TokenRefused(PayloadTooLarge("request token too large"), None)
        was_jwe = looks_like_jwe(token)
        if was_jwe:
            token = self._decrypt(token)
        try:
            jws = parse_unverified_jws(
                token,
                expected_typ=REQUEST_TYP,
                allowed_algs=SIGNING_ALGS,
                max_bytes=self._max_token_bytes,
            )
        except InvalidToken as exc:
            raise TokenRefused(exc, self._app_hint(token)) from None
        found = self._lookup_key(jws.kid)
        if found is None:
            raise TokenRefused(UnknownApplication("kid names no registered key"), None)
        app_id, app_key = found
        try:
            if jws.alg != app_key.alg:
                raise InvalidToken("alg is not the algorithm registered for this key")
            app_key.verify(jws.signing_input, jws.signature)
        except InvalidToken as exc:
            raise TokenRefused(exc, app_id) from None
        try:
            return self._check_claims(jws.claims, app_id, jws.kid, op, now, was_jwe)
        except (InvalidToken, TokenExpired) as exc:
            raise TokenRefused(exc, app_id, _wellformed_jti(jws.claims.get("jti"))) from None

    def _app_hint(self, token: bytes) -> str | None:
        """The application a malformed token names by its ``kid``, for the audit record.

        Best effort and cheap (one small base64url+JSON decode, no signature work): a token
        refused by the guard is still audited under its application when its protected
        header parses and names a registered key (SPEC §10).
        """
        try:
            first = token.split(b".", 1)[0]
            if len(first) > 4096:
                return None
            header = strict_json_loads(b64u_decode(first), max_depth=4)
            kid = check_kid(header.get("kid") if isinstance(header, dict) else None)
        except (ValueError, MalformedBase64):
            return None
        found = self._lookup_key(kid)
        return found[0] if found is not None else None

    def _decrypt(self, token: bytes) -> bytes:
        """Decrypt a JWE request; every failure gives the same :data:`JWE_REFUSED`."""
        try:
            if self._jwe_key is None:
                raise InvalidToken("this service accepts no JWE")
            parse_unverified_jwe(
                token,
                allowed_algs=self._jwe_algs,
                expected_kid=self._jwe_kid,
                max_bytes=self._max_token_bytes,
            )
            envelope = jwcrypto_jwe.JWE(algs=[*self._jwe_algs, JWE_ENC])
            envelope.deserialize(token.decode("ascii"), key=self._jwe_key)
            inner: bytes = envelope.payload
        except Exception as exc:  # noqa: BLE001 - any failure must look the same outside
            raise TokenRefused(InvalidToken(JWE_REFUSED), None) from exc
        # A JWE must carry a compact JWS (cty JWT), never another JWE or anything else.
        if inner.count(b".") != 2:
            raise TokenRefused(InvalidToken("JWE payload is not a compact JWS"), None)
        return inner

    def _check_claims(
        self,
        claims: Mapping[str, Any],
        app_id: str,
        kid: str,
        op: str,
        now: int,
        was_jwe: bool,
    ) -> VerifiedRequest:
        names = set(claims)
        missing = sorted(REQUEST_CLAIMS - names)
        if missing:
            raise InvalidToken(f"claim {missing[0]} missing")
        unknown = sorted(names - REQUEST_CLAIMS)
        if unknown:
            raise InvalidToken(f"claim not allowed: {safe_name(unknown[0])}")
        if claims["iss"] != app_id:
            raise InvalidToken("iss does not own kid")
        if not isinstance(claims["aud"], str) or claims["aud"] != self._service_id:
            raise InvalidToken("aud is not this service")
        if not isinstance(claims["op"], str) or claims["op"] != op:
            raise InvalidToken("op differs from the URL")
        sub = claims["sub"]
        if (
            not isinstance(sub, str)
            or not 0 < len(sub) <= MAX_SUB_CHARS
            or _CONTROL_CHARS.search(sub)
        ):
            raise InvalidToken(f"sub must be 1..{MAX_SUB_CHARS} characters without controls")
        jti = _wellformed_jti(claims["jti"])
        if jti is None:
            raise InvalidToken(
                f"jti must be {MIN_JTI_CHARS}..{MAX_JTI_CHARS} base64url characters"
            )
        params = claims["params"]
        if not isinstance(params, dict):
            raise InvalidToken("params must be a JSON object")
        iat, exp = _numeric_date(claims, "iat"), _numeric_date(claims, "exp")
        if exp < iat:
            raise InvalidToken("exp before iat")
        if exp - iat > self._max_lifetime:
            raise InvalidToken(f"exp - iat exceeds {self._max_lifetime} s")
        if iat > now + self._skew:
            raise InvalidToken("iat in the future")
        if now > exp + self._skew:
            raise TokenExpired("token expired")
        return VerifiedRequest(
            app_id=app_id,
            kid=kid,
            sub=sub,
            jti=jti,
            iat=iat,
            exp=exp,
            op=op,
            params=params,
            was_jwe=was_jwe,
        )
