"""Console fixtures: one real `sceau serve` per module, with a known admin password."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from console_support import ADMIN_PASSWORD, Console, put_account
from sceau.vocab import Role
from support import Server, make_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = make_server(tmp_path_factory.mktemp("console"))
    put_account(srv, "admin", ADMIN_PASSWORD, Role.ADMIN)
    yield srv
    if srv.proc is not None:
        srv.stop()


@pytest.fixture()
def console(server: Server) -> Iterator[Console]:
    c = Console(server)
    yield c
    c.close()


@pytest.fixture()
def admin(console: Console) -> Console:
    """Signed in as the admin (with a TOTP code; the session is reused across tests)."""
    return console.as_account("admin", ADMIN_PASSWORD)
