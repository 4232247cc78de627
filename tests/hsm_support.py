"""SoftHSM2 tokens for servers under test (the server side of the PKCS#11 keystore).

:func:`pkcs11_server_args` gives what ``support.make_server(base, env=env,
init_args=args)`` needs to start a server whose keystore is a fresh SoftHSM2 token: the
environment (``SOFTHSM2_CONF`` pointing at a store of its own, the PIN in a variable) and the
``sceau init`` options. Each call makes a new SoftHSM2 store, so servers never share a token.
The token is made by scripts/softhsm-token.sh, as a developer would make one.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from sceau.jose.client import ClientIdentity, generate_app_keys

if TYPE_CHECKING:
    # Only for annotations: support.py may import this module (token_env_here) itself.
    from support import Server, TestApp

REPO = Path(__file__).resolve().parents[1]
TOKEN_SCRIPT = REPO / "scripts" / "softhsm-token.sh"
SOFTHSM_MODULE = os.environ.get("SCEAU_TEST_PKCS11_MODULE", "/usr/lib/softhsm/libsofthsm2.so")
# The server reads its PIN from this variable (`sceau init --pin-env`); never an argument.
SERVER_PIN_ENV = "SCEAU_TEST_SERVER_PIN"


def softhsm_problem() -> str | None:
    """Why SoftHSM2 cannot be used here (None when it can)."""
    if shutil.which("softhsm2-util") is None:
        return "softhsm2-util not found (make system installs softhsm2)"
    if not Path(SOFTHSM_MODULE).exists():
        return f"PKCS#11 module {SOFTHSM_MODULE} not found"
    return None


def need_softhsm() -> None:
    """Skip (visibly) without SoftHSM2; fail instead when CI requires it."""
    problem = softhsm_problem()
    if problem is None:
        return
    if os.environ.get("SCEAU_REQUIRE_PKCS11") == "1":
        pytest.fail(f"SCEAU_REQUIRE_PKCS11=1 but {problem}", pytrace=False)
    pytest.skip(problem)


@dataclass(frozen=True)
class SoftHsmToken:
    """One initialized SoftHSM2 token in a store of its own (``root``)."""

    root: Path
    label: str
    pin: str
    module: str = SOFTHSM_MODULE
    pin_env: str = SERVER_PIN_ENV

    @property
    def conf(self) -> Path:
        return self.root / "softhsm2.conf"

    @property
    def tokens(self) -> Path:
        """SoftHSM2's token store; removing it is what "token gone" looks like."""
        return self.root / "tokens"

    def env(self) -> dict[str, str]:
        """Environment for a process using the token (server or CLI)."""
        return {"SOFTHSM2_CONF": str(self.conf), self.pin_env: self.pin}

    def init_args(self) -> tuple[str, ...]:
        """``sceau init`` options that put the data dir's keystore on this token."""
        return ("--keystore", "pkcs11", "--module", self.module, "--token", self.label,
                "--pin-env", self.pin_env)

    @contextmanager
    def store_removed(self) -> Iterator[None]:
        """The token's store is gone (an HSM unplugged) inside the block, back after it."""
        away = self.tokens.with_name("tokens.away")
        self.tokens.rename(away)
        try:
            yield
        finally:
            away.rename(self.tokens)


def new_softhsm_token(base: Path, label: str = "sceau") -> SoftHsmToken:
    """A fresh SoftHSM2 store under ``base/softhsm`` with one initialized token."""
    need_softhsm()
    root = base / "softhsm"
    pin = secrets.token_hex(8)
    out = subprocess.run(
        ["bash", str(TOKEN_SCRIPT), str(root), label],
        env={**os.environ, "SCEAU_PKCS11_PIN": pin},
        check=True, capture_output=True, text=True,
    )
    token = SoftHsmToken(root=root.resolve(), label=label, pin=pin)
    assert out.stdout.strip() == f"export SOFTHSM2_CONF={token.conf}", out.stdout
    return token


def pkcs11_server_args(tmp: Path) -> tuple[dict[str, str], tuple[str, ...]]:
    """(env, init_args) for ``support.make_server`` on a fresh SoftHSM2 token under ``tmp``."""
    # A label of its own: a test process that already loaded another SoftHSM2 store must not
    # find a same-named token there and try this token's PIN on it.
    token = new_softhsm_token(tmp, label=f"sceau-{secrets.token_hex(4)}")
    return token.env(), token.init_args()


# What a process needs to reach a server's token: where SoftHSM2's store is, and the PIN.
_TOKEN_ENV = ("SOFTHSM2_CONF", SERVER_PIN_ENV)


@contextmanager
def token_env_here(env: Mapping[str, str]) -> Iterator[None]:
    """Give this (test) process a token server's SoftHSM2 store and PIN inside the block.

    For in-process admin work on a token server (``Server.register_app``,
    ``admin.admin_session(server.config())``): those open the server's keystore in the test
    process, which reads ``SOFTHSM2_CONF`` and the PIN from ``os.environ``. A module already
    initialized on another store finds no such token and re-initializes itself, reading the
    variables again (the pool's recovery path), so servers on different stores can follow
    one another; only keystores opened inside the block may be used inside it.
    """
    saved = {name: os.environ.get(name) for name in _TOKEN_ENV}
    os.environ.update({name: env[name] for name in _TOKEN_ENV if name in env})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def register_app_via_cli(server: Server, name: str = "test-app", *,
                         users: tuple[str, ...] = ("*",), alg: str = "ES256") -> TestApp:
    """Register an application with `sceau app add` in a process of the server's environment.

    ``Server.register_app`` opens the keystore inside the test process, which a token
    server's keystore cannot be: SoftHSM2 reads ``SOFTHSM2_CONF`` once per process and the
    PIN is in the server's environment only. The CLI runs with exactly the server's.
    """
    from support import TestApp, run_cli

    sign_priv, sign_pub, enc_priv, enc_pub = generate_app_keys(alg)
    base = server.data_dir.parent / f"app-{secrets.token_hex(4)}"
    base.mkdir()
    (base / "sign.pub.jwk").write_text(json.dumps(sign_pub))
    (base / "enc.pub.jwk").write_text(json.dumps(enc_pub))
    user_args = [arg for user in users for arg in ("--users", user)]
    out = run_cli("app", "add", "--name", name, "--jwk", str(base / "sign.pub.jwk"),
                  "--enc-jwk", str(base / "enc.pub.jwk"), *user_args, "--json",
                  "--data-dir", str(server.data_dir), env=server.env)
    app_id = str(json.loads(out.stdout)["app_id"])
    app = TestApp(
        app_id=app_id,
        identity=ClientIdentity(app_id=app_id, kid=sign_pub["kid"], alg=alg,
                                private_jwk=sign_priv, enc_private_jwk=enc_priv),
        sign_public=sign_pub,
        enc_public=enc_pub,
    )
    server.apps.append(app)
    return app
