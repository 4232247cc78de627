"""Google Workspace client-side encryption: the KACLS endpoints under ``/cse`` (SPEC §11).

Who calls: anyone on the internet. Google's clients call from users' browsers (CORS
origin ``https://client-side-encryption.google.com``) and from Google's servers; an
attacker can call too, with whatever tokens they can forge, steal or replay. What they
carry: an authentication token (the customer's identity provider) and an authorization
token (Google), or, on the privileged endpoints, an authentication token alone. What they
must never obtain: a DEK of a resource their tokens do not grant, a DEK of a revoked
(disabled, destroyed, expired) resource key, or a request from Sceau to a URL they chose.

Order of one call, cheapest first: the body (size, JSON, members), both tokens (401 for
anything malformed, badly signed, expired or from an unknown issuer), the checks between
them and against this KACLS (403: ``kacls_url``, role, email, ``email_type``), then one
writer job that loads the resource's key record (seal verified), applies SPEC §6 (status,
windows, rules, networks, and in strict mode membership), opens or seals the DEK, counts
the use, and commits the audit record before anything is answered. Every call, granted or
refused, leaves one audit record (``CSE_*``) with the email, ``resource_name``,
``perimeter_id`` and Google's ``reason`` text in its details.

Gmail's S/MIME endpoints (``privatekeydecrypt``, ``privatekeysign``,
``privilegedprivatekeydecrypt``, ``wrapprivatekey``) are in :mod:`.gmail` and served by
the same router (:func:`all_posts`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, StrictStr, ValidationError

import sceau
from sceau.config.workspace import CseSettings, normalize_url
from sceau.core.envelope import open_gcm, seal_gcm
from sceau.core.model import KeyRecord, Rules
from sceau.core.policy import Actor, require_use
from sceau.core.workspace import (
    CSE_APPLICATION,
    MAILBOX_KEY_PREFIX,
    MAX_RESOURCE_BYTES,
    binding_aad,
    pack_wrapped_key,
    parse_wrapped_key,
    resource_key_hash,
)
from sceau.errors import (
    AccessDenied,
    IntegrityFailure,
    InvalidRequest,
    InvalidToken,
    NotFound,
    SceauError,
)
from sceau.jose.guard import MalformedJson, strict_json_loads
from sceau.service import keyops
from sceau.service.api.crypto import _usable_for_encrypt
from sceau.service.lifecycle import DAY
from sceau.service.runtime import Runtime
from sceau.service.workspace.body import read_json_object
from sceau.service.workspace.jwks import JwksSource
from sceau.service.workspace.tokens import TrustedIssuer, VerifiedJwt, verify_jwt
from sceau.store import workspace as ws
from sceau.store.keys import insert_keys, save_key
from sceau.store.writer import AuditContext, Job, Tx
from sceau.vocab import Action, ErrorCode, Reason

__all__ = ["CSE_APPLICATION", "CseService", "mount_cse"]

GOOGLE_ORIGIN = "https://client-side-encryption.google.com"
MAX_BODY_BYTES = 64 * 1024
MAX_REASON_BYTES = 1024
MAX_DEK_BYTES = 128
_EMAIL_TYPE_DEFAULT = "google"
T = TypeVar("T")


# --- request bodies (Google's members; members Google may add later are ignored) -------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    reason: StrictStr = ""


class WrapBody(_Body):
    authentication: StrictStr
    authorization: StrictStr
    key: StrictStr


class UnwrapBody(_Body):
    authentication: StrictStr
    authorization: StrictStr
    wrapped_key: StrictStr


class DigestBody(_Body):
    authorization: StrictStr
    wrapped_key: StrictStr


class PrivilegedWrapBody(_Body):
    authentication: StrictStr
    key: StrictStr
    resource_name: StrictStr
    perimeter_id: StrictStr = ""


class PrivilegedUnwrapBody(_Body):
    authentication: StrictStr
    resource_name: StrictStr
    wrapped_key: StrictStr


class RewrapBody(_Body):
    authorization: StrictStr
    original_kacls_url: StrictStr
    wrapped_key: StrictStr


# --- errors --------------------------------------------------------------------------------


class CseRefusal(AccessDenied):
    """A valid token that is refused (403): role, email, kacls_url, resource, perimeter."""

    def __init__(self, check: str, detail: str) -> None:
        super().__init__(Reason.NOT_AUTHORIZED, detail)
        self.check = check


def _refuse(tx: Tx, check: str, detail: str) -> NoReturn:
    """Refuse inside a job, naming the check in the audit record's details."""
    tx.ctx.details["check"] = check
    raise CseRefusal(check, detail)


