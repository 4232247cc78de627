"""OpenID Connect sign-in to the console: a `user` account's identity proven by a provider.

The flow (docs/console.md, "OpenID Connect"): authorization code with PKCE (S256), ``state``
and ``nonce``; the code is exchanged by Sceau as a confidential client (Authlib's OAuth 2.0
client); the ID token from the token endpoint is verified against the provider's JWKS
(signature with an allow-listed asymmetric algorithm, ``iss``, ``aud``, ``azp``, ``exp``,
``iat``, ``nonce``; Authlib's ``CodeIDToken`` over joserfc, Authlib's JOSE layer); the
identity is the ``email`` claim, only with ``email_verified`` true, normalized like every
identity. The account it names must be an ``oidc`` account (a password account is never
reached this way, nor an ``oidc`` account by a password), active, its seal verified.

Sign-ins in flight live server-side (``console_login_state``): the row's key is a hash of the
``state`` and of a random value in the ``__Host-sceau_oidc`` cookie set with it, so a
callback finds its row only in the browser that started the sign-in, once, within
:data:`STATE_TTL_S`. Every refusal is audited as a denied ``CONSOLE_LOGIN`` with a reason;
the record names the account only once the provider proved the identity.
"""

from __future__ import annotations

import hashlib
import logging
import os
import ssl
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from authlib.common.errors import AuthlibBaseError
from authlib.oidc.core import CodeIDToken
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey, RSAKey

from sceau.config import Config
from sceau.core.b64 import b64u_encode
from sceau.core.model import normalize_identity
from sceau.core.policy import validate_principal
from sceau.errors import ConfigError, InvalidRequest
from sceau.service.console.auth import open_session
from sceau.service.console.web import (
    PREFIX,
    SESSION_COOKIE,
    Console,
    PageError,
    client_ip,
    new_token,
    set_cookie,
)
from sceau.store import accounts
from sceau.store.accounts import AUTH_OIDC, AccountRow
from sceau.store.signin import (
    LoginState,
    count_login_states,
    insert_login_state,
    purge_login_states,
    take_login_state,
)
from sceau.store.writer import Tx
from sceau.vocab import AccountStatus, Action, Outcome, Role

with warnings.catch_warnings():
    # Authlib 1.9 prefers the httpx2 package and warns (always, on stderr) when it runs on
    # httpx, which Sceau pins; the client is the same either way.
    warnings.filterwarnings("ignore", message="The httpx module is deprecated")
    from authlib.integrations.httpx_client import OAuth2Client

log = logging.getLogger("sceau.console.oidc")

CALLBACK_PATH = f"{PREFIX}/oidc/callback"
START_PATH = f"{PREFIX}/oidc/start"
BINDING_COOKIE = "__Host-sceau_oidc"
STATE_TTL_S = 600
# Starting a sign-in needs no account, so it is capped: a flood of starts fills at most this
# many rows (each gone after STATE_TTL_S) and then delays OpenID sign-ins, never passwords.
MAX_IN_FLIGHT = 10_000
# An ID token comes straight from the token endpoint: one issued longer ago than this, or
# later than the clock skew allows, is not the answer to this exchange.
MAX_ID_TOKEN_AGE_S = 600
CLOCK_SKEW_S = 60
METADATA_TTL_S = 3600
JWKS_REFRESH_MIN_S = 60
HTTP_TIMEOUT_S = 10.0
MAX_DOCUMENT_BYTES = 512 * 1024
MAX_PARAM = 2048
# Sceau chooses the algorithms, never the token (STYLE 6): asymmetric signatures only, so no
# `none` and no HMAC keyed with a public key. Each maps to the only key type it verifies with.
ALGORITHMS: Mapping[str, str] = {
    "RS256": "RSA", "RS384": "RSA", "RS512": "RSA",
    "PS256": "RSA", "PS384": "RSA", "PS512": "RSA",
    "ES256": "EC", "ES384": "EC", "ES512": "EC",
    "EdDSA": "OKP", "Ed25519": "OKP",
}
# Marks an OpenID Connect account's password column: not an argon2 hash, so no password
# ever verifies against it (and the store refuses to replace it, store/accounts.py).
NO_PASSWORD = "!oidc"  # noqa: S105 - a marker, not a secret
OAUTH_ERRORS = frozenset({
    "access_denied", "login_required", "consent_required", "interaction_required",
    "invalid_request", "unauthorized_client", "unsupported_response_type", "invalid_scope",
    "server_error", "temporarily_unavailable", "account_selection_required",
})


