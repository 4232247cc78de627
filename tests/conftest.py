"""Session-wide fixtures: a real server for end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Server, TestApp, make_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One `sceau serve` per test module (SQLite, file keystore)."""
    srv = make_server(tmp_path_factory.mktemp("server"))
    yield srv
    if srv.proc is not None:
        srv.stop()


@pytest.fixture(scope="module")
def app(server: Server) -> TestApp:
    return server.register_app("primary")


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    return tmp_path
