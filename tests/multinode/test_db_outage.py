"""PostgreSQL goes away under a running node, then comes back (SECURITY-CASES 30).

The node reaches the database through a TCP proxy that the test cuts and restores: every
open connection dies at once and new ones are refused, as when the database host fails.
While it is away the node is not ready and answers ``503 audit_unavailable`` with nothing
committed; afterwards it serves again without a restart.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from sceau.core.verify import verify_lines
from sceau.errors import AuditUnavailable, SceauError
from sceau.store.audit import iter_audit_lines
from sceau.store.db import create_engines
from support import PostgresDatabases, Server, make_server

OWNER = "alice@example.com"


class TcpProxy:
    """Forwards 127.0.0.1:port to a target; ``cut()`` drops everything, ``restore()`` resumes."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = int(probe.getsockname()[1])
        probe.close()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            # shutdown() first: close() alone does not wake the thread blocked in accept(),
            # and the kernel would keep accepting on its behalf.
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        with self._lock:
            doomed, self._sockets = self._sockets, set()
        for sock in doomed:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                downstream, _ = listener.accept()
            except OSError:
                return  # listener closed by cut()
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                downstream.close()
                continue
            with self._lock:
                self._sockets |= {downstream, upstream}
            for src, dst in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture(scope="module")
def proxied(postgres_databases: PostgresDatabases,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, TcpProxy]]:
    tmp_path = tmp_path_factory.mktemp("outage")
    url = postgres_databases.create()
    rest = url.split("://", 1)[1]
    userinfo, _, hostpart = rest.rpartition("@")
    _hostport, _, dbname = hostpart.partition("/")
    host, _, port = _hostport.partition(":")
    proxy = TcpProxy((host, int(port or 5432)))
    proxy.restore()
    credentials = f"{userinfo}@" if userinfo else ""
    via_proxy = f"postgresql://{credentials}127.0.0.1:{proxy.port}/{dbname}"
    server = make_server(tmp_path, env={"SCEAU_DATABASE_URL": via_proxy})
    yield server, proxy
    if server.proc is not None:
        server.stop()
    proxy.cut()
    postgres_databases.drop(url)


def audit_lines(server: Server) -> list[str]:
    engines = create_engines(server.config().database_url)
    try:
        with engines.read.connect() as conn:
            return [line for _seq, _kind, line in iter_audit_lines(conn)]
    finally:
        engines.dispose()


def readiness(server: Server) -> tuple[int, dict[str, object]]:
    response = httpx.get(f"{server.url}/readyz", verify=server.cert, timeout=30)
    return response.status_code, response.json()


def test_outage_fails_closed_and_recovers_without_restart(
    proxied: tuple[Server, TcpProxy],
) -> None:
    server, proxy = proxied
    app = server.register_app("outage")
    with server.client(app, OWNER) as c:
        key_id, envelope = c.encrypt(b"before the outage", rules={"max_decryptions": 3})
        assert c.decrypt(envelope) == b"before the outage"

        proxy.cut()
        status, body = readiness(server)
        assert status == 503 and "store" in body["problems"]
        for attempt in (lambda: c.decrypt(envelope), lambda: c.encrypt(b"during")):
            with pytest.raises(SceauError) as refused:
                attempt()
            assert isinstance(refused.value, AuditUnavailable)
            assert refused.value.status == 503
            assert b"before the outage" not in str(refused.value.problem("x")).encode()

        proxy.restore()
        deadline = time.monotonic() + 30
        while readiness(server)[0] != 200:
            assert time.monotonic() < deadline, readiness(server)
            time.sleep(0.2)
        assert server.proc is not None and server.proc.poll() is None  # same process
        assert c.decrypt(envelope) == b"before the outage"
        meta = c.describe_key(key_id)
    # The decrypt refused during the outage counted nothing: 1 before + 1 after.
    assert meta["decryptions"] == 2
    lines = audit_lines(server)
    jwks = httpx.get(f"{server.url}/.well-known/jwks.json", verify=server.cert).json()
    report = verify_lines(lines, jwks)
    assert report.ok, report.first_problem
    stored = [json.loads(line) for line in lines]
    decrypts = [r for r in stored if r.get("key") == key_id and r.get("action") == "DECRYPT"]
    assert [r["outcome"] for r in decrypts] == ["GRANTED", "GRANTED"]


def test_outage_with_a_kid_the_node_has_not_cached(proxied: tuple[Server, TcpProxy]) -> None:
    server, proxy = proxied
    fresh = server.register_app("never-called")
    proxy.cut()
    try:
        with server.client(fresh, OWNER) as c, pytest.raises(SceauError) as refused:
            c.encrypt(b"during")
        assert refused.value.status == 503
    finally:
        proxy.restore()
