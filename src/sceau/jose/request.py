"""Server side: turn a request body into a :class:`VerifiedRequest` or refuse it (SPEC §3).

Order of checks, cheapest first, so that a flood of junk never reaches RSA/EC work
(SECURITY-CASES 43): size cap; if JWE, the header allow-list then decryption; the JWS
structure and header; the key lookup by ``kid``; ``alg`` = the key's algorithm; the
signature; the claims.

Verification comes in two steps so that the API can put a budget between them
(SECURITY-CASES 49): :meth:`RequestVerifier.screen` does the cheap checks only and says
whether finishing will cost a private-key operation (a JWE); :meth:`RequestVerifier.finish`
does the rest. :meth:`RequestVerifier.verify` runs both.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jwcrypto import jwe as jwcrypto_jwe
from jwcrypto import jwk as jwcrypto_jwk

from sceau.core.b64 import MalformedBase64, b64u_decode
from sceau.core.jwk import jwk_thumbprint
from sceau.errors import (
    InvalidToken,
    PayloadTooLarge,
    SceauError,
    TokenExpired,
    UnknownApplication,
)
from sceau.jose.appkeys import SIGNING_ALGS, AppKey
from sceau.jose.guard import (
    JWE_ENC,
    MAX_TOKEN_BYTES,
    UnverifiedJwe,
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
    "Screened",
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

    def __init__(self, error: SceauError, app_id: str | None, jti: str | None = None, *,
                 bound: bool = False) -> None:
        super().__init__(error.detail)
        self.error = error
        self.app_id = app_id
        # Set only when the signature verified: refusals decided after that point are
        # audited with the request's jti (SPEC §10).
        self.jti = jti
        # True when the signature verified with a registered key: the caller is known,
        # whatever was wrong afterwards (claims, rate). The JWE budget refunds such calls.
        self.bound = bound


@dataclass(frozen=True, slots=True)
class Screened:
    """A token that passed :meth:`RequestVerifier.screen`: nothing verified, no key used.

    ``jwe`` is set when the token is a JWE whose header names one of the service's
    encryption keys: finishing it costs one private-key operation (RSA-OAEP or ECDH), done
    before anything identifies the caller.
    """

    token: bytes
    jwe: UnverifiedJwe | None

    @property
    def private_key_alg(self) -> str | None:
        """The algorithm of the private-key operation :meth:`RequestVerifier.finish` will do."""
        return self.jwe.alg if self.jwe is not None else None


@dataclass(frozen=True, slots=True)
class _JweKey:
    kid: str
    alg: str
    jwk: jwcrypto_jwk.JWK


def _jwe_key(private_jwk: Mapping[str, Any]) -> _JweKey:
    key = jwcrypto_jwk.JWK(**dict(private_jwk))
    if not key.has_private:
        raise ValueError("a JWE key must be a private key")
    kty, crv = private_jwk.get("kty"), private_jwk.get("crv")
    if kty == "RSA":
        alg = "RSA-OAEP-256"
    elif (kty, crv) in (("EC", "P-256"), ("OKP", "X25519")):
        alg = "ECDH-ES+A256KW"
    else:
        raise ValueError("a JWE key must be RSA, EC P-256 or OKP X25519")
    kid = private_jwk.get("kid") or jwk_thumbprint(private_jwk)
    return _JweKey(kid=str(kid), alg=alg, jwk=key)


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
    or ``None``. ``jwe_private_jwks`` are the service's private encryption keys (RSA ->
    ``RSA-OAEP-256``, EC P-256 / X25519 -> ``ECDH-ES+A256KW``), each named by its ``kid``,
    else its thumbprint; with none, JWE requests are refused.
    """

    def __init__(
        self,
        *,
        service_id: str,
        lookup_key: Callable[[str], tuple[str, AppKey] | None],
        jwe_private_jwks: Sequence[Mapping[str, Any]] = (),
        max_lifetime: int = MAX_LIFETIME,
        skew: int = SKEW,
        max_token_bytes: int = MAX_TOKEN_BYTES,
    ) -> None:
        self._service_id = service_id
        self._lookup_key = lookup_key
        self._max_lifetime = max_lifetime
        self._skew = skew
        self._max_token_bytes = max_token_bytes
        self._jwe_keys: dict[str, _JweKey] = {}
        for private_jwk in jwe_private_jwks:
            key = _jwe_key(private_jwk)
            if key.kid in self._jwe_keys:
                raise ValueError("two JWE keys share one kid")
            self._jwe_keys[key.kid] = key
        self._jwe_algs = {kid: key.alg for kid, key in self._jwe_keys.items()}

    def verify(self, token: object, *, op: str, now: int) -> VerifiedRequest:
        """Verify ``token`` for the URL's ``op`` at time ``now``; raise :class:`TokenRefused`.

        ``token`` is typed ``object``: anything but bytes is refused by :meth:`screen`, the
        same way compiled (mypyc would raise ``TypeError`` at the call) or pure.
        """
        return self.finish(self.screen(token), op=op, now=now)

    def screen(self, token: object) -> Screened:
        """The cheap checks: size, and for a JWE its whole structure and header.

        No key is used and nothing is looked up. Raises :class:`TokenRefused`; a JWE
        refused here gets the same answer as one that does not decrypt.
        """
        if not isinstance(token, bytes):
            raise TokenRefused(InvalidToken("token must be bytes"), None)
        if len(token) > self._max_token_bytes:
            raise TokenRefused(PayloadTooLarge("request token too large"), None)
        if not looks_like_jwe(token):
            return Screened(token=token, jwe=None)
        try:
            if not self._jwe_keys:
                raise InvalidToken("this service accepts no JWE")
            jwe = parse_unverified_jwe(token, keys=self._jwe_algs,
                                       max_bytes=self._max_token_bytes)
        except InvalidToken as exc:
            raise TokenRefused(InvalidToken(JWE_REFUSED), None) from exc
        return Screened(token=token, jwe=jwe)

    def finish(
        self,
        screened: Screened,
        *,
        op: str,
        now: int,
        before_private_key_op: Callable[[str], None] | None = None,
    ) -> VerifiedRequest:
        """Verify a screened token; raise :class:`TokenRefused`.

        ``before_private_key_op(alg)`` runs just before the JWE's private-key operation (and
        never when there is none): it may count the operation, or raise to prevent it.
        """
        token = screened.token
        was_jwe = screened.jwe is not None
        if screened.jwe is not None:
            if before_private_key_op is not None:
                before_private_key_op(screened.jwe.alg)
            token = self._decrypt(screened.jwe)
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
            raise TokenRefused(exc, app_id, _wellformed_jti(jws.claims.get("jti")),
                               bound=True) from None

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

    def _decrypt(self, jwe: UnverifiedJwe) -> bytes:
        """Decrypt a screened JWE; every failure gives the same :data:`JWE_REFUSED`."""
        key = self._jwe_keys[jwe.kid]
        try:
            envelope = jwcrypto_jwe.JWE(algs=[key.alg, JWE_ENC])
            envelope.deserialize(jwe.token.decode("ascii"), key=key.jwk)
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
        if claims.keys() != REQUEST_CLAIMS:  # one set comparison when all is well
            names = set(claims)
            missing = sorted(REQUEST_CLAIMS - names)
            if missing:
                raise InvalidToken(f"claim {missing[0]} missing")
            unknown = sorted(names - REQUEST_CLAIMS)
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
        return VerifiedRequest(app_id=app_id, kid=kid, sub=sub, jti=jti, iat=iat, exp=exp,
                               op=op, params=params, was_jwe=was_jwe)
