"""Driver-level SQL for the statements every request runs.

SQLAlchemy Core builds, caches and compiles a statement object on each call, and even
``exec_driver_sql`` sets up an execution context and a result object per call; on the
request path that costs more than SQLite itself (docs/performance.md). These few statements
are written once as plain SQL, valid on SQLite and PostgreSQL, with ``:name`` parameters
that are rewritten to psycopg's ``%(name)s`` style once per dialect, and executed on the
DBAPI connection underneath the caller's SQLAlchemy connection, inside its transaction.
Driver errors are re-raised as SQLAlchemy's wrapped exceptions (``IntegrityError``,
``OperationalError``, ...) exactly as SQLAlchemy would, so callers handle one family.
Rows are named tuples (attribute access, as SQLAlchemy rows). They touch exactly the
tables and columns of ``schema.py``; the store contract tests run them on both engines.
"""

from __future__ import annotations

import re
from collections import namedtuple
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import cache
from typing import Any, NamedTuple

import sqlalchemy as sa

_KEY_COLUMNS = (
    "key_id", "seed", "master_version", "owner", "application", "name", "name_lower", "tag",
    "created_at", "expires_at", "not_before", "not_after", "status", "destroy_at",
    "destroyed_at", "rules", "decryptions", "revision", "seal",
)
_AUTH_COLUMNS = (
    "key_id", "principal", "rights", "status", "not_before", "not_after", "added_by", "added_at",
)


# Both builders run at import on the constant names above; no value ever enters the text.
def _insert(table: str, columns: tuple[str, ...]) -> str:
    names, params = ", ".join(columns), ", ".join(":" + c for c in columns)
    return f"INSERT INTO {table} ({names}) VALUES ({params})"  # noqa: S608


def _select(table: str, columns: tuple[str, ...]) -> str:
    return f"SELECT {', '.join(columns)} FROM {table} WHERE key_id IN ({{ids}})"  # noqa: S608


STATEMENTS: dict[str, str] = {
    "remember_jti": "INSERT INTO replay (iss, jti, expires_at) VALUES (:iss, :jti, :expires_at) "
    "ON CONFLICT DO NOTHING RETURNING jti",
    # Both rows whole, seals included: the caller verifies them before deciding anything.
    "app_check": "SELECT k.app_id AS key_app, k.alg AS key_alg, k.jwk AS key_jwk, "
    "k.status AS key_status, k.added_at AS key_added_at, k.retired_at AS key_retired_at, "
    "k.revision AS key_revision, k.seal AS key_seal, a.app_id, a.name, a.users, a.status, "
    "a.enc_jwk, a.created_at, a.last_used_at, a.revision, a.seal "
    "FROM app_keys k JOIN applications a ON a.app_id = k.app_id WHERE k.kid = :kid",
    "insert_key": _insert("keys", _KEY_COLUMNS),
    "insert_auth": _insert("authorizations", _AUTH_COLUMNS),
    "load_keys": _select("keys", _KEY_COLUMNS),
    # One lock order for every node: no deadlock.
    "load_keys_locked": _select("keys", _KEY_COLUMNS) + " ORDER BY key_id FOR UPDATE",
    "load_auths_of": _select("authorizations", _AUTH_COLUMNS),
    "count_use": "UPDATE keys SET decryptions = :decryptions, seal = :seal "
    "WHERE key_id = :key_id AND revision = :revision AND decryptions = :before",
    "insert_audit": "INSERT INTO audit_records (seq, node, node_seq, key, hash, line) "
    "VALUES (:seq, :node, :node_seq, :key, :hash, :line)",
    "max_seq": "SELECT COALESCE(MAX(seq), 0) FROM audit_records",
}

_PLACEHOLDER = re.compile(r"(?<![:\w]):([a-z_0-9]+)")


_SQLITE_EQUIVALENT = {  # SQLite locks the whole database for its single writer
    "load_keys_locked": "load_keys",
}


@cache
def statement(name: str, dialect: str, count: int = 0) -> str:
    """The SQL text of ``name`` in ``dialect``'s parameter style.

    Statements with an ``IN ({ids})`` list take ``count`` parameters ``:id0`` .. ``:idN``.
    """
    if dialect != "postgresql":
        name = _SQLITE_EQUIVALENT.get(name, name)
    text = STATEMENTS[name]
    if "{ids}" in text:
        if count < 1:
            raise ValueError(f"{name} needs at least one id")
        text = text.format(ids=", ".join(f":id{i}" for i in range(count)))
    if dialect == "postgresql":
        return _PLACEHOLDER.sub(r"%(\1)s", text)
    return text


