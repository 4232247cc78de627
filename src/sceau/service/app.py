"""The ASGI application: API v1, discovery, health, metrics, OpenAPI (SPEC §3, §10)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from starlette.requests import ClientDisconnect
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sceau.core.b64 import b64u_encode
from sceau.errors import (
    InvalidRequest,
    KeystoreUnavailable,
    NotFound,
    PayloadTooLarge,
    SceauError,
)
from sceau.jose.request import TokenRefused
from sceau.jose.response import encrypt_to
from sceau.keystore.base import KeyPurpose
from sceau.service import console
from sceau.service.api import keys as key_api
from sceau.service.api.context import Call
from sceau.service.api.dispatch import KEY_MATERIAL_OPS, make_job
from sceau.service.background import start_background, stop_background
from sceau.service.limits import RateLimiter
from sceau.service.observability import Metrics
from sceau.service.openapi import openapi_document
from sceau.service.receipts import receipt_result, sign_service_jws
from sceau.service.runtime import Runtime
from sceau.store.writer import AuditContext, Job, JobOutcome
from sceau.vocab import Op

log = logging.getLogger("sceau.api")

JOSE = "application/jose"
PROBLEM = "application/problem+json"
RESPONSE_TYP = "sceau-resp+jwt"
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}


def problem_response(error: SceauError, request_id: str) -> Response:
    headers = dict(SECURITY_HEADERS)
    retry = getattr(error, "retry_after", None)
    if retry is not None:
        headers["Retry-After"] = str(retry)
    return JSONResponse(
        error.problem(request_id), status_code=error.status, media_type=PROBLEM, headers=headers
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it exceeds ``limit`` (before any decoding)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit() or int(declared) > limit:
            raise PayloadTooLarge(f"request body over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body over {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        # The client went away (or the server's request timeout cut it) mid-body.
        raise InvalidRequest("request body incomplete: the client disconnected") from None
    return b"".join(chunks)


def create_app(rt: Runtime) -> FastAPI:
    """The service's ASGI app around an opened runtime."""
    metrics: Metrics = rt.extras.setdefault("metrics", Metrics())
    rt.writer.on_batch = metrics.observe_batch

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        log.info("serving", extra={"fields": {"service_id": rt.service_id, "node": rt.writer.node}})
        start_background(rt)
        yield
        log.info("shutting down: flushing the audit writer")
        stop_background(rt)
        await asyncio.get_running_loop().run_in_executor(None, rt.close)

    app = FastAPI(
        title="Sceau", openapi_url=None, docs_url=None, redoc_url=None, lifespan=lifespan
    )
    rt.extras["app"] = app
    limits = rt.limits()
    rate_limiter = RateLimiter.from_config(rt.config)
    max_body = limits["max_body_bytes"] + 64 * 1024  # room for the JOSE wrapping

    async def submit(job: Job) -> JobOutcome:
        outcome: JobOutcome = await asyncio.wrap_future(rt.writer.submit(job))
        return outcome

    async def audit_refusal(op: Op, refused: TokenRefused, ip: str | None) -> None:
        """A token refused before its signature verified is audited when its kid named an app."""
        if refused.app_id is None:
            return
        error = refused.error

        def refuse(_tx: Any) -> None:
            raise error

        ctx = AuditContext(action=op.action, app=refused.app_id, user=None, ip=ip,
                           req=refused.jti)
        with contextlib.suppress(SceauError):
            await submit(Job(fn=refuse, ctx=ctx))

    @app.post("/v1/{op_name}")
    async def api(op_name: str, request: Request) -> Response:
        started = time.perf_counter()
        request_id = b64u_encode(os.urandom(12))
        code = "ok"
        op_label = op_name if op_name in Op._value2member_map_ else "unknown"
        try:
            try:
                op = Op(op_name)
            except ValueError:
                raise NotFound("no such operation") from None
            if rt.selftest_error is not None:
                raise KeystoreUnavailable("start-up self-tests failed; see /readyz")
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != JOSE:
                raise InvalidRequest(f"Content-Type must be {JOSE}")
            body = await read_body(request, max_body)
            ip = request.client.host if request.client else None
            now = int(time.time())
            try:
                verified = rt.verifier.verify(body, op=op.value, now=now)
                rate_limiter.admit(verified)  # 429 after the signature verified
            except TokenRefused as refused:
                await audit_refusal(op, refused, ip)
                raise refused.error from None
            outcome = await submit(make_job(rt, op, verified, ip))
            call, result = outcome.value
            assert isinstance(call, Call)
            if isinstance(result, key_api.DestroyedKey):
                result = receipt_result(rt.keystore, rt.service_id, result, outcome)
            claims = {
                "iss": rt.service_id,
                "aud": verified.app_id,
                "iat": int(time.time()),
                "jti": b64u_encode(os.urandom(16)),
                "req": verified.jti,
                "op": op.value,
                "result": result,
            }
            token = sign_service_jws(rt.keystore, KeyPurpose.RESPONSE, RESPONSE_TYP, claims)
            if op in KEY_MATERIAL_OPS or verified.was_jwe:
                assert call.app.enc_key is not None
                token = encrypt_to(token, call.app.enc_key)
            return Response(token, media_type=JOSE, headers=SECURITY_HEADERS)
        except SceauError as error:
            code = error.code
            return problem_response(error, request_id)
        finally:
            elapsed = time.perf_counter() - started
            metrics.calls.labels(op_label, code).inc()
            metrics.latency.labels(op_label).observe(elapsed)
            log.info(
                "call",
                extra={"fields": {"op": op_label, "code": code, "ms": round(elapsed * 1000, 3),
                                  "request_id": request_id}},
            )

    console.mount(app, rt)

    @app.get("/.well-known/jwks.json")
    async def jwks() -> Response:
        return JSONResponse(rt.keystore.public_jwks(), headers={"Cache-Control": "max-age=60"})

    @app.get("/.well-known/sceau-configuration")
    async def discovery() -> Response:
        return JSONResponse(
            {
                "service_id": rt.service_id,
                "jwks_uri": f"{rt.service_id}/.well-known/jwks.json",
                "response_signing_kid": rt.keystore.signing_key(KeyPurpose.RESPONSE).kid,
                "encryption_kid": rt.keystore.jwe_kid(),
                "audit_kids": rt.keystore.audit_kids(),
                "api_version": "v1",
                "ops": [op.value for op in Op],
                "limits": dict(limits),
            }
        )

    @app.get("/healthz")
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        problems = await asyncio.get_running_loop().run_in_executor(None, readiness_problems, rt)
        metrics.ready.set(0 if problems else 1)
        if problems:
            return JSONResponse({"status": "unavailable", "problems": problems}, status_code=503)
        return JSONResponse({"status": "ready", "node": rt.writer.node})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/openapi.json")
    async def openapi() -> Response:
        return JSONResponse(openapi_document(rt.service_id))

    return app


def readiness_problems(rt: Runtime) -> list[str]:
    """Why the node cannot serve right now (empty when ready)."""
    problems: list[str] = []
    if rt.selftest_error is not None:
        problems.append(rt.selftest_error)
    try:
        rt.keystore.check_health()
    except SceauError as exc:
        problems.append(f"keystore: {exc.detail}")
    try:
        with rt.engines.read.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as exc:
        problems.append(f"database unreachable ({type(exc).__name__})")
    if not rt.writer.healthy:
        problems.append(f"audit trail not writable ({rt.writer.last_error})")
    return problems