def google_error(error: SceauError) -> tuple[int, dict[str, Any]]:
    """Google's error body ``{code, message, details}`` and the HTTP status for ``error``.

    401 for anything wrong with a token, 403 for a valid token that is refused, 400 for a
    malformed body (SPEC §11, CSE decisions); the others keep Sceau's statuses. ``details``
    is the fixed text of the check that failed: never token content, never key material.
    """
    status = error.status
    details = error.detail
    if error.reason is not None and str(error.reason) not in details:
        details = f"{details} ({error.reason})"
    return status, {"code": status, "message": error.title, "details": details}


def _b64_std(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise InvalidRequest(f"{what}: not base64") from None


def _b64_out(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _email(value: Any, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 320 or "@" not in value:
        raise InvalidToken(f"{what} token has no usable email")
    # SPEC §11: emails compare case-insensitively; keys are owned by the lower-case form.
    return value.lower()


# --- the service ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """Who the two tokens say the caller is, once both verified and agreed."""

    email: str
    role: str | None
    resource_name: str
    perimeter_id: str


@dataclass
class CallState:
    """What the audit record of one call will say (filled as the call goes)."""

    action: Action
    ip: str | None
    email: str | None = None
    key: str | None = None
    details: dict[str, Any] | None = None


class CseService:
    """The KACLS of one runtime: settings, trusted issuers, the handlers."""

    def __init__(self, rt: Runtime, settings: CseSettings) -> None:
        self.rt = rt
        self.settings = settings
        self.kacls_url = normalize_url(settings.kacls_url or f"{rt.service_id}/cse")
        self.skew = rt.config.limits.clock_skew_s
        sources: dict[str, JwksSource] = {}

        def source(location: str) -> JwksSource:
            if location not in sources:
                sources[location] = JwksSource(
                    location, ca_file=settings.jwks_ca_file, timeout_s=settings.jwks_timeout_s,
                    cache_s=settings.jwks_cache_s, refresh_min_s=settings.jwks_refresh_min_s,
                )
            return sources[location]

        self.idps = {
            p.issuer: TrustedIssuer(p.issuer, p.audience, source(p.jwks))
            for p in settings.identity_providers
        }
        self.authz = {
            a.issuer: TrustedIssuer(a.issuer, settings.authorization_audience, source(a.jwks))
            for a in settings.authorization_issuers
        }
        self.lifetime_days = rt.lifecycle.default_lifetime_days

    # --- tokens --------------------------------------------------------------------------

    async def authenticate(self, token: str) -> str:
        """The email an identity provider's token asserts (``google_email`` first)."""
        verified = await verify_jwt(token, self.idps, now=int(time.time()), skew=self.skew,
                                    what="authentication")
        claims = verified.claims
        chosen = claims.get("google_email")
        return _email(chosen if chosen is not None else claims.get("email"), "authentication")

    async def authorize(self, token: str) -> VerifiedJwt:
        return await verify_jwt(token, self.authz, now=int(time.time()), skew=self.skew,
                                what="authorization")

    def check_authorization(self, authz: VerifiedJwt, roles: frozenset[str],
                            email: str | None, *,
                            max_resource: int = MAX_RESOURCE_BYTES) -> Identity:
        """The checks between a verified authorization token, this KACLS and the caller.

        ``max_resource``: Google documents 128 bytes for Drive's ``resource_name`` and 512
        for Gmail's.
        """
        claims = authz.claims
        url = claims.get("kacls_url")
        if not isinstance(url, str) or normalize_url(url) != self.kacls_url:
            raise CseRefusal("kacls_url", "authorization token is for another KACLS")
        if claims.get("delegated_to") is not None:
            # Delegation needs the `delegate` endpoint, which Sceau does not offer.
            raise CseRefusal("delegated_to", "delegated authorization is not supported")
        role = claims.get("role")
        if not isinstance(role, str) or role not in roles:
            raise CseRefusal("role", "the authorization token's role does not allow this call")
        authz_email = _email(claims.get("email"), "authorization")
        if email is not None and email != authz_email:
            raise CseRefusal("email", "the two tokens name different users")
        email_type = claims.get("email_type", _EMAIL_TYPE_DEFAULT)
        if email_type not in self.settings.email_types:
            raise CseRefusal("email_type", "this kind of account is not served")
        resource = claims.get("resource_name")
        perimeter = claims.get("perimeter_id", "")
        if perimeter is None:
            perimeter = ""
        if (not isinstance(resource, str) or not resource
                or len(resource.encode()) > max_resource):
            raise InvalidToken("authorization token resource_name missing or too long")
        if not isinstance(perimeter, str) or len(perimeter.encode()) > MAX_RESOURCE_BYTES:
            raise InvalidToken("authorization token perimeter_id malformed")
        return Identity(authz_email, role, resource, perimeter)

    # --- keys ------------------------------------------------------------------------------

    def _subject(self, record: KeyRecord, email: str) -> str:
        """Whom SPEC §6 is applied to: by default Google's role already decided who may
        read, so the key's owner stands in (steps 3 and 5: status, windows, rules,
        networks); in strict mode the caller's own email (steps 2-5)."""
        return email if self.settings.strict else record.owner

    def _load_bound(self, tx: Tx, key_id: bytes, resource: str) -> KeyRecord:
        record = keyops.load_checked(tx.conn, self.rt.keystore, key_id, for_update=True)
        if (record.application != CSE_APPLICATION or record.name != resource
                or resource.startswith(MAILBOX_KEY_PREFIX)):
            # A mailbox's S/MIME key (gmail.py) never serves Drive's wrap and unwrap.
            _refuse(tx, "resource_name", "the wrapped key belongs to another resource")
        return record

    def resource_key(self, tx: Tx, resource: str, owner: str, *, create: bool) -> KeyRecord:
        """The resource's key record (created by the first wrap, owned by ``owner``)."""
        key_id = ws.resource_key_id(tx.conn, resource)
        if key_id is not None:
            return self._load_bound(tx, key_id, resource)
        if not create:
            raise NotFound("no key for this resource")
        if resource.startswith(MAILBOX_KEY_PREFIX):
            # Names of that form belong to mailbox keys: a document may not take one.
            _refuse(tx, "resource_name", "this resource name is reserved")
        now = tx.now
        record = keyops.new_key(
            self.rt.keystore, owner=owner, application=CSE_APPLICATION, now=now,
            expires_at=now + self.lifetime_days * DAY, name=resource, tag=None,
            not_before=None, not_after=None, recipients=(), rules=Rules(),
        )
        insert_keys(tx.conn, [record])
        ws.insert_resource(tx.conn, resource, record.key_id, now)
        return record

    def wrap_dek(self, tx: Tx, ident: Identity, dek: bytes, *, strict_member: bool) -> str:
        """Seal ``dek`` under the resource's key (made on first use); the wrapped key."""
        record = self.resource_key(tx, ident.resource_name, ident.email, create=True)
        tx.ctx.key = keyops.key_id_text(record.key_id)
        _usable_for_encrypt(record, tx.now)
        if strict_member and self.settings.strict:
            require_use(record, Actor(CSE_APPLICATION, ident.email, tx.ctx.ip), tx.now)
        data_key = self.rt.keystore.derive(record.master_version, record.key_id, record.live_seed())
        envelope = seal_gcm(data_key, record.key_id, dek,
                            binding_aad(ident.resource_name, ident.perimeter_id))
        return _b64_out(pack_wrapped_key(ident.perimeter_id, envelope))

    def open_dek(self, tx: Tx, wrapped_text: str, *, email: str, resource: str,
                 perimeter: str | None, count: bool, subject: str | None = None
                 ) -> tuple[bytes, str]:
        """The DEK of a wrapped key after SPEC §6; (dek, the perimeter it was bound to).

        ``perimeter`` None: restore it from the wrapped key (privileged unwrap).
        ``subject``: whom SPEC §6 applies to (default: :meth:`_subject`).
        """
        wrapped = parse_wrapped_key(_b64_std(wrapped_text, "wrapped_key"))
        key_id = wrapped.header.key_id
        tx.ctx.key = keyops.key_id_text(key_id)
        record = self._load_bound(tx, key_id, resource)
        if perimeter is not None and wrapped.perimeter_id != perimeter:
            _refuse(tx, "perimeter_id", "the wrapped key belongs to another perimeter")
        who = subject if subject is not None else self._subject(record, email)
        require_use(record, Actor(CSE_APPLICATION, who, tx.ctx.ip), tx.now)
        data_key = self.rt.keystore.derive(record.master_version, record.key_id, record.live_seed())
        try:
            dek = open_gcm(data_key, wrapped.envelope,
                           binding_aad(resource, wrapped.perimeter_id))
        except IntegrityFailure:
            raise IntegrityFailure("wrapped_key does not authenticate") from None
        if count:
            after = keyops.reseal(self.rt.keystore, record, bump=False,
                                  decryptions=record.decryptions + 1)
            save_key(tx.conn, record, after)
        return dek, wrapped.perimeter_id

    # --- one call ----------------------------------------------------------------------------

    async def run(self, state: CallState, job: Callable[[Tx], T]) -> T:
        ctx = AuditContext(action=state.action, app=CSE_APPLICATION, user=state.email,
                           ip=state.ip, req=None, key=state.key, details=state.details or {})
        try:
            outcome = await self.rt.writer.submit_async(Job(fn=job, ctx=ctx))
        except SceauError as error:
            # The writer recorded it (or could not record anything: audit_unavailable).
            error.audited = True  # type: ignore[attr-defined]
            raise
        value: T = outcome.value
        return value

    async def audit_refusal(self, state: CallState, error: SceauError) -> None:
        """Record a call refused before its job ran (parse, tokens, checks)."""
        details = dict(state.details or {})
        check = getattr(error, "check", None)
        if check is not None:
            details["check"] = check

        def refuse(_tx: Tx) -> None:
            raise error

        ctx = AuditContext(action=state.action, app=CSE_APPLICATION, user=state.email,
                           ip=state.ip, req=None, key=state.key, details=details)
        with contextlib.suppress(SceauError):
            await self.rt.writer.submit_async(Job(fn=refuse, ctx=ctx))

    async def _identify(self, body: WrapBody | UnwrapBody, state: CallState,
                        operation: str) -> Identity:
        """Both tokens of a Drive call verified and agreed; the audit record told who."""
        email = await self.authenticate(body.authentication)
        state.email = email
        ident = self.check_authorization(await self.authorize(body.authorization),
                                         ROLES[operation], email)
        state.details = _details(ident.resource_name, ident.perimeter_id, body.reason)
        return ident

    # --- endpoints -------------------------------------------------------------------------

    async def wrap(self, body: WrapBody, state: CallState) -> dict[str, Any]:
        dek = _dek(body.key)
        ident = await self._identify(body, state, "wrap")

        def job(tx: Tx) -> dict[str, Any]:
            return {"wrapped_key": self.wrap_dek(tx, ident, dek, strict_member=True)}

        return await self.run(state, job)

    async def unwrap(self, body: UnwrapBody, state: CallState) -> dict[str, Any]:
        ident = await self._identify(body, state, "unwrap")

        def job(tx: Tx) -> dict[str, Any]:
            dek, _ = self.open_dek(tx, body.wrapped_key, email=ident.email,
                                   resource=ident.resource_name,
                                   perimeter=ident.perimeter_id, count=True)
            return {"key": _b64_out(dek)}

        return await self.run(state, job)

    async def digest(self, body: DigestBody, state: CallState) -> dict[str, Any]:
        authz = await self.authorize(body.authorization)
        state.email = _email(authz.claims.get("email"), "authorization")
        ident = self.check_authorization(authz, ROLES["digest"], None)
        state.details = _details(ident.resource_name, ident.perimeter_id, body.reason)

        def job(tx: Tx) -> dict[str, Any]:
            dek, perimeter = self.open_dek(tx, body.wrapped_key, email=ident.email,
                                           resource=ident.resource_name,
                                           perimeter=ident.perimeter_id, count=False)
            digest = resource_key_hash(dek, ident.resource_name, perimeter)
            return {"resource_key_hash": _b64_out(digest)}

        return await self.run(state, job)

    # --- privileged endpoints (cse_admin holders, no authorization token) ------------------

    async def admin_email(self, token: str, state: CallState) -> str:
        """The email of a ``cse_admin`` holder, from an identity provider's token."""
        email = await self.authenticate(token)
        state.email = email
        return email

    def check_admin(self, tx: Tx, email: str) -> None:
        """Inside the job: the caller holds ``cse_admin`` (sealed row verified)."""
        row = ws.get_cse_admin(tx.conn, email)
        if row is None:
            _refuse(tx, "cse_admin", "privileged calls need the cse_admin role")
        self.rt.rows.check(row)

    async def privilegedwrap(self, body: PrivilegedWrapBody, state: CallState
                             ) -> dict[str, Any]:
        dek = _dek(body.key)
        _resource_ok(body.resource_name)
        email = await self.admin_email(body.authentication, state)
        ident = Identity(email, None, body.resource_name, body.perimeter_id)
        state.details = _details(body.resource_name, body.perimeter_id, body.reason)

        def job(tx: Tx) -> dict[str, Any]:
            self.check_admin(tx, email)
            # A key made here is owned by the admin (SPEC §11, CSE decisions).
            return {"wrapped_key": self.wrap_dek(tx, ident, dek, strict_member=False)}

        return await self.run(state, job)

    async def privilegedunwrap(self, body: PrivilegedUnwrapBody, state: CallState
                               ) -> dict[str, Any]:
        _resource_ok(body.resource_name)
        email = await self.admin_email(body.authentication, state)
        state.details = _details(body.resource_name, None, body.reason)

        def job(tx: Tx) -> dict[str, Any]:
            self.check_admin(tx, email)
            # The admin bypasses Google's ACL, not the key: status, windows and rules apply
            # (the owner stands in for SPEC §6 steps 3 and 5).
            record_owner = self._owner_of(tx, body.wrapped_key)
            dek, perimeter = self.open_dek(tx, body.wrapped_key, email=email,
                                           resource=body.resource_name, perimeter=None,
                                           count=True, subject=record_owner)
            tx.ctx.details["perimeter_id"] = perimeter
            return {"key": _b64_out(dek)}

        return await self.run(state, job)

    def _owner_of(self, tx: Tx, wrapped_text: str) -> str:
        wrapped = parse_wrapped_key(_b64_std(wrapped_text, "wrapped_key"))
        record = keyops.load_checked(tx.conn, self.rt.keystore, wrapped.header.key_id)
        return record.owner

    async def rewrap(self, body: RewrapBody, state: CallState) -> dict[str, Any]:
        """Move a DEK from another KACLS to this one (migration).

        The original KACLS is called only when its URL is listed in ``cse.rewrap_from``:
        a caller never makes Sceau send a request to a URL of their choosing.
        """
        authz = await self.authorize(body.authorization)
        state.email = _email(authz.claims.get("email"), "authorization")
        ident = self.check_authorization(authz, ROLES["rewrap"], None)
        state.details = _details(ident.resource_name, ident.perimeter_id, body.reason)
        original = normalize_url(body.original_kacls_url)
        if original not in self.settings.rewrap_from:
            raise CseRefusal("original_kacls_url", "rewrap from this KACLS is not configured")
        dek = await self._privileged_unwrap_at(original, ident.resource_name,
                                               body.wrapped_key, body.reason)

        def job(tx: Tx) -> dict[str, Any]:
            wrapped = self.wrap_dek(tx, ident, dek, strict_member=False)
            digest = resource_key_hash(dek, ident.resource_name, ident.perimeter_id)
            return {"resource_key_hash": _b64_out(digest), "wrapped_key": wrapped}

        return await self.run(state, job)

    async def _privileged_unwrap_at(self, original: str, resource: str, wrapped: str,
                                    reason: str) -> bytes:
        """The DEK from ``original``'s privilegedunwrap, authenticated by a KACLS JWT
        signed with this service's response key (published at ``/cse/certs``)."""
        import httpx

        from sceau.keystore.base import KeyPurpose
        from sceau.service.receipts import sign_service_jws

        now = int(time.time())
        token = sign_service_jws(self.rt.keystore, KeyPurpose.RESPONSE, "JWT", {
            "iss": self.kacls_url, "aud": original, "iat": now, "exp": now + 300,
            "kacls_url": original, "resource_name": resource,
        })
        payload = {"authentication": token, "resource_name": resource,
                   "wrapped_key": wrapped, "reason": reason}
        verify: Any = _client_ssl(self.settings.jwks_ca_file)
        try:
            async with httpx.AsyncClient(verify=verify, timeout=self.settings.jwks_timeout_s,
                                         follow_redirects=False, trust_env=False) as client:
                response = await client.post(f"{original}/privilegedunwrap", json=payload)
        except httpx.HTTPError:
            raise KacslUnavailable("the original KACLS cannot be reached") from None
        if response.status_code != 200 or len(response.content) > MAX_BODY_BYTES:
            raise CseRefusal("original_kacls", "the original KACLS refused to unwrap")
        try:
            key = strict_json_loads(response.content, max_depth=4).get("key")
            dek = _dek(key if isinstance(key, str) else "")
        except (MalformedJson, AttributeError, InvalidRequest):
            raise CseRefusal("original_kacls", "the original KACLS answered nonsense") from None
        return dek

    def status(self) -> dict[str, Any]:
        return {
            "server_type": "KACLS",
            "vendor_id": "Sceau",
            "version": sceau.__version__,
            "name": self.settings.name,
            "operations_supported": operations(),
        }

    def certs(self) -> dict[str, Any]:
        """The public keys this KACLS signs its own JWTs with (SPEC §2 response keys)."""
        from sceau.keystore.base import KeyPurpose

        return {"keys": [dict(k.public_jwk) for k in self.rt.keystore.signing_keys(
            KeyPurpose.RESPONSE)]}


# Roles each endpoint accepts (SPEC §11, CSE decisions).
ROLES: dict[str, frozenset[str]] = {
    "wrap": frozenset({"writer", "upgrader"}),
    "unwrap": frozenset({"reader", "writer"}),
    "digest": frozenset({"verifier", "reader", "writer"}),
    "rewrap": frozenset({"migrator"}),
}

Handler = Callable[[CseService, Any, CallState], Awaitable[dict[str, Any]]]
# op -> (audit action, body model, handler). /status lists exactly these (with Gmail's,
# gmail.py) and the GET ones.
POSTS: dict[str, tuple[Action, type[_Body], Handler]] = {
    "wrap": (Action.CSE_WRAP, WrapBody, CseService.wrap),
    "unwrap": (Action.CSE_UNWRAP, UnwrapBody, CseService.unwrap),
    "digest": (Action.CSE_DIGEST, DigestBody, CseService.digest),
    "privilegedwrap": (Action.CSE_PRIVILEGED_WRAP, PrivilegedWrapBody,
                       CseService.privilegedwrap),
    "privilegedunwrap": (Action.CSE_PRIVILEGED_UNWRAP, PrivilegedUnwrapBody,
                         CseService.privilegedunwrap),
    "rewrap": (Action.CSE_REWRAP, RewrapBody, CseService.rewrap),
}


def all_posts() -> dict[str, tuple[Action, type[_Body], Handler]]:
    """Every POST operation: Drive's, Meet's and Calendar's above, and Gmail's."""
    from sceau.service.workspace.gmail import GMAIL_POSTS

    return {**POSTS, **GMAIL_POSTS}


def operations() -> list[str]:
    """What ``/status`` lists: exactly the operations this KACLS serves."""
    return ["status", "certs", *all_posts()]


def _details(resource: str | None, perimeter: str | None, reason: str) -> dict[str, Any]:
    # Google's reason is a passthrough string of at most 1 KB; kept as text, never parsed.
    return {"resource_name": resource, "perimeter_id": perimeter,
            "reason": reason[:MAX_REASON_BYTES]}


def _dek(text: str) -> bytes:
    dek = _b64_std(text, "key")
    if not 0 < len(dek) <= MAX_DEK_BYTES:
        raise InvalidRequest(f"key: 1 to {MAX_DEK_BYTES} bytes")
    return dek


def _resource_ok(resource: str) -> None:
    if not resource or len(resource.encode()) > MAX_RESOURCE_BYTES:
        raise InvalidRequest(f"resource_name: 1 to {MAX_RESOURCE_BYTES} bytes")


def _client_ssl(ca_file: str) -> Any:
    import ssl

    ctx = ssl.create_default_context(cafile=ca_file or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class KacslUnavailable(SceauError):
    """The original KACLS of a rewrap did not answer (503)."""

    code = ErrorCode.STORE_UNAVAILABLE
    title = "Original KACLS unavailable"


# --- HTTP ------------------------------------------------------------------------------------


def _cors(request: Request) -> dict[str, str]:
    if request.headers.get("origin") == GOOGLE_ORIGIN:
        return {"Access-Control-Allow-Origin": GOOGLE_ORIGIN, "Vary": "Origin"}
    return {"Vary": "Origin"}


_NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def _answer(request: Request, status: int, body: dict[str, Any]) -> Response:
    return JSONResponse(body, status_code=status, headers={**_NO_STORE, **_cors(request)})


def _parse(model: type[_Body], raw: dict[str, Any]) -> Any:
    try:
        parsed = model.model_validate(raw)
    except ValidationError as exc:
        loc = ".".join(str(p) for p in exc.errors()[0]["loc"]) or "body"
        raise InvalidRequest(f"{loc}: missing or of the wrong type") from None
    if len(parsed.reason.encode()) > MAX_REASON_BYTES:
        raise InvalidRequest(f"reason: at most {MAX_REASON_BYTES} bytes")
    return parsed


def mount_cse(app: FastAPI, rt: Runtime, settings: CseSettings) -> CseService:
    """Add ``/cse/*`` to ``app``."""
    service = CseService(rt, settings)
    router = APIRouter(prefix="/cse", include_in_schema=False)
    posts = all_posts()

    async def post(op: str, request: Request) -> Response:
        entry = posts.get(op)
        if entry is None:
            status, body = google_error(NotFound("no such operation"))
            return _answer(request, status, body)
        action, model, handler = entry
        client = request.client
        state = CallState(action=action, ip=client.host if client else None)
        try:
            origin = request.headers.get("origin")
            if origin is not None and origin != GOOGLE_ORIGIN:
                raise CseRefusal("origin", "this origin may not call the KACLS")
            fields = await read_json_object(request, limit=MAX_BODY_BYTES, max_depth=8)
            parsed = _parse(model, fields)
            state.details = _details(None, None, parsed.reason)
            result = await handler(service, parsed, state)
        except SceauError as error:
            if not getattr(error, "audited", False):
                await service.audit_refusal(state, error)
            status, body = google_error(error)
            return _answer(request, status, body)
        return _answer(request, 200, result)

    async def preflight(request: Request) -> Response:
        headers = dict(_NO_STORE)
        if request.headers.get("origin") == GOOGLE_ORIGIN:
            headers.update({
                "Access-Control-Allow-Origin": GOOGLE_ORIGIN,
                "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                "Access-Control-Allow-Headers": "content-type",
                "Access-Control-Max-Age": "3600",
            })
        headers["Vary"] = "Origin"
        return Response(status_code=204, headers=headers)

    async def status(request: Request) -> Response:
        return _answer(request, 200, service.status())

    async def certs(request: Request) -> Response:
        return _answer(request, 200, service.certs())

    router.add_api_route("/status", status, methods=["GET"])
    router.add_api_route("/certs", certs, methods=["GET"])
    router.add_api_route("/{op}", post, methods=["POST"])
    router.add_api_route("/{op}", preflight, methods=["OPTIONS"])
    app.include_router(router)
    return service