class Result(NamedTuple):
    """What a hot statement returned: its rows (named tuples) and the driver's rowcount."""

    rows: list[Any]
    rowcount: int

    def first(self) -> Any:
        return self.rows[0] if self.rows else None

    def all(self) -> list[Any]:
        return self.rows

    def scalar_one(self) -> Any:
        if len(self.rows) != 1:
            raise sa.exc.NoResultFound("expected exactly one row")
        return self.rows[0][0]


@cache
def _row_type(name: str, columns: tuple[str, ...]) -> Any:
    return namedtuple(f"{name}_row", columns, rename=True)


@contextmanager
def _driver_errors(conn: sa.Connection, sql: str, params: Any) -> Iterator[None]:
    """Wrap a DBAPI error the way SQLAlchemy does (``sa.exc.DBAPIError`` subclasses).

    The parameters are hidden, as on every engine of ``store/db.py``: the message names the
    statement, never the values bound to it (seeds, seals, principals).
    """
    dbapi_error = conn.dialect.loaded_dbapi.Error
    try:
        yield
    except dbapi_error as exc:
        raise sa.exc.DBAPIError.instance(
            sql, params, exc, dbapi_error, hide_parameters=True, dialect=conn.dialect
        ) from exc


def _cursor(conn: sa.Connection) -> Any:
    return conn.connection.driver_connection.cursor()  # type: ignore[union-attr]


_WRITE_VERBS = ("INSERT", "UPDATE", "DELETE", "WITH", "MERGE", "REPLACE")
_WRITES_KEY = "sceau_writes"


def is_write(sql: str) -> bool:
    """True for a statement that may change rows (conservative: any CTE counts)."""
    return sql.lstrip()[:7].upper().startswith(_WRITE_VERBS)


_hot_is_write = cache(is_write)  # the hot statements are a small, fixed set of texts


def count_write(conn: sa.Connection) -> None:
    """Note that a statement that may change rows is about to run on ``conn``."""
    info = conn.info
    info[_WRITES_KEY] = info.get(_WRITES_KEY, 0) + 1


def writes(conn: sa.Connection) -> int:
    """How many row-changing statements ran on ``conn`` (hot ones and SQLAlchemy's).

    The writer compares it around a job: a job that fails having written nothing needs no
    rollback (``store/writer.py``). SQLAlchemy's statements are counted by an engine event
    (``store/db.py``), the hot ones here; savepoint statements are not writes.
    """
    count: int = conn.info.get(_WRITES_KEY, 0)
    return count


def run(conn: sa.Connection, name: str, params: Mapping[str, Any]) -> Result:
    """Execute one hot statement in ``conn``'s transaction."""
    return _execute(conn, name, statement(name, conn.dialect.name), params)


def _execute(conn: sa.Connection, name: str, sql: str, params: Mapping[str, Any]) -> Result:
    if _hot_is_write(sql):
        count_write(conn)
    cursor = _cursor(conn)
    try:
        with _driver_errors(conn, sql, params):
            cursor.execute(sql, params)
            description = cursor.description
            if description is None:
                return Result([], cursor.rowcount)
            fetched = cursor.fetchall()
        row_type = _row_type(name, tuple(column[0] for column in description))
        return Result([row_type._make(row) for row in fetched], cursor.rowcount)
    finally:
        cursor.close()


def run_in(conn: sa.Connection, name: str, ids: Sequence[Any]) -> Result:
    """Execute one ``IN ({ids})`` statement for ``ids`` (at least one)."""
    sql = statement(name, conn.dialect.name, len(ids))
    return _execute(conn, name, sql, {f"id{i}": value for i, value in enumerate(ids)})


def run_many(conn: sa.Connection, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Execute one hot statement for many parameter sets (executemany)."""
    if not rows:
        return
    sql = statement(name, conn.dialect.name)
    if _hot_is_write(sql):
        count_write(conn)
    cursor = _cursor(conn)
    try:
        with _driver_errors(conn, sql, rows):
            cursor.executemany(sql, rows)
    finally:
        cursor.close()


def sql(conn: sa.Connection, text: str) -> None:
    """Execute a parameterless statement (savepoints) in ``conn``'s transaction."""
    cursor = _cursor(conn)
    try:
        with _driver_errors(conn, text, None):
            cursor.execute(text)
    finally:
        cursor.close()
