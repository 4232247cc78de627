"""SQL run on the database driver directly: the statements of the request path.

SQLAlchemy Core builds, caches and compiles a statement object on each call, and even
``exec_driver_sql`` sets up an execution context and a result object per call; on the
request path that costs more than SQLite itself (docs/performance.md). The few statements
every request runs are therefore :class:`Statement` objects: plain SQL written once, valid
on SQLite and PostgreSQL, with ``:name`` parameters rewritten to psycopg's ``%(name)s``
style once per dialect, and executed on the DBAPI connection underneath the caller's
SQLAlchemy connection, inside its transaction. Each aggregate module declares its own
(``keys``, ``applications``, ``audit``); this module only runs them.

Driver errors are re-raised as SQLAlchemy's wrapped exceptions (``IntegrityError``,
``OperationalError``, ...) exactly as SQLAlchemy would, so callers handle one family.
Rows are named tuples (attribute access, as SQLAlchemy rows). The statements touch exactly
the tables and columns of ``schema.py``; the store contract tests run them on both engines.
"""

from __future__ import annotations

import re
from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import cache
from typing import Any, NamedTuple

import sqlalchemy as sa

_PLACEHOLDER = re.compile(r"(?<![:\w]):([a-z_0-9]+)")
_WRITE_VERBS = ("INSERT", "UPDATE", "DELETE", "WITH", "MERGE", "REPLACE")
_WRITES_KEY = "sceau_writes"


def is_write(sql: str) -> bool:
    """True for a statement that may change rows (conservative: any CTE counts)."""
    return sql.lstrip()[:7].upper().startswith(_WRITE_VERBS)


class Statement:
    """One SQL text for both engines, with ``:name`` parameters.

    ``sqlite`` is the text SQLite runs where it differs (SQLite locks the whole database
    for its single writer, so it has no ``FOR UPDATE``). A text with an ``IN ({ids})`` list
    takes parameters ``:id0`` .. ``:idN``, as many as the ids given (:func:`run_in`); a
    text with ``VALUES {rows}`` takes one ``(:col0, ...)`` tuple per row, parameters
    ``:<col><i>`` for the ``columns`` given (:func:`run_rows`).
    Statements are built at import from constant text; no value ever enters it.
    """

    __slots__ = ("_by_count", "_texts", "columns", "name", "writes")

    def __init__(
        self, name: str, text: str, *, sqlite: str | None = None, columns: Sequence[str] = ()
    ) -> None:
        self.name = name
        self.columns = tuple(columns)
        self.writes = is_write(text)
        self._texts = {"sqlite": sqlite or text, "postgresql": text}
        self._by_count: dict[tuple[str, int], str] = {}

    def __repr__(self) -> str:
        return f"Statement({self.name!r})"

    def text(self, dialect: str, count: int = 0) -> str:
        """The SQL text in ``dialect``'s parameter style (``count`` ids for an IN list)."""
        found = self._by_count.get((dialect, count))
        if found is None:
            found = self._by_count[(dialect, count)] = self._render(dialect, count)
        return found

    def _render(self, dialect: str, count: int) -> str:
        text = self._texts["postgresql" if dialect == "postgresql" else "sqlite"]
        if "{ids}" in text:
            if count < 1:
                raise ValueError(f"{self.name} needs at least one id")
            text = text.format(ids=", ".join(f":id{i}" for i in range(count)))
        elif "{rows}" in text:
            if count < 1 or not self.columns:
                raise ValueError(f"{self.name} needs at least one row and its columns")
            text = text.format(rows=", ".join(
                "(" + ", ".join(f":{c}{i}" for c in self.columns) + ")" for i in range(count)
            ))
        if dialect == "postgresql":
            return _PLACEHOLDER.sub(r"%(\1)s", text)
        return text


class Result(NamedTuple):
    """What a statement returned: its rows (named tuples) and the driver's rowcount."""

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


def count_write(conn: sa.Connection) -> None:
    """Note that a statement that may change rows is about to run on ``conn``."""
    info = conn.info
    info[_WRITES_KEY] = info.get(_WRITES_KEY, 0) + 1


def writes(conn: sa.Connection) -> int:
    """How many row-changing statements ran on ``conn`` (these and SQLAlchemy's).

    The writer compares it around a job: a job that fails having written nothing needs no
    rollback (``store/writer.py``). SQLAlchemy's statements are counted by an engine event
    (``store/db.py``), the ones run here by this module; savepoint statements are not writes.
    """
    count: int = conn.info.get(_WRITES_KEY, 0)
    return count


def run(conn: sa.Connection, statement: Statement, params: Mapping[str, Any]) -> Result:
    """Execute ``statement`` in ``conn``'s transaction."""
    return _execute(conn, statement, statement.text(conn.dialect.name), params)


def run_in(conn: sa.Connection, statement: Statement, ids: Sequence[Any]) -> Result:
    """Execute an ``IN ({ids})`` statement for ``ids`` (at least one)."""
    sql = statement.text(conn.dialect.name, len(ids))
    return _execute(conn, statement, sql, {f"id{i}": value for i, value in enumerate(ids)})


class Call(NamedTuple):
    """One statement ready to run: its text in the connection's dialect and parameters."""

    statement: Statement
    sql: str
    params: Mapping[str, Any]


