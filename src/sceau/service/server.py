"""``sceau serve``: uvicorn over TLS (1.2 minimum, forward-secret AEAD suites, 1.3 preferred)."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from pathlib import Path

import uvicorn

from sceau.config import Config
from sceau.service.app import create_app
from sceau.service.observability import setup_logging
from sceau.service.runtime import open_runtime

log = logging.getLogger("sceau.server")

# TLS 1.2: ECDHE key exchange with AES-GCM or ChaCha20-Poly1305 only. TLS 1.3 suites are all
# AEAD and forward-secret; OpenSSL prefers 1.3 when the client offers it.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!SHA1:!DSS"


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    ctx.load_cert_chain(str(cert), str(key))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def serve(config: Config, *, on_ready: Callable[[str], None] | None = None) -> None:
    """Open the runtime and serve until SIGTERM/SIGINT; then flush the audit writer."""
    setup_logging(str(config.get("log.level")))
    runtime = open_runtime(config)
    app = create_app(runtime)
    context = tls_context(config.tls_cert, config.tls_key)
    uv_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=10,
        limit_concurrency=int(config.get("server.max_connections")),
        h11_max_incomplete_event_size=8 * 1024,
        ssl_certfile=str(config.tls_cert),
        ssl_keyfile=str(config.tls_key),
        ssl_context_factory=lambda _cfg, _default: context,
    )
    server = uvicorn.Server(uv_config)
    if on_ready is not None:
        on_ready(config.service_id)
    server.run()
