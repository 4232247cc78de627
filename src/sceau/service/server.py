"""``sceau serve``: uvicorn over TLS, hardened against hostile networks (SECURITY-CASES 41-44).

Transport policy:

* TLS 1.2 minimum; TLS 1.2 suites are ECDHE with AES-GCM or ChaCha20-Poly1305 only (forward
  secret, AEAD); every TLS 1.3 suite is both, and OpenSSL negotiates 1.3 whenever the client
  offers it. No compression, no renegotiation, ALPN ``http/1.1`` only.
* Optional mutual TLS: with ``server.client_ca`` (``$SCEAU_TLS_CLIENT_CA``) naming a PEM
  bundle, client certificates are verified against it; ``server.client_auth``
  (``$SCEAU_TLS_CLIENT_AUTH``) = ``optional`` (default: a client without a certificate is
  served, one with a bad certificate is refused in the handshake) or ``required`` (no
  certificate, no connection).

HTTP hardening, in :class:`GuardedHttpProtocol` (uvicorn's httptools protocol plus limits
uvicorn does not have):

* the request head (request line and header fields) is capped at :data:`MAX_HEAD_BYTES`;
  over it the answer is 413 ``payload_too_large`` before anything is decoded, counted on the
  raw bytes so a never-ending header cannot grow memory;
* the head must arrive within ``header_timeout`` seconds of the connection (or of the first
  byte of a keep-alive request) and the whole request within ``request_timeout_s``;
  otherwise the connection is closed (slowloris, slow POST);
* more than ``server.max_connections`` open connections: the extra requests get 429
  ``rate_limited`` with ``Retry-After`` and the connection is closed;
* malformed HTTP gets a 400 ``invalid_request`` problem instead of uvicorn's text/plain.

Workers (``server.workers``, ``sceau serve --workers``): one serves in this process; more
are forked by :class:`~sceau.service.supervisor.Supervisor` onto one listening socket, each
with its own runtime and audit node. The limits above (connection cap, rate limits) hold
per worker.

Known limit: the TLS handshake itself is bounded by asyncio's default (60 s), which uvicorn
does not expose.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from sceau.config import Config
from sceau.errors import ConfigError, InvalidRequest, PayloadTooLarge, RateLimited, SceauError
from sceau.service.app import create_app
from sceau.service.observability import setup_logging
from sceau.service.runtime import open_runtime
from sceau.service.supervisor import Supervisor, usable_cores

log = logging.getLogger("sceau.server")

# TLS 1.2: ECDHE key exchange with AES-GCM or ChaCha20-Poly1305 only. TLS 1.3 suites are all
# AEAD and forward-secret; OpenSSL prefers 1.3 when the client offers it.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!SHA1:!DSS"
#: Request line plus header fields. JOSE travels in the body, so 8 KiB is ample.
MAX_HEAD_BYTES = 8 * 1024
#: Upper bound on the time to receive a request head (lower when request_timeout_s is).
HEADER_TIMEOUT_S = 10.0
#: Pending connections the shared socket queues while every worker is busy (or starting).
LISTEN_BACKLOG = 2048
#: The audit node id column's width (store.schema.NODE).
MAX_NODE_ID = 64
_CLIENT_AUTH_MODES = {"optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
_REASONS = {400: b"Bad Request", 413: b"Content Too Large", 429: b"Too Many Requests"}


def tls_context(
    cert: Path,
    key: Path,
    *,
    client_ca: Path | None = None,
    client_auth: str = "optional",
) -> ssl.SSLContext:
    """The server TLS context (see the module docstring for the policy)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    ctx.load_cert_chain(str(cert), str(key))
    ctx.set_alpn_protocols(["http/1.1"])
    if client_ca is not None:
        if client_auth not in _CLIENT_AUTH_MODES:
            raise ConfigError("server.client_auth: must be one of optional, required")
        try:
            ctx.load_verify_locations(cafile=str(client_ca))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"server.client_ca: cannot load {client_ca}: {exc}") from None
        ctx.verify_mode = _CLIENT_AUTH_MODES[client_auth]
    return ctx


def problem_bytes(error: SceauError, status: int, headers: dict[str, str] | None = None) -> bytes:
    """A complete HTTP/1.1 problem response that closes the connection (no app involved)."""
    body = json.dumps(error.problem(None), separators=(",", ":")).encode()
    lines = [
        b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, b"Error")),
        b"content-type: application/problem+json",
        b"content-length: %d" % len(body),
        b"cache-control: no-store",
        b"x-content-type-options: nosniff",
        b"connection: close",
    ]
    lines += [f"{name}: {value}".encode("ascii") for name, value in (headers or {}).items()]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


