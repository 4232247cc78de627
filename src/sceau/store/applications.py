"""Registered applications, their signing keys and the request ids they used.

Application and signing-key rows are sealed (``sceau.core.rowseal``) over every column a
decision reads: an application's users and status, a key's JWK, algorithm, application and
status. A row inserted or edited with SQL alone does not verify, so it opens nothing
(SECURITY-CASES 45). Changes go through :func:`save_application` / :func:`save_app_key`,
which write only when the stored revision is the one read (optimistic concurrency).

Every change of either table bumps the ``applications`` counter of ``store_revisions`` in
the same transaction (:func:`apps_revision`), so that a node may keep both tables in
memory and reload them when the counter moved; the seals stay the guard against edits made
with SQL alone, counter bumped or not.

The replay cache (``replay``) remembers each request id (``jti``) per application until
the request could no longer be accepted anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from sceau.core.rowseal import SealedFields, SealedKind
from sceau.store import driver
from sceau.store.rows import Rows
from sceau.store.schema import app_keys, applications, replay
from sceau.vocab import AppKeyStatus, AppStatus

__all__ = [
    "ANY_USER",
    "REVISION",
    "AppKeyRow",
    "AppRow",
    "app_check",
    "app_key_exists",
    "apps_changed_here",
    "apps_revision",
    "get_app_key",
    "get_application",
    "insert_app_key",
    "insert_application",
    "list_app_keys",
    "list_applications",
    "purge_replay",
    "remember_jti",
    "remember_jtis",
    "remember_jtis_and",
    "revisions_call",
    "revisions_of",
    "save_app_key",
    "save_application",
    "touch_application",
]

# The pattern that lets an application assert every user; never implied (SECURITY-CASES 47).
ANY_USER = "*"


@dataclass(frozen=True)
class AppRow(SealedFields):
    """An application as stored. ``last_used_at`` is bookkeeping and not sealed."""

    SEAL_KIND = SealedKind.APPLICATION
    SEAL_ID = ("app_id",)
    UNSEALED = ("last_used_at",)

    app_id: str
    name: str
    users: tuple[str, ...]
    status: AppStatus
    enc_jwk: dict[str, Any] | None
    created_at: int
    last_used_at: int | None
    revision: int = 1
    seal: bytes | None = None

    @property
    def any_user(self) -> bool:
        """True when the application may assert every user (shown as a warning)."""
        return ANY_USER in self.users


@dataclass(frozen=True)
class AppKeyRow(SealedFields):
    """One signing key of an application, bound to its one algorithm."""

    SEAL_KIND = SealedKind.APP_KEY
    SEAL_ID = ("kid",)

    kid: str
    app_id: str
    alg: str
    jwk: dict[str, Any]
    status: AppKeyStatus
    added_at: int
    retired_at: int | None
    revision: int = 1
    seal: bytes | None = None


_APPS = Rows(applications, AppRow, what="application")
_KEYS = Rows(app_keys, AppKeyRow, what="signing key")

# Both rows whole, seals included: the caller verifies them before deciding anything.
_APP_CHECK = driver.Statement(
    "app_check",
    "SELECT "  # noqa: S608 - constant column names only
    + ", ".join([f"k.{c} AS key_{c}" for c in _KEYS.columns] + [f"a.{c}" for c in _APPS.columns])
    + " FROM app_keys k JOIN applications a ON a.app_id = k.app_id WHERE k.kid = :kid",
)
# RETURNING rather than rowcount: SQLAlchemy reports no rowcount for a plain INSERT on
# psycopg 3, and an ignored conflict returns no row on both engines.
_REMEMBER_JTI = driver.Statement(
    "remember_jti",
    "INSERT INTO replay (iss, jti, expires_at) VALUES (:iss, :jti, :expires_at) "
    "ON CONFLICT DO NOTHING RETURNING jti",
)

# The same for a whole group commit: one statement, the ids it did remember returned.
_REMEMBER_JTIS = driver.Statement(
    "remember_jtis",
    "INSERT INTO replay (iss, jti, expires_at) VALUES {rows} "
    "ON CONFLICT DO NOTHING RETURNING iss, jti",
    columns=("iss", "jti", "expires_at"),
)
# Rows per statement: far below SQLite's 32766 bound parameters (3 per row).
JTI_CHUNK = 1000

_REVISION_NAME = "applications"
_BUMP_REVISION = driver.Statement(
    "bump_apps_revision",
    "INSERT INTO store_revisions (name, revision) VALUES (:name, 1) ON CONFLICT (name) "
    "DO UPDATE SET revision = store_revisions.revision + 1",
)
_READ_REVISION = driver.Statement(
    "apps_revision", "SELECT revision FROM store_revisions WHERE name = :name"
)
_READ_REVISIONS = driver.Statement(
    "store_revisions", "SELECT name, revision FROM store_revisions"
)
# The counter of this module's two tables in store_revisions.
REVISION = _REVISION_NAME
# conn.info flag: this connection's open transaction changed an application or a key.
_CHANGED_KEY = "sceau_apps_changed"


def apps_revision(conn: sa.Connection) -> int:
    """The applications' revision counter (0 when it has no row yet)."""
    row = driver.run(conn, _READ_REVISION, {"name": _REVISION_NAME}).first()
    return int(row[0]) if row is not None else 0


def apps_changed_here(conn: sa.Connection, *, reset: bool = False) -> bool:
    """True when ``conn`` changed an application or a signing key since the last reset.

    What such a transaction reads is not committed yet (it may still roll back), so an
    in-memory copy must not keep it; ``reset`` clears the flag (at a transaction's start).
    """
    if reset:
        return bool(conn.info.pop(_CHANGED_KEY, False))
    return bool(conn.info.get(_CHANGED_KEY, False))


