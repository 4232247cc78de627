"""Microsoft Purview Double Key Encryption: the key service under ``/dke`` (SPEC §11).

Who calls: anyone on the internet. Office clients fetch a key's public half anonymously
(``GET /dke/{name}``) and ask for one decryption with an Entra ID bearer token
(``POST /dke/{name}/{keyid}/decrypt``). What they must never obtain: a decryption for a
caller outside the key's allowed principals, with a token not issued for this audience by
a configured issuer, or with a disabled, destroyed or retired key; nor the private key,
which never leaves the keystore (non-extractable in a PKCS#11 token).

A DKE key is a Sceau key record (application ``microsoft-dke``, name = the DKE key name)
that carries its status, windows, rules and allowed principals (as authorizations with
``decrypt``); so SPEC §6 decides every decryption, and disable, destroy, the console and
list-accesses work on DKE keys as on any key. Its RSA versions (``keyid``) are sealed
rows; their private halves are keystore objects. Every decryption, granted or refused, is
audited (``DKE_DECRYPT``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime
import re
import time
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from sceau import errors
from sceau.config.workspace import DkeSettings
from sceau.core.b64 import b64u_decode
from sceau.core.model import KeyRecord
from sceau.core.policy import Actor, require_use, validate_principal
from sceau.core.workspace import DKE_APPLICATION
from sceau.service import keyops
from sceau.service.runtime import Runtime
from sceau.service.workspace.body import read_json_object
from sceau.service.workspace.jwks import JwksSource
from sceau.service.workspace.tokens import TrustedIssuer, verify_jwt
from sceau.store import workspace as ws
from sceau.store.keys import save_key
from sceau.store.writer import AuditContext, Job, Tx
from sceau.vocab import Action, AppKeyStatus, Reason

__all__ = ["DKE_APPLICATION", "DkeService", "dke_label", "mount_dke", "valid_key_name"]

DKE_ALG = "RSA-OAEP-256"
MAX_BODY_BYTES = 16 * 1024
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_KEYID = re.compile(r"[0-9a-f]{32}")
PUBLIC_KEY_CACHE_S = 86_400
ACTIVE = AppKeyStatus.ACTIVE
RETIRED = AppKeyStatus.RETIRED


def valid_key_name(name: str) -> str:
    """A DKE key name: 1-64 letters, digits, '.', '_', '-' (it is a URL path segment)."""
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise errors.InvalidRequest("name: 1-64 letters, digits, '.', '_' or '-'")
    return name


def dke_label(name: str, keyid: str) -> str:
    """The keystore label of one DKE key version."""
    return f"{name}.{keyid}"


def _b64_std(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def caller_identity(claims: dict[str, Any]) -> str:
    """``email``, else ``upn``, else ``preferred_username`` (SPEC §11), lower-cased."""
    for name in ("email", "upn", "preferred_username"):
        value = claims.get(name)
        if isinstance(value, str) and value:
            try:
                return validate_principal(value).lower()
            except errors.InvalidRequest:
                raise errors.InvalidToken(f"bearer token {name} is not an identity") from None
    raise errors.InvalidToken("bearer token names no user (email, upn, preferred_username)")


class DkeService:
    """The DKE key service of one runtime."""

    def __init__(self, rt: Runtime, settings: DkeSettings) -> None:
        self.rt = rt
        self.settings = settings
        self.skew = rt.config.limits.clock_skew_s
        sources: dict[str, JwksSource] = {}
        self.issuers: dict[str, TrustedIssuer] = {}
        for issuer in settings.token_issuers:
            if issuer.jwks not in sources:
                sources[issuer.jwks] = JwksSource(
                    issuer.jwks, ca_file=settings.jwks_ca_file,
                    timeout_s=settings.jwks_timeout_s, cache_s=settings.jwks_cache_s,
                    refresh_min_s=settings.jwks_refresh_min_s)
            self.issuers[issuer.issuer] = TrustedIssuer(issuer.issuer, settings.audience,
                                                        sources[issuer.jwks])
        realm = urlsplit(settings.audience).hostname or settings.audience
        self.challenge = (f'Bearer resource="{settings.audience}", '
                          f'authorization="{settings.authorization_url}", realm="{realm}"')

    # --- rows ----------------------------------------------------------------------------

    def key_of(self, conn: Any, name: str) -> tuple[ws.DkeKeyRow, KeyRecord]:
        """The DKE key row and its Sceau key record, both verified against their seals."""
        row = ws.get_dke_key(conn, name)
        if row is None:
            raise errors.NotFound("no such DKE key")
        self.rt.rows.check(row)
        record = keyops.load_checked(conn, self.rt.keystore, row.key_id)
        if record.application != DKE_APPLICATION or record.name != name:
            raise errors.IntegrityFailure("the DKE key row names another key")
        return row, record

    def active_versions(self, conn: Any, name: str) -> list[ws.DkeVersionRow]:
        out = []
        for version in ws.dke_versions(conn, name):
            self.rt.rows.check(version)
            if version.status == ACTIVE:
                out.append(version)
        return out

    # --- endpoints -------------------------------------------------------------------------

    def public_key(self, name: str) -> dict[str, Any]:
        valid_key_name(name)
        with self.rt.engines.read.connect() as conn:
            _row, record = self.key_of(conn, name)
            require_use(record, Actor(DKE_APPLICATION, record.owner, None), int(time.time()))
            versions = self.active_versions(conn, name)
        if not versions:
            raise errors.NotFound("no active version of this DKE key")
        current = versions[-1]
        n = b64u_decode(current.n)
        expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(
            seconds=PUBLIC_KEY_CACHE_S)
        return {
            "key": {"kty": "RSA", "n": _b64_std(n), "e": current.e, "alg": "RS256",
                    "kid": f"{self.rt.service_id}/dke/{name}/{current.keyid}"},
            "cache": {"exp": expires.strftime("%Y-%m-%dT%H:%M:%S")},
        }

    async def decrypt(self, name: str, keyid: str, request: Request,
                      ctx: AuditContext) -> dict[str, Any]:
        header = request.headers.get("authorization")
        if header is None or not header.startswith("Bearer "):
            raise errors.InvalidToken("a bearer token is required")
        verified = await verify_jwt(header[len("Bearer "):].strip(), self.issuers,
                                    now=int(time.time()), skew=self.skew, what="bearer")
        caller = caller_identity(dict(verified.claims))
        ctx.user = caller
        ctx.details = {"dke_key": name[:64], "keyid": keyid[:64]}
        valid_key_name(name)
        if _KEYID.fullmatch(keyid) is None:
            raise errors.NotFound("no such DKE key version")
        body = await read_json_object(request, limit=MAX_BODY_BYTES, max_depth=4)
        if body.get("alg") != DKE_ALG:
            raise errors.InvalidRequest(f"alg: only {DKE_ALG} is supported")
        value = body.get("value")
        try:
            ciphertext = base64.b64decode(str(value).encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise errors.InvalidRequest("value: not base64") from None
        if not isinstance(value, str) or len(ciphertext) != 256:
            raise errors.InvalidRequest("value: an RSA-2048 ciphertext (256 bytes) is expected")

        def job(tx: Tx) -> dict[str, Any]:
            _row, record = self.key_of(tx.conn, name)
            tx.ctx.key = keyops.key_id_text(record.key_id)
            version = ws.get_dke_version(tx.conn, name, keyid)
            if version is None:
                raise errors.NotFound("no such DKE key version")
            self.rt.rows.check(version)
            require_use(record, Actor(DKE_APPLICATION, caller, tx.ctx.ip), tx.now)
            if version.status != ACTIVE:
                raise errors.AccessDenied(Reason.KEY_DISABLED, "this key version was retired")
            plaintext = self.rt.keystore.dke_decrypt(dke_label(name, keyid), ciphertext)
            after = keyops.reseal(self.rt.keystore, record, bump=False,
                                  decryptions=record.decryptions + 1)
            save_key(tx.conn, record, after)
            return {"value": _b64_std(plaintext)}

        try:
            outcome = await self.rt.writer.submit_async(Job(fn=job, ctx=ctx))
        except errors.SceauError as error:
            error.audited = True  # type: ignore[attr-defined]  # the writer recorded it
            raise
        result: dict[str, Any] = outcome.value
        return result


_NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def _problem(error: errors.SceauError, headers: dict[str, str] | None = None) -> Response:
    body = error.problem(None)
    return JSONResponse(body, status_code=error.status, media_type="application/problem+json",
                        headers={**_NO_STORE, **(headers or {})})


def mount_dke(app: FastAPI, rt: Runtime, settings: DkeSettings) -> DkeService:
    """Add ``/dke/*`` to ``app``."""
    service = DkeService(rt, settings)
    router = APIRouter(prefix="/dke", include_in_schema=False)

    async def get_key(name: str) -> Response:
        try:
            return JSONResponse(service.public_key(name), headers=_NO_STORE)
        except errors.SceauError as error:
            return _problem(error)

    async def decrypt(name: str, keyid: str, request: Request) -> Response:
        client = request.client
        ctx = AuditContext(action=Action.DKE_DECRYPT, app=DKE_APPLICATION, user=None,
                           ip=client.host if client else None, req=None)
        try:
            result = await service.decrypt(name, keyid, request, ctx)
        except errors.SceauError as error:
            if not getattr(error, "audited", False):
                await _audit_refusal(rt, ctx, error)
            challenge = isinstance(error, errors.InvalidToken | errors.TokenExpired)
            return _problem(error, {"WWW-Authenticate": service.challenge} if challenge
                            else None)
        return JSONResponse(result, headers=_NO_STORE)

    router.add_api_route("/{name}", get_key, methods=["GET"])
    router.add_api_route("/{name}/{keyid}/decrypt", decrypt, methods=["POST"])
    app.include_router(router)
    return service


async def _audit_refusal(rt: Runtime, ctx: AuditContext, error: errors.SceauError) -> None:
    """Record a refusal decided before the writer job (no token, bad token, bad body)."""

    def refuse(_tx: Tx) -> None:
        raise error

    with contextlib.suppress(errors.SceauError):
        await rt.writer.submit_async(Job(fn=refuse, ctx=AuditContext(
            action=ctx.action, app=ctx.app, user=ctx.user, ip=ctx.ip, req=None,
            details=dict(ctx.details))))
