"""Fixtures for the security suite: a shared SQLite server and its registered applications.

The suite attacks the transport and protocol layers, which do not depend on the store; it
runs on SQLite only (the PostgreSQL variants of the multi-node cases live with the store's
tests), which keeps it well under two minutes.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from security_support import SQLITE

from support import Server, TestApp, make_server


@pytest.fixture(scope="session")
def sec_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A `sceau serve` with default limits, shared by the modules that only attack it."""
    srv = make_server(tmp_path_factory.mktemp("sec-server"), env=SQLITE)
    yield srv
    if srv.proc is not None:
        srv.stop()


@pytest.fixture(scope="session")
def sec_app(sec_server: Server) -> TestApp:
    """An ES256 application allowed to act for any user."""
    return sec_server.register_app("sec-primary")


@pytest.fixture(scope="session")
def sec_other_app(sec_server: Server) -> TestApp:
    """A second application (EdDSA), to attack across applications."""
    return sec_server.register_app("sec-other", alg="EdDSA")
