"""Helpers of the console tests: accounts written into a server's store, a form-posting client."""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
import time
from pathlib import Path

import httpx

from sceau.keystore import open_keystore
from sceau.service.accounts import hash_password
from sceau.service.runtime import keystore_settings
from sceau.store import accounts
from sceau.store.db import create_engines
from sceau.vocab import Role
from support import Server

ADMIN_PASSWORD = "quiet-harbour-lantern-42"
PASSWORD = "violet-meadow-compass-17"


def put_account(server: Server, username: str, password: str, role: Role, *,
                must_change: bool = False) -> None:
    """Create or overwrite an account in the store, sealed with the server's keystore.

    Test set-up done as the host operator would (data dir and keystore at hand); a row
    written without the keystore would not verify, which the trust-boundary tests show.
    """
    engines = create_engines(server.config().database_url)
    now = int(time.time())
    try:
        with open_keystore(keystore_settings(server.config())) as keystore, \
                engines.write.begin() as conn:
            values = {"password_hash": hash_password(password), "role": str(role),
                      "status": "active", "must_change_password": must_change,
                      "totp_secret": None, "updated_at": now}
            before = accounts.get_account(conn, username)
            if before is None:
                accounts.insert_account(conn, keystore.seal_row(accounts.AccountRow(
                    username=username, created_at=now, **values)))  # type: ignore[arg-type]
            else:
                accounts.save_account(conn, before, keystore.seal_row(dataclasses.replace(
                    before, revision=before.revision + 1, **values)))  # type: ignore[arg-type]
    finally:
        engines.dispose()


class Console:
    """An httpx session against the console, as a browser without JavaScript would act."""

    def __init__(self, server: Server, *, source: str | None = None) -> None:
        self.server = server
        # A distinct loopback source address gives a test its own per-address throttle.
        transport = httpx.HTTPTransport(verify=server.cert, local_address=source)
        self.http = httpx.Client(transport=transport, base_url=server.url, timeout=30,
                                 follow_redirects=False)

    def close(self) -> None:
        self.http.close()

    def login(self, username: str, password: str, code: str = "") -> httpx.Response:
        self.http.cookies.clear()
        page = self.http.get("/console/login")
        token = re.search(r'name="login_token" value="([^"]+)"', page.text)
        assert token is not None
        return self.http.post("/console/login", data={
            "login_token": token.group(1), "username": username, "password": password,
            "code": code})

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
        return Path(__file__).resolve().parents[2] / "docs" / "images"
    return Path(tempfile.gettempdir()) / "sceau-console-shots"