class OidcReason(StrEnum):
    """Why an OpenID Connect sign-in was refused (the audit record's ``reason``)."""

    UNKNOWN_STATE = "unknown_state"
    STATE_EXPIRED = "state_expired"
    PROVIDER_ERROR = "provider_error"
    PROVIDER_UNAVAILABLE = "provider_unavailable"
    ISSUER_MISMATCH = "issuer_mismatch"
    CODE_EXCHANGE_FAILED = "code_exchange_failed"
    ID_TOKEN_INVALID = "id_token_invalid"  # noqa: S105 - a reason's name
    EMAIL_MISSING = "email_missing"
    EMAIL_UNVERIFIED = "email_unverified"
    DOMAIN_NOT_ALLOWED = "domain_not_allowed"
    NO_ACCOUNT = "no_account"
    PASSWORD_ACCOUNT = "password_account"  # noqa: S105 - a reason's name
    ACCOUNT_DISABLED = "account_disabled"


# What the person sees: short, and the same for every cause that is not theirs to fix.
SHOWN: Mapping[OidcReason, str] = {
    OidcReason.EMAIL_UNVERIFIED: "Your provider has not verified your email address.",
    OidcReason.EMAIL_MISSING: "Your provider did not share a verified email address.",
    OidcReason.DOMAIN_NOT_ALLOWED: "Your email address may not sign in here.",
    OidcReason.NO_ACCOUNT: "There is no console account for your email address.",
    OidcReason.PASSWORD_ACCOUNT: "This account signs in with its password, not through the "
                                 "provider.",
    OidcReason.ACCOUNT_DISABLED: "This account is disabled.",
    OidcReason.PROVIDER_UNAVAILABLE: "The sign-in provider cannot be reached now.",
}
GENERIC = "The sign-in through the provider failed. Start again from the sign-in page."


class OidcRefused(Exception):
    """A refused sign-in: the reason for the audit record, and who, once proven."""

    def __init__(self, reason: OidcReason, *, user: str | None = None,
                 details: Mapping[str, Any] | None = None) -> None:
        super().__init__(str(reason))
        self.reason = reason
        self.user = user
        self.details = dict(details or {})

    @property
    def shown(self) -> str:
        return SHOWN.get(self.reason, GENERIC)


# --- settings ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OidcSettings:
    """The checked ``[oidc]`` settings; :func:`load_settings` is the only constructor."""

    issuer: str
    client_id: str
    client_secret: str = field(repr=False)
    token_auth: str
    scopes: tuple[str, ...]
    ca_file: Path | None
    display_name: str
    provision: str
    email_domains: tuple[str, ...]
    redirect_uri: str

    def allows_domain(self, email: str) -> bool:
        domain = email.rpartition("@")[2]
        return "*" in self.email_domains or domain in self.email_domains


def load_settings(config: Config, env: Mapping[str, str] | None = None) -> OidcSettings | None:
    """The OpenID Connect settings, or None when ``oidc.issuer`` is empty.

    Checked together at start (ConfigError naming the setting), so a half-configured
    provider fails then and not at someone's first sign-in. The secret is read from the
    variable or the file the settings name; it never sits in ``sceau.toml``.
    """
    env = os.environ if env is None else env
    oidc = config.oidc
    issuer = oidc.issuer.strip()
    others = ("client_id", "client_secret_env", "client_secret_file", "ca_file",
              "display_name", "email_domains")
    if not issuer:
        stray = [name for name in others if str(getattr(oidc, name)).strip()]
        if stray:
            raise ConfigError(f"oidc.{stray[0]} is set but oidc.issuer is empty")
        return None
    parts = urlsplit(issuer)
    if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment \
            or parts.username or parts.password:
        raise ConfigError("oidc.issuer: must be an https URL without query, fragment or "
                          "credentials")
    client_id = oidc.client_id.strip()
    if not client_id:
        raise ConfigError("oidc.client_id: required with oidc.issuer")
    secret = _client_secret(oidc.client_secret_env.strip(), oidc.client_secret_file.strip(), env)
    scopes = tuple(oidc.scopes.split())
    if "openid" not in scopes or "email" not in scopes:
        raise ConfigError("oidc.scopes: must include openid and email")
    ca_text = oidc.ca_file.strip()
    ca_file = Path(ca_text) if ca_text else None
    if ca_file is not None:
        try:
            ssl.create_default_context(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"oidc.ca_file: cannot load {ca_file}: {exc}") from None
    provision = oidc.provision
    domains = tuple(d.lower() for d in oidc.email_domains.split())
    for domain in domains:
        if domain != "*":
            try:
                validate_principal(f"*@{domain}")
            except InvalidRequest:
                raise ConfigError(f"oidc.email_domains: {domain!r} is not a domain") from None
    if provision == "user" and not domains:
        raise ConfigError("oidc.email_domains: required with oidc.provision = \"user\" "
                          "(the domains whose people get an account; '*' for any)")
    return OidcSettings(
        issuer=issuer, client_id=client_id, client_secret=secret,
        token_auth=oidc.token_auth, scopes=scopes, ca_file=ca_file,
        display_name=oidc.display_name.strip() or parts.hostname,
        provision=provision, email_domains=domains,
        redirect_uri=f"{config.service_id}{CALLBACK_PATH}",
    )


