"""The ASGI application: API v1, discovery, health, metrics, OpenAPI (SPEC §3, §10).

``POST /v1/*`` goes to the bare :class:`~sceau.service.api.endpoint.ApiEndpoint`; the
public GET endpoints and the console are FastAPI routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sceau.errors import (
    SceauError,
)
from sceau.keystore.base import KeyPurpose
from sceau.service import console, witness_api, workspace
from sceau.service.api.endpoint import ApiEndpoint, SceauApp
from sceau.service.background import start_background, stop_background
from sceau.service.observability import Metrics, NotReady
from sceau.service.openapi import openapi_document
from sceau.service.runtime import Runtime
from sceau.vocab import Op

log = logging.getLogger("sceau.api")


def create_app(rt: Runtime) -> SceauApp:
    """The service's ASGI app around an opened runtime."""
    if rt.metrics is None:
        rt.metrics = Metrics()
    metrics = rt.metrics
    rt.writer.on_batch = metrics.observe_batch
    api = ApiEndpoint(rt, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        log.info("serving", extra={"fields": {"service_id": rt.service_id, "node": rt.writer.node}})
        start_background(rt)
        yield
        log.info("shutting down: flushing the audit writer")
        stop_background(rt)
        await asyncio.get_running_loop().run_in_executor(None, api.close)
        await asyncio.get_running_loop().run_in_executor(None, rt.close)

    app = FastAPI(
        title="Sceau", openapi_url=None, docs_url=None, redoc_url=None, lifespan=lifespan
    )
    limits = rt.limits()

    console.mount(app, rt)
    witness_api.mount(app, rt)
    workspace.mount(app, rt)  # /cse and /dke (SPEC §11), when enabled

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
                # The ECDH-ES key: its private-key operation costs a quarter of RSA's.
                "encryption_kid": rt.keystore.encryption_kid(),
                "audit_kids": rt.keystore.audit_kids(),
                "api_version": "v1",
                "ops": [op.value for op in Op],
                "limits": dict(limits),
            }
        )

    @app.get("/healthz")
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    # The last problems logged, so a probe every few seconds logs only changes.
    logged: dict[str, str] = {}

    @app.get("/readyz")
    async def readyz() -> Response:
        """Anonymous: ready, or unavailable with problem classes; the details go to the log."""
        problems = await asyncio.get_running_loop().run_in_executor(None, readiness_problems, rt)
        metrics.ready.set(0 if problems else 1)
        for kind in NotReady:
            metrics.not_ready.labels(str(kind)).set(1 if kind in problems else 0)
        details = {str(kind): detail for kind, detail in problems.items()}
        if details != logged:
            if details:
                log.warning("not ready", extra={"fields": {"problems": details}})
            else:
                log.info("ready")
            logged.clear()
            logged.update(details)
        if problems:
            return JSONResponse(
                {"status": "unavailable", "problems": [str(kind) for kind in problems]},
                status_code=503,
            )
        return JSONResponse({"status": "ready"})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/openapi.json")
    async def openapi() -> Response:
        return JSONResponse(openapi_document(rt.service_id))

    return SceauApp(api, app)


def readiness_problems(rt: Runtime) -> dict[NotReady, str]:
    """Why the node cannot serve right now, by class with the detail (empty when ready).

    The details are for the operator (log); they may name paths, tokens and exception types.
    """
    problems: dict[NotReady, str] = {}
    if rt.selftest_error is not None:
        problems[NotReady.SELFTEST] = rt.selftest_error
    try:
        rt.keystore.check_health()
    except SceauError as exc:
        problems[NotReady.KEYSTORE] = exc.detail
    try:
        with rt.engines.read.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as exc:
        problems[NotReady.STORE] = f"database unreachable ({type(exc).__name__})"
    if not rt.writer.healthy:
        problems[NotReady.AUDIT] = f"audit trail not writable ({rt.writer.last_error})"
    return problems
