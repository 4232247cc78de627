"""Helpers of the console tests: accounts written into a server's store, a form-posting client.

Shared with the workspace and security tests that drive the console, so it lives in tests/.

Roles that must use a second factor (``admin`` and ``auditor`` by default) get a TOTP secret
when the test writes their account; :class:`Console` then signs in with the next unused
code. A code is accepted once per 30-second step, and the server accepts the previous,
current and next step, so a few sign-ins of one account in a row are free and the helper
waits for a fresh step only when they are used up. Admin sessions are kept per module
(:meth:`Console.as_admin`), so most tests sign in as the admin without a new code.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
import time
from pathlib import Path

import httpx

from hsm_support import token_env_here
from sceau.keystore import open_keystore
from sceau.service.accounts import hash_password
from sceau.service.console import security
from sceau.service.runtime import keystore_settings
from sceau.store import accounts
from sceau.store.db import create_engines
from sceau.vocab import Role
from support import Server

ADMIN_PASSWORD = "quiet-harbour-lantern-42"
PASSWORD = "violet-meadow-compass-17"
SECOND_FACTOR_ROLES = (Role.ADMIN, Role.AUDITOR)

# (data dir, account) -> TOTP secret, and the last time step the helper used for it.
_SECRETS: dict[tuple[str, str], str] = {}
_LAST_STEP: dict[tuple[str, str], int] = {}
# (data dir, account) -> a session cookie of that account (see Console.as_admin).
_SESSIONS: dict[tuple[str, str], str] = {}


def _key(server: Server, username: str) -> tuple[str, str]:
    return str(server.data_dir), username


def totp_secret(server: Server, username: str) -> str | None:
    return _SECRETS.get(_key(server, username))


def remember_totp(server: Server, username: str, secret: str) -> None:
    """Record a secret enrolled through the console (the browser tests do)."""
    _SECRETS[_key(server, username)] = secret


def next_code(server: Server, username: str) -> str:
    """The code of the next time step not yet used for this account (waits if needed)."""
    key = _key(server, username)
    secret = _SECRETS[key]
    now = time.time()
    now_step = int(now) // security.TOTP_STEP_S
    # The server accepts one step either side of its own. The step before now stays valid
    # until the current step ends: used only when that is more than 5 s away, so a step
    # boundary crossed while the sign-in travels never leaves the code two steps behind.
    left = (now_step + 1) * security.TOTP_STEP_S - now
    step = max(_LAST_STEP.get(key, 0) + 1, now_step - 1 if left > 5 else now_step)
    while step > int(time.time()) // security.TOTP_STEP_S + 1:
        time.sleep(0.5)
    _LAST_STEP[key] = step
    return security.totp_code(secret, step * security.TOTP_STEP_S)


def put_account(server: Server, username: str, password: str, role: Role, *,
                must_change: bool = False, totp: bool | None = None) -> None:
    """Create or overwrite an account in the store, sealed with the server's keystore.

    Test set-up done as the host operator would (data dir and keystore at hand); a row
    written without the keystore would not verify, which the trust-boundary tests show.
    ``totp`` None gives a TOTP secret to the roles that require one (unless the password
    must still be changed: such an account enrols after its first sign-in).
    """
    if totp is None:
        totp = role in SECOND_FACTOR_ROLES and not must_change
    secret = security.totp_secret_text(os.urandom(security.TOTP_SECRET_BYTES)) if totp else None
    engines = create_engines(server.config().database_url)
    now = int(time.time())
    try:
        with token_env_here(server.env), \
                open_keystore(keystore_settings(server.config())) as keystore, \
                engines.write.begin() as conn:
            values = {"password_hash": hash_password(password), "role": str(role),
                      "status": "active", "must_change_password": must_change,
                      "totp_secret": secret, "updated_at": now}
            before = accounts.get_account(conn, username)
            if before is None:
                accounts.insert_account(conn, keystore.seal_row(accounts.AccountRow(
                    username=username, created_at=now, **values)))  # type: ignore[arg-type]
            else:
                accounts.save_account(conn, before, keystore.seal_row(dataclasses.replace(
                    before, revision=before.revision + 1, **values)))  # type: ignore[arg-type]
    finally:
        engines.dispose()
    _SESSIONS.pop(_key(server, username), None)
    if secret is not None:
        _SECRETS[_key(server, username)] = secret
    else:
        _SECRETS.pop(_key(server, username), None)


class Console:
    """An httpx session against the console, as a browser without JavaScript would act."""

    def __init__(self, server: Server, *, source: str | None = None) -> None:
        self.server = server
        # The password of the account signed in with as_account (for re-authentication).
        self.password = ""
        # A distinct loopback source address gives a test its own per-address throttle.
        transport = httpx.HTTPTransport(verify=server.cert, local_address=source)
        self.http = httpx.Client(transport=transport, base_url=server.url, timeout=30,
                                 follow_redirects=False)

    def close(self) -> None:
        self.http.close()

    def login(self, username: str, password: str, code: str | None = None) -> httpx.Response:
        """Sign in; ``code`` None sends the next unused TOTP code when the account has one."""
        self.http.cookies.clear()
        page = self.http.get("/console/login")
        token = re.search(r'name="login_token" value="([^"]+)"', page.text)
        assert token is not None
        if code is None:
            code = next_code(self.server, username) if totp_secret(
                self.server, username) else ""
        return self.http.post("/console/login", data={
            "login_token": token.group(1), "username": username, "password": password,
            "code": code})

    def as_account(self, username: str, password: str) -> Console:
        """Signed in as ``username``, reusing this module's session of it when still live."""
        key = _key(self.server, username)
        self.password = password
        cookie = _SESSIONS.get(key)
        if cookie is not None:
            self.http.cookies.clear()
            self.http.cookies.set("__Host-sceau_session", cookie, domain="127.0.0.1")
            if self.http.get("/console/dashboard").status_code == 200:
                return self
        response = self.login(username, password)
        assert response.status_code == 303, response.text[:500]
        _SESSIONS[key] = self.http.cookies.get("__Host-sceau_session") or ""
        return self

    def csrf(self, path: str = "/console/dashboard") -> str:
        page = self.http.get(path)
        found = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert found is not None, page.text[:500]
        return found.group(1)

    def post(self, path: str, data: dict[str, object], *,
             page: str = "/console/dashboard") -> httpx.Response:
        """POST a form with the CSRF token read from ``page``."""
        return self.http.post(path, data={"csrf": self.csrf(page), **data})  # type: ignore[dict-item]


SHOTS_ENV = "SCEAU_UPDATE_SCREENSHOTS"


def shots_dir() -> Path:
    """docs/images/ when $SCEAU_UPDATE_SCREENSHOTS=1, else a scratch directory.

    Every run takes the screenshots (the flows run either way); only an explicit update
    rewrites the ones docs/console.md shows, so `make test` leaves the tree clean.
    """
    if os.environ.get(SHOTS_ENV) == "1":
        return Path(__file__).resolve().parents[1] / "docs" / "images"
    return Path(tempfile.gettempdir()) / "sceau-console-shots"