def _client_secret(env_name: str, file_name: str, env: Mapping[str, str]) -> str:
    if bool(env_name) == bool(file_name):
        raise ConfigError("oidc: set exactly one of oidc.client_secret_env and "
                          "oidc.client_secret_file")
    if env_name:
        secret = env.get(env_name, "").strip()
        if not secret:
            raise ConfigError(f"oidc.client_secret_env: ${env_name} is not set or empty")
        return secret
    try:
        secret = Path(file_name).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"oidc.client_secret_file: cannot read {file_name}: "
                          f"{type(exc).__name__}") from None
    if not secret:
        raise ConfigError(f"oidc.client_secret_file: {file_name} is empty")
    return secret


# --- the provider's metadata and keys ------------------------------------------------------------


@dataclass(frozen=True)
class ProviderMetadata:
    """The parts of the discovery document Sceau uses, checked (OIDC Discovery §4.3)."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    iss_parameter: bool

    @classmethod
    def from_discovery(cls, doc: Any, expected_issuer: str) -> ProviderMetadata:
        if not isinstance(doc, dict):
            raise ValueError("the discovery document is not a JSON object")
        # The issuer must be exactly the configured one: a document (or a DNS answer) that
        # points elsewhere is refused before any of its endpoints is used.
        if doc.get("issuer") != expected_issuer:
            raise IssuerMismatch("the discovery document names another issuer")
        endpoints = {}
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            value = doc.get(name)
            if not isinstance(value, str) or urlsplit(value).scheme != "https":
                raise ValueError(f"{name}: missing or not https")
            endpoints[name] = value
        methods = doc.get("code_challenge_methods_supported")
        if methods is not None and "S256" not in methods:
            raise ValueError("the provider does not support PKCE with S256")
        types = doc.get("response_types_supported")
        if not isinstance(types, list) or "code" not in types:
            raise ValueError("the provider does not offer the authorization code flow")
        return cls(issuer=expected_issuer,
                   iss_parameter=doc.get("authorization_response_iss_parameter_supported")
                   is True, **endpoints)


class TooManySignIns(Exception):
    """More sign-ins are in flight than :data:`MAX_IN_FLIGHT`."""


class IssuerMismatch(ValueError):
    """The provider's discovery document names an issuer other than the configured one."""


