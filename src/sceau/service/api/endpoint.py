"""``POST /v1/<op>`` as a bare ASGI handler.

The API path is the hot path: it carries no routing, dependency injection or middleware of
the web framework (the console and public GET endpoints keep FastAPI). What it does, in
order: operation name, start-up self-test state, ``Content-Type``, body within the limit
(413 before any decoding), token verification (refusals audited when the ``kid`` named an
application), rate limit, the writer job (application checks, params, handler, audit record,
one commit), then the signed (and, when needed, encrypted) response.

A JWE request costs a private-key operation before its inner JWS can name the caller
(SECURITY-CASES 49). So a JWE first takes one unit of its address's
:class:`~sceau.service.limits.JweBudget` (429 when there is none left, and the tarpit
applies), before it is even parsed; then the cheap checks; then it is decrypted and verified
on a one-thread executor of its own, off the event loop: other connections are served
meanwhile, and JWE work, wanted or not, can hold at most that one thread. The unit comes
back unless a private-key operation ran for a caller that stayed unknown.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sceau.core.b64 import b64u_encode
from sceau.errors import (
    InternalError,
    InvalidRequest,
    KeystoreUnavailable,
    NotFound,
    PayloadTooLarge,
    SceauError,
)
from sceau.jose.guard import looks_like_jwe
from sceau.jose.request import TokenRefused, VerifiedRequest
from sceau.jose.response import lowlevel_jwe_encrypt
from sceau.keystore.base import KeyPurpose
from sceau.service.api.dispatch import KEY_MATERIAL_OPS, make_job
from sceau.service.limits import JweBudget, JweBudgetExhausted, RateLimiter, RefusalTarpit
from sceau.service.observability import Metrics
from sceau.service.receipts import DestroyedKey, receipt_result, sign_service_jws
from sceau.service.runtime import Runtime
from sceau.store.writer import AuditContext, Job, JobOutcome
from sceau.vocab import Op

log = logging.getLogger("sceau.api")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

JOSE = "application/jose"
PROBLEM = "application/problem+json"
RESPONSE_TYP = "sceau-resp+jwt"
PREFIX = "/v1/"
_COMMON = [(b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff")]
_JOSE_BYTES = JOSE.encode()
# The fixed headers of every 200 answer (Content-Length is added per answer).
_JOSE_HEADERS = ((b"content-type", _JOSE_BYTES), *_COMMON)
_OPS = {op.value: op for op in Op}
# Refusals before any authorization (malformed, bad or unknown token, oversized): the ones a
# flood is made of. Policy refusals of an identified caller are the rate limiter's business.
_TARPIT_STATUSES = frozenset({400, 401, 413})
# Threads that open inbound JWE. One: a JWE costs 0.6 ms (ECDH-ES) to 2 ms (RSA-OAEP) of
# CPU, so one thread opens hundreds a second, and a flood of them (within each address's
# budget, from many addresses) can take no more than that thread's share of the CPU.
_JWE_THREADS = 1


class ApiEndpoint:
    """The API of one runtime; call it as an ASGI app for ``POST /v1/*``."""

    def __init__(self, rt: Runtime, metrics: Metrics) -> None:
        self.rt = rt
        self.metrics = metrics
        limits = rt.limits()
        self.max_body = limits["max_body_bytes"] + 64 * 1024  # room for the JOSE wrapping
        self.rate_limiter = RateLimiter.from_config(rt.config)
        self.tarpit = RefusalTarpit.from_config(rt.config)
        self.jwe_budget = JweBudget.from_config(rt.config)
        self._jwe_executor = ThreadPoolExecutor(_JWE_THREADS, thread_name_prefix="sceau-jwe")
        self._counters: dict[tuple[str, str], Any] = {}
        self._histograms: dict[str, Any] = {}

    def close(self) -> None:
        """Stop the JWE thread (requests still queued there are finished first)."""
        self._jwe_executor.shutdown(wait=True)

    # --- ASGI ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request_id: str | None = None  # drawn only when an answer or a log line names it
        op_name = scope["path"][len(PREFIX):]
        op_label = op_name if op_name in _OPS else "unknown"
        code = "ok"
        try:
            token = await self._handle(op_name, scope, receive)
            body = token.encode("ascii")
            await send({"type": "http.response.start", "status": 200,
                        "headers": [*_JOSE_HEADERS, (b"content-length", b"%d" % len(body))]})
            await send({"type": "http.response.body", "body": body})
        except SceauError as error:
            code = error.code
            request_id = _request_id()
            if error.status >= 500:  # the caller is told the title only (public_detail)
                log.warning("call failed", extra={"fields": {
                    "op": op_label, "code": code, "detail": error.detail,
                    "request_id": request_id}})
            headers = []
            retry = getattr(error, "retry_after", None)
            if retry is not None:
                headers.append((b"retry-after", str(retry).encode()))
            if error.status == 413:
                headers.append((b"connection", b"close"))  # the body was never read
            if error.status in _TARPIT_STATUSES or isinstance(error, JweBudgetExhausted):
                client = scope.get("client")
                delay = self.tarpit.penalty(client[0] if client else None)
                if delay:
                    await asyncio.sleep(delay)
            body = json.dumps(error.problem(request_id), separators=(",", ":")).encode()
            await _send(send, error.status, PROBLEM, body, headers)
        finally:
            elapsed = time.perf_counter() - started
            self._count(op_label, code, elapsed)
            # The audit trail is the record of every call; the log carries refusals and
            # failures at INFO and, for debugging, successes at DEBUG (as Vault logs).
            level = logging.DEBUG if code == "ok" else logging.INFO
            if log.isEnabledFor(level):
                log.log(level, "call", extra={"fields": {"op": op_label, "code": code,
                                                         "ms": round(elapsed * 1000, 3),
                                                         "request_id": request_id
                                                         or _request_id()}})

    def _count(self, op_label: str, code: str, elapsed: float) -> None:
        """Prometheus counters, with the labelled children looked up once per label set."""
        counter = self._counters.get((op_label, code))
        if counter is None:
            counter = self._counters[(op_label, code)] = self.metrics.calls.labels(op_label, code)
        histogram = self._histograms.get(op_label)
        if histogram is None:
            histogram = self._histograms[op_label] = self.metrics.latency.labels(op_label)
        counter.inc()
        histogram.observe(elapsed)

    async def _handle(self, op_name: str, scope: Scope, receive: Receive) -> str:
        rt = self.rt
        op = _OPS.get(op_name)
        if op is None:
            raise NotFound("no such operation")
        if rt.selftest_error is not None:
            raise KeystoreUnavailable("start-up self-tests failed; see /readyz")
        ctype, declared = _content_headers(scope)
        if ctype is None or ctype.split(b";")[0].strip().lower() != _JOSE_BYTES:
            raise InvalidRequest(f"Content-Type must be {JOSE}")
        body = await _read_body(receive, declared, self.max_body)
        client = scope.get("client")
        ip = client[0] if client else None
        try:
            verified = await self._verify(body, op, ip)
            self.rate_limiter.admit(verified)  # 429 after the signature verified
        except TokenRefused as refused:
            await self._audit_refusal(op, refused, ip)
            raise refused.error from None
        outcome = await self._submit(make_job(rt, op, verified, ip))
        enc_key, result = outcome.value
        if isinstance(result, DestroyedKey):
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
            if enc_key is None:  # refused before the job ran (dispatch.make_job)
                raise InternalError("no encryption key to answer with")
            token = lowlevel_jwe_encrypt(token, enc_key)
        return token

    async def _verify(self, body: bytes, op: Op, ip: str | None) -> VerifiedRequest:
        """Verify the token; a JWE only within its address's budget, and off the loop."""
        verifier = self.rt.verifier
        now = int(time.time())
        if not looks_like_jwe(body):
            # A bare JWS: an ES256/EdDSA/RSA verification of 0.05-0.15 ms, done here: a
            # thread hop costs about 0.1 ms of CPU on one core (docs/performance.md).
            return verifier.verify(body, op=op.value, now=now)
        # Charged before anything else is done with the JWE (so before its private-key
        # operation): an address over its budget costs not even the parse.
        try:
            self.jwe_budget.take(ip)
        except JweBudgetExhausted as exc:
            self.metrics.jwe_budget_refusals.inc()
            raise TokenRefused(exc, None) from None
        operations: list[str] = []

        def before_private_key_op(alg: str) -> None:
            operations.append(alg)
            self.metrics.jwe_private_key_ops.labels(alg).inc()

        try:
            screened = verifier.screen(body)
            finish = functools.partial(verifier.finish, screened, op=op.value, now=now,
                                       before_private_key_op=before_private_key_op)
            verified = await asyncio.get_running_loop().run_in_executor(
                self._jwe_executor, finish)
        except TokenRefused as refused:
            # Spent only by a private-key operation done for a caller still unknown.
            if refused.bound or not operations:
                self.jwe_budget.refund(ip)
            raise
        self.jwe_budget.refund(ip)
        return verified

    async def _submit(self, job: Job) -> JobOutcome:
        outcome: JobOutcome = await self.rt.writer.submit_async(job)
        return outcome

    async def _audit_refusal(self, op: Op, refused: TokenRefused, ip: str | None) -> None:
        """A refused token is audited when its kid named an application (SPEC §10)."""
        if refused.app_id is None:
            return
        error = refused.error

        def refuse(_tx: Any) -> None:
            raise error

        ctx = AuditContext(action=op.action, app=refused.app_id, user=None, ip=ip,
                           req=refused.jti)
        with contextlib.suppress(SceauError):
            await self._submit(Job(fn=refuse, ctx=ctx))


def _request_id() -> str:
    """A fresh id that a problem answer and the log line of its call share."""
    return b64u_encode(os.urandom(12))


def _content_headers(scope: Scope) -> tuple[bytes | None, bytes | None]:
    """``Content-Type`` and ``Content-Length`` of the request (the last of each, as a dict
    of the headers would keep), without building that dict."""
    ctype = length = None
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            ctype = value
        elif name == b"content-length":
            length = value
    return ctype, length


async def _read_body(receive: Receive, declared: bytes | None, limit: int) -> bytes:
    """The body, refused with 413 as soon as it exceeds ``limit`` (before any decoding)."""
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise PayloadTooLarge(f"request body over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            # The client went away (or the server's request timeout cut it) mid-body.
            raise InvalidRequest("request body incomplete: the client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body over {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send(send: Send, status: int, ctype: str, body: bytes,
                extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode()),
               *_COMMON, *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class SceauApp:
    """The service's ASGI app: the bare API endpoint for ``POST /v1/*``, FastAPI for the rest."""

    def __init__(self, api: ApiEndpoint, web: Any) -> None:
        self.api = api
        self.web = web

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"].startswith(PREFIX)
        ):
            await self.api(scope, receive, send)
        else:
            await self.web(scope, receive, send)