def _bump(conn: sa.Connection) -> None:
    conn.info[_CHANGED_KEY] = True
    driver.run(conn, _BUMP_REVISION, {"name": _REVISION_NAME})


def insert_application(conn: sa.Connection, app: AppRow) -> None:
    _APPS.insert(conn, app)
    _bump(conn)


def insert_app_key(conn: sa.Connection, key: AppKeyRow, thumbprint: str) -> None:
    _KEYS.insert(conn, key, thumbprint=thumbprint)
    _bump(conn)


def save_application(conn: sa.Connection, before: AppRow, after: AppRow) -> None:
    """Write ``after`` over ``before``; :class:`ConcurrentChange` if the row moved since."""
    _APPS.save(conn, before, after)
    _bump(conn)


def save_app_key(conn: sa.Connection, before: AppKeyRow, after: AppKeyRow) -> None:
    """Write ``after`` over ``before``; :class:`ConcurrentChange` if the row moved since."""
    _KEYS.save(conn, before, after)
    _bump(conn)


def app_key_exists(conn: sa.Connection, kid: str, thumbprint: str) -> bool:
    row = conn.execute(
        sa.select(app_keys.c.kid).where(
            sa.or_(app_keys.c.kid == kid, app_keys.c.thumbprint == thumbprint)
        )
    ).first()
    return row is not None


def get_application(conn: sa.Connection, app_id: str) -> AppRow | None:
    return _APPS.get(conn, app_id)


def list_applications(conn: sa.Connection) -> list[AppRow]:
    return _APPS.where(conn, order_by=[applications.c.created_at])


def get_app_key(conn: sa.Connection, kid: str) -> AppKeyRow | None:
    return _KEYS.get(conn, kid)


def list_app_keys(conn: sa.Connection, app_id: str) -> list[AppKeyRow]:
    return _KEYS.where(conn, app_keys.c.app_id == app_id, order_by=[app_keys.c.added_at])


def app_check(conn: sa.Connection, kid: str) -> tuple[AppKeyRow, AppRow] | None:
    """The signing key and its application, read in one indexed join (SPEC §6 step 1).

    Returns both rows whole, seals included, so the caller verifies them before deciding.
    """
    row = driver.run(conn, _APP_CHECK, {"kid": kid}).first()
    if row is None:
        return None
    return _KEYS.load(row, prefix="key_"), _APPS.load(row)


def touch_application(conn: sa.Connection, app_id: str, now: int) -> None:
    """Record a use (bookkeeping: ``last_used_at`` is outside the seal)."""
    conn.execute(
        applications.update()
        .where(applications.c.app_id == app_id)
        .where(
            sa.or_(applications.c.last_used_at.is_(None), applications.c.last_used_at < now - 60)
        )
        .values(last_used_at=now)
    )


def remember_jti(conn: sa.Connection, iss: str, jti: str, expires_at: int) -> bool:
    """Record a request id; False when this application already used it."""
    params = {"iss": iss, "jti": jti, "expires_at": expires_at}
    return driver.run(conn, _REMEMBER_JTI, params).first() is not None


def remember_jtis(
    conn: sa.Connection, entries: Sequence[tuple[str, str, int]]
) -> list[bool]:
    """Record many request ids ``(iss, jti, expires_at)`` at once, in the order given.

    Answers, per entry, whether it was new: False for an id already stored, and for every
    repetition of an id after its first entry in ``entries`` (the earlier one used it). One
    statement per :data:`JTI_CHUNK` distinct ids, inserted sorted, so that nodes inserting
    overlapping ids lock them in one order (no deadlock between two group commits).
    """
    return remember_jtis_and(conn, entries)[0]


def remember_jtis_and(
    conn: sa.Connection, entries: Sequence[tuple[str, str, int]],
    more: Sequence[driver.Call] = (),
) -> tuple[list[bool], list[driver.Result]]:
    """:func:`remember_jtis`, and ``more`` statements run with it (on PostgreSQL in one
    pipeline: one round trip for all); also the results of ``more``."""
    first: dict[tuple[str, str], int] = {}
    answers = [False] * len(entries)
    for index, (iss, jti, _expires) in enumerate(entries):
        first.setdefault((iss, jti), index)
    ordered = sorted(first)
    calls: list[driver.Call] = []
    for start in range(0, len(ordered), JTI_CHUNK):
        chunk = ordered[start:start + JTI_CHUNK]
        rows = [{"iss": iss, "jti": jti, "expires_at": entries[first[(iss, jti)]][2]}
                for iss, jti in chunk]
        calls.append(driver.rows_call(conn, _REMEMBER_JTIS, rows))
    results = driver.run_all(conn, [*calls, *more])
    remembered = {(row[0], row[1]) for result in results[:len(calls)] for row in result.rows}
    for pair, index in first.items():
        answers[index] = pair in remembered
    return answers, results[len(calls):]


def revisions_call(conn: sa.Connection) -> driver.Call:
    """The statement reading every revision counter (:func:`revisions_of` its result)."""
    return driver.call(conn, _READ_REVISIONS, {})


def revisions_of(result: driver.Result) -> dict[str, int]:
    return {str(row[0]): int(row[1]) for row in result.rows}


def purge_replay(conn: sa.Connection, before: int) -> int:
    """Forget the request ids that expired before ``before``; how many were forgotten."""
    return int(conn.execute(replay.delete().where(replay.c.expires_at < before)).rowcount)