class Provider:
    """The configured provider: its metadata and keys, fetched when needed and cached.

    Thread-safe: console handlers run in a thread pool. The keys are fetched again when a
    token names a key id not seen yet (a rotation), at most every ``JWKS_REFRESH_MIN_S``.
    """

    def __init__(self, settings: OidcSettings, clock: Any = time.time) -> None:
        self.settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._metadata: ProviderMetadata | None = None
        self._metadata_at = 0.0
        self._jwks: dict[str, Any] | None = None
        self._jwks_at = 0.0

    def tls(self) -> ssl.SSLContext:
        ca = self.settings.ca_file
        return ssl.create_default_context(cafile=str(ca) if ca else None)

    def _get_json(self, url: str) -> Any:
        with httpx.Client(verify=self.tls(), timeout=HTTP_TIMEOUT_S,
                          follow_redirects=False) as http:
            response = http.get(url, headers={"Accept": "application/json"})
        if response.status_code != 200 or len(response.content) > MAX_DOCUMENT_BYTES:
            raise ValueError(f"GET {url}: status {response.status_code}")
        return response.json()

    def metadata(self) -> ProviderMetadata:
        with self._lock:
            now = self._clock()
            if self._metadata is None or now - self._metadata_at >= METADATA_TTL_S:
                url = f"{self.settings.issuer.rstrip('/')}/.well-known/openid-configuration"
                self._metadata = ProviderMetadata.from_discovery(self._get_json(url),
                                                                 self.settings.issuer)
                self._metadata_at = now
                self._jwks = None
            return self._metadata

    def jwks(self, kid: str | None) -> dict[str, Any]:
        metadata = self.metadata()
        with self._lock:
            now = self._clock()
            known = self._jwks is not None and any(
                k.get("kid") == kid for k in self._jwks.get("keys", []) if isinstance(k, dict))
            stale = self._jwks is None or (not known and now - self._jwks_at
                                           >= JWKS_REFRESH_MIN_S)
            if stale:
                fetched = self._get_json(metadata.jwks_uri)
                if not isinstance(fetched, dict) or not isinstance(fetched.get("keys"), list):
                    raise ValueError("the JWKS is not a key set")
                self._jwks, self._jwks_at = fetched, now
            if self._jwks is None:  # unreachable: fetched when there was none
                raise ValueError("no JWKS")
            return self._jwks


# --- the ID token ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """What this sign-in's ID token must say."""

    issuer: str
    client_id: str
    nonce: str
    access_token: str | None


@dataclass(frozen=True)
class VerifiedIdentity:
    """An identity the provider proved: the normalized verified email, and its subject."""

    email: str
    subject: str
    issuer: str


def parse_unverified_kid(raw: str) -> str | None:
    """The ``kid`` of a compact JWS header, read before verification to pick the key."""
    try:
        header = jws.extract_compact(raw.encode("ascii")).protected
    except (JoseError, ValueError, UnicodeEncodeError):
        return None
    kid = header.get("kid")
    return kid if isinstance(kid, str) else None


def _verification_key(jwks: Mapping[str, Any], raw: str) -> tuple[Any, str]:
    """The provider's public key this token names, and the one algorithm it may use."""
    try:
        header = jws.extract_compact(raw.encode("ascii")).protected
    except (JoseError, ValueError, UnicodeEncodeError):
        raise OidcRefused(OidcReason.ID_TOKEN_INVALID, details={"why": "malformed"}) from None
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALGORITHMS:
        raise OidcRefused(OidcReason.ID_TOKEN_INVALID,
                          details={"why": "algorithm not allowed"})
    kid = header.get("kid")
    candidates = [k for k in jwks.get("keys", []) if isinstance(k, dict)
                  and k.get("kty") == ALGORITHMS[alg] and k.get("use", "sig") == "sig"
                  and k.get("alg", alg) == alg and "d" not in k
                  and (kid is None or k.get("kid") == kid)]
    if len(candidates) != 1:
        raise OidcRefused(OidcReason.ID_TOKEN_INVALID, details={"why": "no single key"})
    importers: Mapping[str, Any] = {"RSA": RSAKey, "EC": ECKey, "OKP": OKPKey}
    try:
        return importers[ALGORITHMS[alg]].import_key(candidates[0]), alg
    except (JoseError, ValueError):
        raise OidcRefused(OidcReason.ID_TOKEN_INVALID, details={"why": "bad key"}) from None


