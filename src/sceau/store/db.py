"""Engines, connection settings, migrations and the start-up checks of the store.

SQLite runs in WAL mode with ``synchronous=FULL`` and ``secure_delete=ON``; every write
transaction starts with ``BEGIN IMMEDIATE`` so that the single writer never has to upgrade a
read lock (which could fail with SQLITE_BUSY under WAL). PostgreSQL must run with ``fsync``,
``synchronous_commit`` and ``full_page_writes`` on; the service refuses to start otherwise.

PostgreSQL connections come from SQLAlchemy's pool (``store.pool_size``), are checked before
use (``pool_pre_ping``) so that a node reconnects by itself after the database was away, and
carry a connect timeout, TCP keepalives and a lock timeout so that a vanished peer or a
stuck lock holder turns into a prompt ``503`` instead of a hung request.

Every engine is created with ``hide_parameters=True``: a failing statement's exception (its
``str()``, a traceback, a log line) names the SQL but never its bound values, which include
seeds, seals, names and principals. The database's own message can still quote a value
(PostgreSQL's ``DETAIL: Key (...)=(...)``); the service logs exception types only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from sceau.errors import ConfigError, InternalError, StoreUnavailable
from sceau.store import driver

log = logging.getLogger("sceau.store")

SQLITE_BUSY_TIMEOUT_MS = 10_000
PG_CONNECT_TIMEOUT_S = 5
# A job waits at most this long for a row lock held by another node's open transaction.
PG_LOCK_TIMEOUT_MS = 10_000
# Key of the advisory lock that serializes concurrent `sceau db upgrade` / `sceau init`.
PG_MIGRATION_LOCK = 0x5CEA_0001


def normalize_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` and select the psycopg 3 driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


@dataclass(frozen=True)
class Engines:
    """A write engine (the group-commit writer and admin commands) and a read engine."""

    write: sa.Engine
    read: sa.Engine

    @property
    def dialect(self) -> str:
        return self.write.dialect.name

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    def dispose(self) -> None:
        self.write.dispose()
        self.read.dispose()


def _sqlite_engine(url: str, *, immediate: bool, synchronous: str) -> sa.Engine:
    engine = sa.create_engine(
        url,
        hide_parameters=True,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        pool_pre_ping=False,
    )

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Driver-level autocommit: SQLAlchemy's "begin" event below emits BEGIN itself, so
        # the write engine can ask for an immediate (reserved) lock up front.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA secure_delete=ON")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.close()

    begin_sql = "BEGIN IMMEDIATE" if immediate else "BEGIN"

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # On the driver: exec_driver_sql builds an execution context and a result per call,
        # which the writer would pay once per group commit.
        driver.sql(conn, begin_sql)

    return engine


def create_engines(url: str, *, pool_size: int = 8, synchronous: str = "FULL") -> Engines:
    """Engines for a database URL (``sqlite:///path`` or ``postgresql://...``)."""
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engines = Engines(
            write=_sqlite_engine(url, immediate=True, synchronous=synchronous),
            read=_sqlite_engine(url, immediate=False, synchronous=synchronous),
        )
    elif url.startswith("postgresql"):
        engines = Engines(*([_postgres_engine(url, pool_size)] * 2))
    else:
        scheme = url.split(":")[0]
        raise ConfigError(f"store.database_url: unsupported database URL scheme {scheme!r}")
    _count_writes(engines.write)
    return engines


def _count_writes(engine: sa.Engine) -> None:
    """Count SQLAlchemy's row-changing statements per connection (see ``driver.writes``)."""

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _before(conn: sa.Connection, _cursor: Any, statement: str, *_args: Any) -> None:
        if driver.is_write(statement):
            driver.count_write(conn)


def _postgres_engine(url: str, pool_size: int) -> sa.Engine:
    # One engine for reads and writes: PostgreSQL has no single-writer lock to keep apart,
    # and one pool bounds this node's connections at 2 x pool_size.
    return sa.create_engine(
        url,
        hide_parameters=True,
        isolation_level="READ COMMITTED",
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
        pool_timeout=PG_CONNECT_TIMEOUT_S,
        connect_args={
            "connect_timeout": PG_CONNECT_TIMEOUT_S,
            "application_name": "sceau",
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "options": f"-c lock_timeout={PG_LOCK_TIMEOUT_MS}",
        },
    )


def _alembic_config(conn: sa.Connection) -> AlembicConfig:
    cfg = AlembicConfig()
    location = resources.files("sceau.store") / "migrations"
    cfg.set_main_option("script_location", str(location))
    cfg.attributes["connection"] = conn
    return cfg


def head_revision() -> str:
    """The newest migration this code knows."""
    with sa.create_engine("sqlite://", hide_parameters=True).connect() as conn:
        script = ScriptDirectory.from_config(_alembic_config(conn))
        head = script.get_current_head()
    if head is None:  # the package ships its migrations: a broken install
        raise InternalError("no database migration found in this installation")
    return head


def current_revision(engine: sa.Engine) -> str | None:
    """The schema revision recorded in the database, or None for an empty database."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engines: Engines) -> None:
    """Apply pending migrations in one transaction (DDL is transactional on both engines).

    On PostgreSQL an advisory lock serializes nodes that upgrade at the same moment; SQLite's
    ``BEGIN IMMEDIATE`` already does.
    """
    with engines.write.begin() as conn:
        if not engines.is_sqlite:
            # A migration may wait for serving nodes' transactions; the request-path lock
            # timeout does not apply to it.
            conn.exec_driver_sql("SET LOCAL lock_timeout = 0")
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_MIGRATION_LOCK})
        command.upgrade(_alembic_config(conn), "head")


def check_schema(engines: Engines) -> None:
    """Refuse to serve on a schema older or newer than the code (SECURITY-CASES 33)."""
    try:
        current = current_revision(engines.read)
    except sa.exc.SQLAlchemyError as exc:
        raise StoreUnavailable(f"cannot read the schema version: {type(exc).__name__}") from None
    head = head_revision()
    if current == head:
        return
    if current is None or current in known_revisions():
        raise ConfigError(
            f"database schema is at revision {current or 'none'}, older than this code "
            f"({head}): run `sceau db upgrade`"
        )
    raise ConfigError(
        f"database schema is at revision {current}, which this code does not know (newer "
        f"than {head}?): upgrade this node's software before serving"
    )


def known_revisions() -> set[str]:
    """Every migration revision this code ships."""
    with sa.create_engine("sqlite://", hide_parameters=True).connect() as conn:
        script = ScriptDirectory.from_config(_alembic_config(conn))
        return {rev.revision for rev in script.walk_revisions()}


# Accepted values per setting: anything else could acknowledge a commit that a crash loses.
_PG_DURABLE = {
    "fsync": ("on",),
    "full_page_writes": ("on",),
    "synchronous_commit": ("on", "remote_apply", "remote_write", "local"),
}


def check_durability(engines: Engines, *, synchronous: str = "FULL") -> None:
    """Refuse settings that could lose acknowledged audit records (SECURITY-CASES 29)."""
    with engines.write.connect() as conn:
        if engines.is_sqlite:
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
            sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
            wanted = {"FULL": 2, "EXTRA": 3}[synchronous]
            if str(mode).lower() != "wal" or sync is None or int(sync) < wanted:
                raise ConfigError(
                    f"SQLite must run journal_mode=WAL and synchronous={synchronous} "
                    f"(got {mode}, {sync})"
                )
            return
        for name, accepted in _PG_DURABLE.items():
            value = conn.exec_driver_sql(f"SHOW {name}").scalar()
            if str(value).lower() not in accepted:
                raise ConfigError(
                    f"PostgreSQL setting {name} is {value!r}; it must be "
                    f"{' or '.join(accepted)} so that acknowledged audit records survive a crash"
                )