_HEAD_TOO_LARGE = problem_bytes(
    PayloadTooLarge(f"request header section over {MAX_HEAD_BYTES} bytes"), 413
)
_MALFORMED = problem_bytes(InvalidRequest("malformed HTTP request"), 400)
_BUSY_ERROR = RateLimited("too many concurrent connections", retry_after=1)


async def _busy_app(scope: Any, receive: Any, send: Any) -> None:
    """ASGI app answering the connection cap refusal (429 with Retry-After)."""
    body = json.dumps(_BUSY_ERROR.problem(None), separators=(",", ":")).encode()
    await send({
        "type": "http.response.start",
        "status": 429,
        "headers": [
            (b"content-type", b"application/problem+json"),
            (b"retry-after", b"1"),
            (b"cache-control", b"no-store"),
            (b"connection", b"close"),
        ],
    })
    await send({"type": "http.response.body", "body": body})


class _RefuseRequest(Exception):  # noqa: N818 - internal control flow, never escapes
    """Raised inside a parser callback to stop parsing; data_received answers instead."""


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with head size, head/request timeouts and a connection cap.

    Limits are class attributes so that :func:`protocol_class` can bind them to a config
    (uvicorn instantiates the class itself).
    """

    max_head_bytes: int = MAX_HEAD_BYTES
    header_timeout: float = HEADER_TIMEOUT_S
    request_timeout: float = 30.0
    max_connections: int = 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        self._head_fields = 0
        self._refusal: bytes | None = None
        self._deadline: asyncio.TimerHandle | None = None

    # --- deadlines ----------------------------------------------------------------------

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._on_deadline)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _on_deadline(self) -> None:
        # Nothing useful can be said to a client too slow to send its request: close. An
        # application already running on a half-received body sees a disconnect.
        self._deadline = None
        if not self.transport.is_closing():
            log.warning("closing a connection: request not received in time",
                        extra={"fields": {"in_head": self._in_head}})
            # abort(), not close(): a graceful TLS shutdown would wait up to 30 s for the
            # slow client's close_notify, keeping the connection (and its slot) open.
            self.transport.abort()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(min(self.header_timeout, self.request_timeout))

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    # --- the head -------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            return
        if not self._in_head:
            super().data_received(data)
            return
        # Raw bytes, counted whatever the parser buffers: a head that never ends is cut at
        # the cap plus one read. Heads that end inside a large read are measured exactly
        # by _count_head.
        self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._refusal is None and self._head_bytes > self.max_head_bytes:
            self._refuse(_HEAD_TOO_LARGE)

    def send_400_response(self, msg: str) -> None:
        self._refuse(self._refusal or _MALFORMED)

    def _refuse(self, response: bytes) -> None:
        self._refusal = response
        self._disarm()
        if not self.transport.is_closing():
            self.transport.write(response)
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_fields = 0
        if not self._in_head:
            # A keep-alive request: its head gets the same deadline as the first one.
            self._in_head = True
            self._head_bytes = 0
            self._arm(min(self.header_timeout, self.request_timeout))

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count_head(self, size: int) -> None:
        # Exact size of what the parser accepted, for heads that arrive in one large read.
        self._head_fields += size
        if self._head_fields > self.max_head_bytes:
            self._refusal = _HEAD_TOO_LARGE
            raise _RefuseRequest

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._arm(self.request_timeout)
        busy = (len(self.connections) > self.max_connections
                or len(self.tasks) >= self.max_connections)
        if not busy:
            super().on_headers_complete()
            return
        log.warning("connection cap reached: refusing a request",
                    extra={"fields": {"connections": len(self.connections)}})
        app, self.app = self.app, _busy_app
        try:
            super().on_headers_complete()
            self.cycle.keep_alive = False
        finally:
            self.app = app

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()


def protocol_class(config: Config) -> type[GuardedHttpProtocol]:
    """:class:`GuardedHttpProtocol` bound to this configuration's limits."""
    request_timeout = float(config.server.request_timeout_s)
    return type(
        "SceauHttpProtocol",
        (GuardedHttpProtocol,),
        {
            "request_timeout": request_timeout,
            "header_timeout": min(HEADER_TIMEOUT_S, request_timeout),
            "max_connections": config.server.max_connections,
        },
    )


def server_tls_context(config: Config) -> ssl.SSLContext:
    """:func:`tls_context` for a data dir: its certificate, and ``server.client_*``."""
    client_ca = config.server.client_ca.strip()
    return tls_context(config.tls_cert, config.tls_key,
                       client_ca=Path(client_ca) if client_ca else None,
                       client_auth=config.server.client_auth)