def verify_id_token(raw: str, jwks: Mapping[str, Any], expected: Expected,
                    now: int) -> VerifiedIdentity:
    """Verify an ID token and return the identity it proves; raises :class:`OidcRefused`.

    No I/O: the provider's key set and the time come in as arguments. The signature is
    checked first, with a key of the provider's set whose type matches the one algorithm the
    header may name; then the claims (Authlib's ``CodeIDToken``, plus age and email).
    """
    key, alg = _verification_key(jwks, raw)
    try:
        token = jwt.decode(raw, key, algorithms=[alg])
    except (JoseError, ValueError):
        raise OidcRefused(OidcReason.ID_TOKEN_INVALID, details={"why": "signature"}) from None
    options: dict[str, Any] = {
        "iss": {"essential": True, "value": expected.issuer},
        "aud": {"essential": True, "value": expected.client_id},
        "sub": {"essential": True},
        "exp": {"essential": True},
        "iat": {"essential": True},
        "nonce": {"essential": True, "value": expected.nonce},
    }
    params = {"nonce": expected.nonce, "client_id": expected.client_id,
              "access_token": expected.access_token}
    claims = CodeIDToken(token.claims, token.header, options, params)
    try:
        claims.validate(now=now, leeway=CLOCK_SKEW_S)
    except JoseError as error:
        claim = str(getattr(error, "claim", "") or type(error).__name__)
        raise OidcRefused(OidcReason.ID_TOKEN_INVALID,
                          details={"why": f"claim {claim}"[:80]}) from None
    iat = claims.get("iat")
    if not isinstance(iat, int | float) or iat < now - MAX_ID_TOKEN_AGE_S \
            or iat > now + CLOCK_SKEW_S:
        raise OidcRefused(OidcReason.ID_TOKEN_INVALID, details={"why": "claim iat"})
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject or len(subject) > 255:
        raise OidcRefused(OidcReason.ID_TOKEN_INVALID, details={"why": "claim sub"})
    proven = {"issuer": expected.issuer, "subject": subject}
    email = claims.get("email")
    if not isinstance(email, str) or not email:
        raise OidcRefused(OidcReason.EMAIL_MISSING, details=proven)
    # Only a JSON true: a missing claim, false or the string "true" prove nothing.
    if claims.get("email_verified") is not True:
        raise OidcRefused(OidcReason.EMAIL_UNVERIFIED, details=proven)
    try:
        identity = normalize_identity(validate_principal(email))
    except InvalidRequest:
        raise OidcRefused(OidcReason.EMAIL_MISSING, details=proven) from None
    if "@" not in identity or identity.startswith("*"):
        raise OidcRefused(OidcReason.EMAIL_MISSING, details=proven)
    return VerifiedIdentity(email=identity, subject=subject, issuer=expected.issuer)


# --- the flow ------------------------------------------------------------------------------------


def _state_hash(state: str, binding: str) -> str:
    # Both halves are needed: the state travels through the provider and the URL, the
    # binding only in this browser's cookie.
    return hashlib.sha256(f"sceau/oidc/state/v1\n{state}\n{binding}".encode()).hexdigest()


