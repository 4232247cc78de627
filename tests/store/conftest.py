"""Fixtures for store tests: migrated databases of both engines, and a file keystore.

``make_engines`` is parametrized over ``sqlite`` (a fresh file under tmp_path per test) and
``postgres``: every contract test runs on both. PostgreSQL databases are slow to create, so
the session migrates one database and each test starts from it emptied (every table
truncated, ``audit_seq`` restarted, the schema revision reset to the head).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from sceau.keystore import Keystore, KeystoreSettings, init_keystore, open_keystore
from sceau.store.db import Engines, create_engines, head_revision, upgrade
from sceau.store.schema import metadata
from support import STORES, PostgresDatabases, databases_for

EngineFactory = Callable[[], Engines]


@pytest.fixture(scope="session")
def store_postgres_url(postgres_databases: PostgresDatabases) -> str:
    """One migrated PostgreSQL database shared (emptied) by the store tests."""
    url = postgres_databases.create()
    engines = create_engines(url, pool_size=1)
    try:
        upgrade(engines)
    finally:
        engines.dispose()
    return url


def empty_database(engines: Engines) -> None:
    tables = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
    with engines.write.begin() as conn:
        conn.exec_driver_sql(f"TRUNCATE {tables}")
        conn.exec_driver_sql("ALTER SEQUENCE audit_seq RESTART")
        conn.exec_driver_sql("DELETE FROM alembic_version")
        conn.execute(sa.text("INSERT INTO alembic_version VALUES (:v)"), {"v": head_revision()})


@pytest.fixture(params=STORES)
def make_engines(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EngineFactory]:
    """Opens engines on an empty migrated database of the test's store."""
    store: str = request.param
    databases = databases_for(request, store)
    if databases is not None:
        url: str = request.getfixturevalue("store_postgres_url")
    else:
        url = f"sqlite:///{tmp_path / 'store.db'}"
    opened: list[Engines] = []

    def factory() -> Engines:
        engines = create_engines(url, pool_size=4)
        if not opened:
            if databases is None:
                upgrade(engines)
            else:
                empty_database(engines)
        opened.append(engines)
        return engines

    yield factory
    for engines in opened:
        engines.dispose()


@pytest.fixture()
def engines(make_engines: EngineFactory) -> Engines:
    return make_engines()


@pytest.fixture(scope="session")
def keystore(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keystore]:
    settings = KeystoreSettings(tmp_path_factory.mktemp("store-ks") / "keystore")
    init_keystore(settings)
    ks = open_keystore(settings)
    yield ks
    ks.close()
