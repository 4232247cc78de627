"""Test harness: real `sceau serve` subprocesses over real HTTPS, and registered apps.

Nothing here mocks a part of Sceau: a server is the installed console script started on a
free port with its own data dir; applications are registered through the admin layer the
CLI uses; clients are the SDK.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from sceau import admin
from sceau.client import Client
from sceau.config import load_config
from sceau.jose.client import ClientIdentity, generate_app_keys

REPO = Path(__file__).resolve().parents[1]
SCEAU = [sys.executable, "-m", "sceau.cli"]


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

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def cert(self) -> str:
        return str(self.data_dir / "tls" / "cert.pem")

    def config(self) -> Any:
        return load_config(self.data_dir, env={**os.environ, **self.env})

    def http(self) -> httpx.Client:
        return httpx.Client(verify=self.cert, timeout=30)

    # --- process ------------------------------------------------------------------------

    def start(self, *, wait: bool = True) -> None:
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
                if (r.status_code == 200) == expect_ready:
                    return
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.1)
        raise AssertionError(f"server not ready: {last}\n{self.log()[-3000:]}")

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

    # --- applications and clients --------------------------------------------------------

    def register_app(self, name: str = "test-app", *, users: tuple[str, ...] = ("*",),
                     alg: str = "ES256", enc: bool = True) -> TestApp:
        sign_priv, sign_pub, enc_priv, enc_pub = generate_app_keys(alg)
        with admin.admin_session(self.config()) as session:
            app_id = admin.add_application(
                session, name=name, jwk=sign_pub, enc_jwk=enc_pub if enc else None, users=users
            )
        app = TestApp(
            app_id=app_id,
            identity=ClientIdentity(app_id=app_id, kid=sign_pub["kid"], alg=alg,
                                    private_jwk=sign_priv, enc_private_jwk=enc_priv if enc else None),
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
                init_args: tuple[str, ...] = ()) -> Server:
    """`sceau init` a data dir under ``base`` and start `sceau serve` on a free port."""
    data_dir = base / "data"
    port = free_port()
    server_env = {"SCEAU_PORT": str(port), "SCEAU_CHECKPOINT_INTERVAL_S": "2", **(env or {})}
    run_cli("init", "--data-dir", str(data_dir), *init_args, env=server_env)
    server = Server(data_dir=data_dir, port=port, env=server_env, log_path=base / "server.log")
    if start:
        server.start()
    return server