@dataclass
class OidcLogin:
    """The configured OpenID Connect sign-in of one console."""

    console: Console
    settings: OidcSettings
    provider: Provider

    def oauth_client(self) -> OAuth2Client:
        s = self.settings
        return OAuth2Client(
            client_id=s.client_id, client_secret=s.client_secret,
            token_endpoint_auth_method=s.token_auth, scope=" ".join(s.scopes),
            redirect_uri=s.redirect_uri, code_challenge_method="S256",
            verify=self.provider.tls(), timeout=HTTP_TIMEOUT_S, follow_redirects=False,
        )

    def begin(self) -> tuple[str, str]:
        """A new sign-in: (the provider's authorization URL, the browser-binding value)."""
        metadata = self.provider.metadata()
        state, binding, nonce = new_token(), new_token(), new_token()
        verifier = b64u_encode(os.urandom(48))  # 64 characters, RFC 7636 §4.1
        with self.console.rt.engines.write.begin() as conn:
            if count_login_states(conn) >= MAX_IN_FLIGHT:
                raise TooManySignIns()
            # Bookkeeping of a sign-in not yet made, like a session touch: not audited.
            insert_login_state(conn, LoginState(
                state_hash=_state_hash(state, binding), nonce=nonce, verifier=verifier,
                created_at=self.console.now()))
        with self.oauth_client() as client:
            url, _ = client.create_authorization_url(
                metadata.authorization_endpoint, state=state, code_verifier=verifier,
                nonce=nonce)
        return str(url), binding

    def finish(self, query: Mapping[str, str], binding: str,
               ip: str | None) -> str:
        """Check the provider's answer and open a session; returns the session id.

        Raises :class:`OidcRefused` after auditing the refusal.
        """
        try:
            identity = self._prove(query, binding)
        except OidcRefused as refused:
            self._audit_refusal(refused, ip)
            raise
        session_id = new_token()

        def record(tx: Tx) -> OidcRefused | None:
            try:
                provisioned = self._account_for(tx, identity)
            except OidcRefused as refused:
                tx.item_record(outcome=Outcome.DENIED, key=None, reason=str(refused.reason),
                               details={**self._details(identity), **refused.details})
                return refused
            open_session(self.console, tx, session_id, identity.email, ip)
            tx.item_record(outcome=Outcome.GRANTED, key=None,
                           details={**self._details(identity), "provisioned": provisioned})
            return None

        outcome = self.console.run(None, Action.CONSOLE_LOGIN, record, user=identity.email,
                                   ip=ip)
        if isinstance(outcome.value, OidcRefused):
            raise outcome.value
        return session_id

    def _details(self, identity: VerifiedIdentity) -> dict[str, Any]:
        return {"method": "oidc", "issuer": identity.issuer, "subject": identity.subject}

    def _prove(self, query: Mapping[str, str], binding: str) -> VerifiedIdentity:
        """The identity the provider's answer proves (network I/O, outside the writer)."""
        state = query.get("state", "")
        if not state or not binding or len(state) > MAX_PARAM or len(binding) > MAX_PARAM:
            raise OidcRefused(OidcReason.UNKNOWN_STATE)
        # Taken (deleted) before anything else: a replayed callback finds nothing, whatever
        # happens next.
        with self.console.rt.engines.write.begin() as conn:
            row = take_login_state(conn, _state_hash(state, binding))
        if row is None:
            raise OidcRefused(OidcReason.UNKNOWN_STATE)
        now = self.console.now()
        if now - row.created_at > STATE_TTL_S:
            raise OidcRefused(OidcReason.STATE_EXPIRED)
        try:
            metadata = self.provider.metadata()
        except IssuerMismatch:
            raise OidcRefused(OidcReason.ISSUER_MISMATCH) from None
        except (httpx.HTTPError, ValueError):
            log.warning("oidc: the provider's discovery document could not be used")
            raise OidcRefused(OidcReason.PROVIDER_UNAVAILABLE) from None
        # RFC 9207: the answer says which provider it comes from (mix-up defence).
        iss = query.get("iss")
        if (iss is not None or metadata.iss_parameter) and iss != metadata.issuer:
            raise OidcRefused(OidcReason.ISSUER_MISMATCH)
        error = query.get("error")
        if error is not None:
            shown = error if error in OAUTH_ERRORS else "other"
            raise OidcRefused(OidcReason.PROVIDER_ERROR, details={"error": shown})
        code = query.get("code", "")
        if not code or len(code) > MAX_PARAM:
            raise OidcRefused(OidcReason.CODE_EXCHANGE_FAILED, details={"why": "no code"})
        try:
            with self.oauth_client() as client:
                token = client.fetch_token(metadata.token_endpoint, grant_type="authorization_code",
                                           code=code, code_verifier=row.verifier)
        except AuthlibBaseError as failure:
            # The provider's error code only (a short registered token), never its text.
            shown = failure.error if failure.error in OAUTH_ERRORS | {
                "invalid_grant", "invalid_client"} else "other"
            raise OidcRefused(OidcReason.CODE_EXCHANGE_FAILED,
                              details={"error": shown}) from None
        except (httpx.HTTPError, ValueError):
            raise OidcRefused(OidcReason.PROVIDER_UNAVAILABLE) from None
        raw = token.get("id_token")
        if not isinstance(raw, str) or len(raw) > 64 * 1024:
            raise OidcRefused(OidcReason.ID_TOKEN_INVALID, details={"why": "no id_token"})
        access = token.get("access_token")
        try:
            jwks = self.provider.jwks(parse_unverified_kid(raw))
        except (httpx.HTTPError, ValueError):
            raise OidcRefused(OidcReason.PROVIDER_UNAVAILABLE) from None
        return verify_id_token(
            raw, jwks, Expected(issuer=metadata.issuer, client_id=self.settings.client_id,
                                nonce=row.nonce,
                                access_token=access if isinstance(access, str) else None),
            now)

    def _account_for(self, tx: Tx, identity: VerifiedIdentity) -> bool:
        """Check (or create) the account of ``identity``; True when created now."""
        if not self.settings.allows_domain(identity.email):
            raise OidcRefused(OidcReason.DOMAIN_NOT_ALLOWED)
        account = accounts.get_account(tx.conn, identity.email)
        if account is None:
            if self.settings.provision != "user":
                raise OidcRefused(OidcReason.NO_ACCOUNT)
            accounts.insert_account(tx.conn, self.console.rt.keystore.seal_row(AccountRow(
                username=identity.email, password_hash=NO_PASSWORD, role=str(Role.USER),
                status=AccountStatus.ACTIVE, must_change_password=False, totp_secret=None,
                created_at=tx.now, updated_at=tx.now, auth=AUTH_OIDC)))
            return True
        # A row changed behind the service's back raises IntegrityFailure: the job is refused
        # and audited as such.
        self.console.rt.rows.check(account)
        if account.auth != AUTH_OIDC:
            # Never a take-over: an account an admin created with a password stays reachable
            # only by that password (docs/decisions.md).
            raise OidcRefused(OidcReason.PASSWORD_ACCOUNT)
        if account.status != AccountStatus.ACTIVE:
            raise OidcRefused(OidcReason.ACCOUNT_DISABLED)
        return False

    def _audit_refusal(self, refused: OidcRefused, ip: str | None) -> None:
        details = {"method": "oidc", "issuer": self.settings.issuer, **refused.details}

        def record(tx: Tx) -> None:
            tx.item_record(outcome=Outcome.DENIED, key=None, reason=str(refused.reason),
                           details=details)

        # Before the provider proved an identity the record names nobody (user = None).
        self.console.run(None, Action.CONSOLE_LOGIN, record, user=refused.user, ip=ip)


