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
    STORES,
    PostgresDatabases,
    Server,
    TestApp,
    databases_for,
    make_server,
    need_postgres,
    postgres_problem,
    store_env,
)


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases]:
    """Creates fresh PostgreSQL databases; drops them all at the end of the session."""
    need_postgres(postgres_problem())
    databases = PostgresDatabases()
    yield databases
    databases.drop_all()


# The end-to-end backends: both stores on the file keystore, and SQLite on a PKCS#11 token
# (SoftHSM2), so every end-to-end module runs against each keystore backend too.
BACKENDS = (*STORES, "sqlite-pkcs11")


@pytest.fixture(scope="module", params=BACKENDS)
def server(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One `sceau serve` per test module and backend."""
    store, _, keystore = str(request.param).partition("-")
    databases = databases_for(request, store)
    env = store_env(store, databases)
    base = tmp_path_factory.mktemp(f"server-{request.param}")
    init_args: tuple[str, ...] = ()
    if keystore == "pkcs11":
        from hsm_support import need_softhsm, pkcs11_server_args

        need_softhsm()
        token_env, init_args = pkcs11_server_args(base)
        env = {**env, **token_env}
    srv = make_server(base, env=env, init_args=init_args)
    yield srv
    if srv.proc is not None:
        srv.stop()
    if databases is not None:
        databases.drop(env["SCEAU_DATABASE_URL"])


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
