"""Test harness: real `sceau serve` subprocesses over real HTTPS, and registered apps.

Nothing here mocks a part of Sceau: a server is the installed console script started on a
free port with its own data dir; applications are registered through the admin layer the
CLI uses; clients are the SDK.

Stores: a server runs on SQLite (its data dir) unless its environment names a database with
``SCEAU_DATABASE_URL``. :class:`PostgresDatabases` creates throw-away PostgreSQL databases
(``sceau_test_<random>``) on the server named by ``$SCEAU_TEST_POSTGRES_URL`` (default the
local one, trust auth) and drops them at the end of the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from sceau import admin
from sceau.client import Client
from sceau.config import load_config
from sceau.jose.client import ClientIdentity, generate_app_keys

REPO = Path(__file__).resolve().parents[1]
SCEAU = [sys.executable, "-m", "sceau.cli"]
STORES = ("sqlite", "postgres")
# The end-to-end backends: both stores on the file keystore, and SQLite on a PKCS#11 token
# (SoftHSM2), so every end-to-end module runs against each keystore backend too.
BACKENDS = (*STORES, "sqlite-pkcs11")
POSTGRES_ADMIN_URL = os.environ.get(
    "SCEAU_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_cli(*args: str, env: Mapping[str, str] | None = None, input: bytes | None = None,
            check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    """Run the `sceau` command line as a user would."""
    proc = subprocess.run(
        [*SCEAU, *args], env={**os.environ, **(env or {})}, input=input,
        capture_output=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"sceau {' '.join(args)} exited {proc.returncode}:\n{proc.stderr.decode()}"
        )
    return proc


@dataclass
class TestApp:
    """A registered application and its private keys."""

    __test__ = False

    app_id: str
    identity: ClientIdentity
    sign_public: dict[str, Any]
    enc_public: dict[str, Any] | None


@dataclass
class Server:
    """A running `sceau serve` with its data dir and environment."""

    data_dir: Path
    port: int
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    apps: list[TestApp] = field(default_factory=list)
    # Where the current process's lines begin in the log (it is appended to on restarts).
    _log_start: int = field(default=0, repr=False)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def cert(self) -> str:
        return str(self.data_dir / "tls" / "cert.pem")

    @property
    def store(self) -> str:
        """``postgres`` or ``sqlite``: which store this server runs on."""
        url = self.env.get("SCEAU_DATABASE_URL") or os.environ.get("SCEAU_DATABASE_URL", "")
        return "postgres" if url.startswith("postgres") else "sqlite"

    def config(self) -> Any:
        return load_config(self.data_dir, env={**os.environ, **self.env})

    def http(self) -> httpx.Client:
        return httpx.Client(verify=self.cert, timeout=30)

    # --- process ------------------------------------------------------------------------

    def start(self, *, wait: bool = True) -> None:
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*SCEAU, "serve", "--data-dir", str(self.data_dir), "--port", str(self.port)],
            env={**os.environ, **self.env}, stdout=log, stderr=log,
        )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 30.0, *, expect_ready: bool = True) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                r = httpx.get(f"{self.url}/readyz", verify=self.cert, timeout=2)
                last = r.text
                # Ready: /readyz says so and, with several workers, every one of them is
                # (the parent announces the service only then).
                if (r.status_code == 200) == expect_ready and (
                        not expect_ready or self._announced()):
                    return
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.1)
        raise AssertionError(f"server not ready: {last}\n{self.log()[-3000:]}")

    def _announced(self) -> bool:
        if not self.log_path.exists():
            return False
        with self.log_path.open("rb") as log:
            log.seek(self._log_start)
            return b"Sceau serving at " in log.read()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self.proc = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        if self.proc is not None:
            self.stop()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def node_id(self) -> str:
        """The audit node id of the running process, from its log's last "serving" line.

        ``/readyz`` does not name it (anonymous callers get the status only).
        """
        for line in reversed(self.log().splitlines()):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("msg") == "serving":
                return str(entry["node"])
        raise AssertionError(f"no 'serving' line in the log:\n{self.log()[-3000:]}")

    # --- applications and clients --------------------------------------------------------

    @contextlib.contextmanager
    def admin_session(self) -> Iterator[admin.AdminSession]:
        """An in-process admin session on this server's store and keystore.

        On a PKCS#11 server the keystore is a token: the session opens it with the server's
        SoftHSM2 store and PIN (tests/hsm_support.py).
        """
        from hsm_support import token_env_here

        with token_env_here(self.env), admin.admin_session(self.config()) as session:
            yield session

    def register_app(self, name: str = "test-app", *, users: tuple[str, ...] = ("*",),
                     alg: str = "ES256", enc: bool = True) -> TestApp:
        sign_priv, sign_pub, enc_priv, enc_pub = generate_app_keys(alg)
        with self.admin_session() as session:
            app_id = admin.add_application(
                session, name=name, jwk=sign_pub, enc_jwk=enc_pub if enc else None, users=users
            )
        app = TestApp(
            app_id=app_id,
            identity=ClientIdentity(
                app_id=app_id, kid=sign_pub["kid"], alg=alg, private_jwk=sign_priv,
                enc_private_jwk=enc_priv if enc else None,
            ),
            sign_public=sign_pub,
            enc_public=enc_pub if enc else None,
        )
        self.apps.append(app)
        return app

    def client(self, app: TestApp, user: str | None = None, **kwargs: Any) -> Client:
        return Client(service_url=self.url, identity=app.identity, user=user, verify=self.cert,
                      **kwargs)

    def profile(self, app: TestApp, path: Path, user: str | None = None) -> Path:
        """Write a client profile file for the CLI."""
        jwks = httpx.get(f"{self.url}/.well-known/jwks.json", verify=self.cert).json()
        path.write_text(json.dumps({
            "service_url": self.url, "service_id": self.url, "app_id": app.app_id,
            "kid": app.identity.kid, "alg": app.identity.alg,
            "private_jwk": dict(app.identity.private_jwk),
            "enc_private_jwk": dict(app.identity.enc_private_jwk or {}) or None,
            "user": user, "ca_cert": self.cert, "service_jwks": jwks,
        }))
        path.chmod(0o600)
        return path


def make_server(base: Path, *, env: Mapping[str, str] | None = None, start: bool = True,
                init_args: tuple[str, ...] = (), workers: int = 1) -> Server:
    """`sceau init` a data dir under ``base`` and start `sceau serve` on a free port.

    One worker process unless asked (the default, one per core, would multiply the suite's
    processes); ``env`` may still set ``SCEAU_WORKERS``.
    """
    data_dir = base / "data"
    port = free_port()
    server_env = {
        "SCEAU_PORT": str(port),
        "SCEAU_WORKERS": str(workers),
        "SCEAU_CHECKPOINT_INTERVAL_S": "2",
        # The suites send hundreds of hostile calls on purpose; the refusal tarpit has its
        # own tests (tests/security/test_sec_tarpit.py).
        "SCEAU_REFUSALS_PER_IP_PER_S": "100000",
        **(env or {}),
    }
    run_cli("init", "--data-dir", str(data_dir), *init_args, env=server_env)
    server = Server(data_dir=data_dir, port=port, env=server_env, log_path=base / "server.log")
    if start:
        server.start()
    return server


# --- PostgreSQL ---------------------------------------------------------------------------------


def postgres_problem(admin_url: str = POSTGRES_ADMIN_URL) -> str | None:
    """Why PostgreSQL cannot be used for tests (None when it can)."""
    try:
        with psycopg.connect(admin_url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"PostgreSQL not reachable at {_redact(admin_url)}: {first}"
    return None


def need_postgres(problem: str | None) -> None:
    """Skip (visibly) when PostgreSQL is missing; fail instead when CI requires it."""
    if problem is None:
        return
    if os.environ.get("SCEAU_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"SCEAU_REQUIRE_POSTGRES=1 but {problem}", pytrace=False)
    pytest.skip(problem)


def _redact(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"


class PostgresDatabases:
    """Creates fresh databases for one test run and drops every one of them at the end."""

    def __init__(self, admin_url: str = POSTGRES_ADMIN_URL) -> None:
        self.admin_url = admin_url
        self.run_id = secrets.token_hex(4)
        self._created: list[str] = []

    def _admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5)

    def create(self) -> str:
        """A new empty database; returns its URL."""
        name = f"sceau_test_{self.run_id}_{len(self._created) + 1}"
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self._created.append(name)
        return self.url_of(name)

    def url_of(self, name: str) -> str:
        base, _, _old = self.admin_url.rpartition("/")
        return f"{base}/{name}"

    def admin_execute(self, sql: str) -> None:
        """Run one statement on the maintenance database (ALTER DATABASE, terminate, ...)."""
        with self._admin() as conn:
            conn.execute(sql.encode())

    def drop(self, url: str) -> None:
        name = url.rpartition("/")[2]
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())
        if name in self._created:
            self._created.remove(name)

    def drop_all(self) -> None:
        for name in list(self._created):
            self.drop(self.url_of(name))


def store_env(store: str, databases: PostgresDatabases | None) -> dict[str, str]:
    """The environment that puts a new server on ``store`` (a fresh database for postgres)."""
    if store == "sqlite":
        # Explicitly empty: a SCEAU_DATABASE_URL in the caller's environment must not leak in.
        return {"SCEAU_DATABASE_URL": ""}
    assert databases is not None
    return {"SCEAU_DATABASE_URL": databases.create()}


def new_backend_server(request: pytest.FixtureRequest, base: Path, backend: str, *,
                       env: Mapping[str, str] | None = None, start: bool = True,
                       workers: int = 1) -> Server:
    """A `sceau serve` on one of :data:`BACKENDS`: a fresh PostgreSQL database (dropped with
    the session's), a fresh SoftHSM2 token for ``sqlite-pkcs11``."""
    store, _, keystore = backend.partition("-")
    server_env = {**store_env(store, databases_for(request, store)), **(env or {})}
    init_args: tuple[str, ...] = ()
    if keystore == "pkcs11":
        from hsm_support import need_softhsm, pkcs11_server_args

        need_softhsm()
        token_env, init_args = pkcs11_server_args(base)
        server_env.update(token_env)
    return make_server(base, env=server_env, init_args=init_args, start=start, workers=workers)


@contextlib.contextmanager
def backend_server(request: pytest.FixtureRequest, base: Path, backend: str, *,
                   env: Mapping[str, str] | None = None, start: bool = True,
                   workers: int = 1) -> Iterator[Server]:
    """:func:`new_backend_server`, stopped (and its database dropped) when the block ends."""
    srv = new_backend_server(request, base, backend, env=env, start=start, workers=workers)
    try:
        yield srv
    finally:
        if srv.proc is not None:
            srv.stop()
        url = srv.env.get("SCEAU_DATABASE_URL", "")
        databases = databases_for(request, "postgres") if url.startswith("postgres") else None
        if databases is not None:
            databases.drop(url)


def databases_for(request: pytest.FixtureRequest, store: str) -> PostgresDatabases | None:
    """The session's database factory when ``store`` is postgres (skips when unavailable)."""
    if store != "postgres":
        return None
    databases: PostgresDatabases = request.getfixturevalue("postgres_databases")
    return databases
