"""Session-wide fixtures: real servers for end-to-end tests, on both stores.

``server`` (and everything built on it, such as ``app``) is parametrized over ``sqlite`` and
``postgres``: each end-to-end module runs once per store, each PostgreSQL server on its own
fresh database. Without a reachable PostgreSQL the ``postgres`` cases are skipped with the
reason shown in the summary; with ``SCEAU_REQUIRE_POSTGRES=1`` (CI) they fail instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support import (
    BACKENDS,
    STORES,
    PostgresDatabases,
    Server,
    TestApp,
    backend_server,
    databases_for,
    need_postgres,
    postgres_problem,
    store_env,
)


def pytest_report_header() -> str:
    """Say which code of the mypyc-compiled modules this run tests (tests/core/
    test_compiled_modules.py asserts it module by module)."""
    import sceau._native

    return f"sceau modules: {sceau._native.MODE} ({sceau._native.REASON})"


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases]:
    """Creates fresh PostgreSQL databases; drops them all at the end of the session."""
    need_postgres(postgres_problem())
    databases = PostgresDatabases()
    yield databases
    databases.drop_all()


@pytest.fixture(scope="module", params=BACKENDS)
def server(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One `sceau serve` per test module and backend."""
    base = tmp_path_factory.mktemp(f"server-{request.param}")
    with backend_server(request, base, str(request.param)) as srv:
        yield srv


@pytest.fixture(params=STORES)
def server_env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """Environment for a test's own `make_server(...)`: one case per store."""
    store: str = request.param
    databases = databases_for(request, store)
    env = store_env(store, databases)
    yield env
    if databases is not None:
        databases.drop(env["SCEAU_DATABASE_URL"])


@pytest.fixture(scope="module")
def app(server: Server) -> TestApp:
    return server.register_app("primary")


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    return tmp_path