def uvicorn_config(config: Config, app: Any, context: ssl.SSLContext) -> uvicorn.Config:
    """uvicorn's settings for one serving process (the same for each worker)."""
    return uvicorn.Config(
        app,
        host=config.server.host,
        port=config.server.port,
        http=protocol_class(config),
        # No uvicorn logging, Server header or proxy headers: Sceau logs and answers itself.
        log_config=None, access_log=False, server_header=False, proxy_headers=False,
        timeout_keep_alive=5, timeout_graceful_shutdown=10,
        # The cap is enforced by GuardedHttpProtocol with a problem+json answer.
        limit_concurrency=None,
        ssl_certfile=str(config.tls_cert),
        ssl_keyfile=str(config.tls_key),
        ssl_context_factory=lambda _cfg, _default: context,
    )


def worker_count(config: Config) -> int:
    """``server.workers``, with ``auto`` read as the number of usable cores."""
    workers = config.server.workers
    return usable_cores() if workers == "auto" else workers


def worker_node_ids(node_id: str, count: int) -> list[str]:
    """The audit node id each worker asks for: all empty (each leases a free ``nN``) when
    ``audit.node_id`` is empty; otherwise ``node_id`` for the first worker, so that a pinned
    chain goes on in it, and ``node_id.K`` for worker K (every chain keeps one writer)."""
    if not node_id:
        return [""] * count
    ids = [node_id] + [f"{node_id}.{k}" for k in range(2, count + 1)]
    if len(ids[-1]) > MAX_NODE_ID:
        raise ConfigError(
            f"audit.node_id: with {count} workers the last one's audit node id {ids[-1]!r} "
            f"would be over {MAX_NODE_ID} characters: choose a shorter audit.node_id"
        )
    return ids


def listen_socket(host: str, port: int) -> socket.socket:
    """The listening TCP socket the workers share, bound and listening (like uvicorn's)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"server.host/server.port: cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from None
    return sock


def serve(config: Config, *, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve until SIGTERM/SIGINT with ``server.workers`` processes; then flush the audit
    writers. One worker serves in this process; more are forked (:mod:`.supervisor`)."""
    setup_logging(config.log.level)
    # Made (and so checked) before any fork: the workers share it, and with it the TLS
    # session ticket keys, so a client resumes its session on whichever worker it reaches.
    context = server_tls_context(config)
    count = worker_count(config)
    if count == 1:
        _serve_in_process(config, context, on_ready)
        return
    node_ids = worker_node_ids(config.audit.node_id, count)
    sock = listen_socket(config.server.host, config.server.port)

    def worker(slot: int, ready: Callable[[str], None]) -> int:
        # After the fork: everything that holds a session, a connection or a thread is
        # opened here, in the worker, never in the parent.
        try:
            runtime = open_runtime(config, node_id=node_ids[slot])
            server = _ReadyServer(uvicorn_config(config, create_app(runtime), context),
                                  lambda: ready(runtime.writer.node))
            # As in one process: a stop is a clean exit once uvicorn has shut down.
            signal.signal(signal.SIGTERM, _exit_cleanly)
            signal.signal(signal.SIGINT, _exit_cleanly)
            server.run(sockets=[sock])
        except SceauError as error:
            sys.stderr.write(f"sceau: error: {error.diagnostics()}\n")
            return 1
        return 0

    def announce() -> None:
        log.info("serving with %d workers", count)
        if on_ready is not None:
            on_ready(config.service_id)

    try:
        code = Supervisor(count, worker, announce).run()
    finally:
        sock.close()
    if code != 0:
        raise SystemExit(code)


class _ReadyServer(uvicorn.Server):
    """uvicorn's server that reports once it accepts connections (a worker's readiness)."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if not self.should_exit:
            self._on_started()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A Ctrl-C reaches the parent and every worker, and the parent then sends SIGTERM:
        # uvicorn would read SIGINT after SIGTERM as "force", which skips the application's
        # shutdown (the audit writer's final flush). In a worker every stop is graceful.
        super().handle_exit(signal.SIGTERM if sig == signal.SIGINT else sig, frame)


def _serve_in_process(config: Config, context: ssl.SSLContext,
                      on_ready: Callable[[str], None] | None) -> None:
    """One worker: open the runtime and serve in this process (no supervisor)."""
    runtime = open_runtime(config)
    app = create_app(runtime)
    server = uvicorn.Server(uvicorn_config(config, app, context))
    if on_ready is not None:
        on_ready(config.service_id)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal under the handler
    # that was in place before it started: make that one a clean exit, so that a stopped
    # service (audit writer flushed) reports success to its supervisor instead of -15.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    server.run()


def _exit_cleanly(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)
