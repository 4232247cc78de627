"""Connector tests: one real server per module, on SQLite only.

The connectors talk to the service through the SDK alone (``generate-data-key``,
``get-data-key``); the store behind the service changes nothing for them, and the
store-parametrized ``server`` of the root conftest would double these end-to-end runs.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support import Server, make_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = make_server(tmp_path_factory.mktemp("server-sqlite"))
    yield srv
    if srv.proc is not None:
        srv.stop()