def call(conn: sa.Connection, statement: Statement, params: Mapping[str, Any]) -> Call:
    return Call(statement, statement.text(conn.dialect.name), params)


def rows_call(
    conn: sa.Connection, statement: Statement, rows: Sequence[Mapping[str, Any]]
) -> Call:
    """A ``VALUES {rows}`` statement for all ``rows`` (at least one): one statement instead
    of one per row, which unlike an executemany can return rows on both engines."""
    sql = statement.text(conn.dialect.name, len(rows))
    params = {f"{c}{i}": row[c] for i, row in enumerate(rows) for c in statement.columns}
    return Call(statement, sql, params)


def run_rows(
    conn: sa.Connection, statement: Statement, rows: Sequence[Mapping[str, Any]]
) -> Result:
    """Execute a ``VALUES {rows}`` statement once for all ``rows`` (:func:`rows_call`)."""
    found = rows_call(conn, statement, rows)
    return _execute(conn, statement, found.sql, found.params)


def run_all(conn: sa.Connection, calls: Sequence[Call]) -> list[Result]:
    """Execute ``calls`` in order and return their results.

    On PostgreSQL they are sent in one pipeline (psycopg pipeline mode): one round trip
    for all of them (and for the ``BEGIN`` of a transaction that starts here) instead of
    one each. The first failing statement raises, and the ones after it did not run.
    """
    if not calls:
        return []
    if conn.dialect.name != "postgresql":
        return [_execute(conn, c.statement, c.sql, c.params) for c in calls]
    driver_conn: Any = conn.connection.driver_connection
    cursors: list[tuple[Statement, Any]] = []
    try:
        with _driver_errors(conn, calls[0].sql, None):
            with driver_conn.pipeline():
                for c in calls:
                    if c.statement.writes:
                        count_write(conn)
                    cursor = driver_conn.cursor()
                    cursors.append((c.statement, cursor))
                    cursor.execute(c.sql, c.params)
            # Leaving the pipeline synced it: every result has arrived.
            return [_result(statement, cursor) for statement, cursor in cursors]
    finally:
        for _statement, cursor in cursors:
            cursor.close()


def run_many_and_commit(
    conn: sa.Connection,
    writes: Sequence[tuple[Statement, Sequence[Mapping[str, Any]]]],
    commit: Callable[[], None],
) -> None:
    """Execute each ``(statement, rows)`` as an executemany, then ``commit()``.

    On PostgreSQL the inserts and the ``COMMIT`` go in one pipeline: the last statements
    of a transaction and its commit cost one round trip. A failing insert raises (at the
    latest from the commit, which then does not happen).
    """
    if conn.dialect.name != "postgresql":
        for statement, rows in writes:
            run_many(conn, statement, rows)
        commit()
        return
    driver_conn: Any = conn.connection.driver_connection
    with _driver_errors(conn, "COMMIT", None), driver_conn.pipeline():
        for statement, rows in writes:
            run_many(conn, statement, rows)
        commit()


def run_many(
    conn: sa.Connection, statement: Statement, rows: Sequence[Mapping[str, Any]]
) -> None:
    """Execute ``statement`` for many parameter sets (executemany)."""
    if not rows:
        return
    sql = statement.text(conn.dialect.name)
    with _cursor(conn, sql, rows, writes=statement.writes) as cursor:
        cursor.executemany(sql, rows)


def sql(conn: sa.Connection, text: str) -> None:
    """Execute a parameterless statement (savepoints) in ``conn``'s transaction."""
    with _cursor(conn, text, None, writes=False) as cursor:
        cursor.execute(text)


def _execute(
    conn: sa.Connection, statement: Statement, sql: str, params: Mapping[str, Any]
) -> Result:
    with _cursor(conn, sql, params, writes=statement.writes) as cursor:
        cursor.execute(sql, params)
        return _result(statement, cursor)


def _result(statement: Statement, cursor: Any) -> Result:
    description = cursor.description
    if description is None:
        return Result([], cursor.rowcount)
    fetched, rowcount = cursor.fetchall(), cursor.rowcount
    row_type = _row_type(statement.name, tuple(column[0] for column in description))
    return Result([row_type._make(row) for row in fetched], rowcount)


@contextmanager
def _cursor(conn: sa.Connection, sql: str, params: Any, *, writes: bool) -> Iterator[Any]:
    """A DBAPI cursor in ``conn``'s transaction for running ``sql``: the write counted
    first when it may change rows, driver errors wrapped, the cursor closed after."""
    if writes:
        count_write(conn)
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        with _driver_errors(conn, sql, params):
            yield cursor
    finally:
        cursor.close()


def insert_text(table: str, columns: Sequence[str]) -> str:
    """``INSERT INTO table (columns) VALUES (:columns)``, for constant names only."""
    names, params = ", ".join(columns), ", ".join(":" + c for c in columns)
    return f"INSERT INTO {table} ({names}) VALUES ({params})"  # noqa: S608


def select_in_text(table: str, columns: Sequence[str], column: str) -> str:
    """``SELECT columns FROM table WHERE column IN ({ids})``, for constant names only."""
    return f"SELECT {', '.join(columns)} FROM {table} WHERE {column} IN ({{ids}})"  # noqa: S608