def purge(conn: Any, now: int) -> None:
    """Writer maintenance: sign-ins never finished go a lifetime after their state expired.

    Kept that long so that a late answer is refused as ``state_expired`` (what happened)
    rather than ``unknown_state``, whatever the timing of this maintenance.
    """
    purge_login_states(conn, now - 2 * STATE_TTL_S)


# --- routes --------------------------------------------------------------------------------------


def router(login: OidcLogin, route_class: type) -> APIRouter:
    r = APIRouter(prefix=PREFIX, route_class=route_class)
    console = login.console

    @r.get("/oidc/start")
    def start(request: Request) -> Response:
        # A GET (a link on the sign-in page): CSP's form-action would stop a form whose
        # answer redirects to the provider. Starting a sign-in changes nothing but a row
        # that expires; the state it creates answers only in this browser.
        try:
            url, binding = login.begin()
        except TooManySignIns:
            log.warning("oidc: %d sign-ins in flight; refusing new ones", MAX_IN_FLIGHT)
            raise PageError(503, "Too many sign-ins are in progress. Try again in a few "
                            "minutes.") from None
        except IssuerMismatch:
            log.warning("oidc: the provider's discovery document names another issuer")
            raise PageError(502, SHOWN[OidcReason.PROVIDER_UNAVAILABLE]) from None
        except (httpx.HTTPError, ValueError):
            log.warning("oidc: the provider's discovery document could not be used")
            raise PageError(502, SHOWN[OidcReason.PROVIDER_UNAVAILABLE]) from None
        response = RedirectResponse(url, status_code=303)
        # SameSite=Lax, not Strict: the callback is a top-level navigation coming from the
        # provider's site, and a Strict cookie would not come with it.
        response.set_cookie(BINDING_COOKIE, binding, max_age=STATE_TTL_S, path="/",
                            secure=True, httponly=True, samesite="lax")
        return response

    @r.get("/oidc/callback")
    def callback(request: Request) -> Response:
        query = {k: v for k, v in request.query_params.items()
                 if k in ("code", "state", "iss", "error")}
        binding = request.cookies.get(BINDING_COOKIE, "")
        try:
            session_id = login.finish(query, binding, client_ip(request))
        except OidcRefused as refused:
            response = console.render(request, "error.html", status=403,
                                      message=refused.shown)
            response.delete_cookie(BINDING_COOKIE, path="/", secure=True, httponly=True,
                                   samesite="lax")
            return response
        # A page, not a redirect: this answer ends a navigation that came from the
        # provider's site, and browsers keep a SameSite=Strict cookie from a request whose
        # redirect chain crossed sites. The page's own refresh is a same-site navigation.
        response = console.render(request, "oidc_done.html", target=f"{PREFIX}/")
        set_cookie(response, SESSION_COOKIE, session_id, max_age=None)
        response.delete_cookie(BINDING_COOKIE, path="/", secure=True, httponly=True,
                               samesite="lax")
        return response

    return r


def mount_login(console: Console) -> OidcLogin | None:
    """The console's OpenID Connect sign-in, or None when not configured (checked here)."""
    settings = load_settings(console.rt.config)
    if settings is None:
        return None
    console.env.globals["oidc_provider"] = settings.display_name
    return OidcLogin(console=console, settings=settings, provider=Provider(settings))
