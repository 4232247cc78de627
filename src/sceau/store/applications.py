"""Registered applications and their signing keys: sealed rows and their queries.

Both rows are sealed (``sceau.core.rowseal``) over every column a decision reads: an
application's users and status, a key's JWK, algorithm, application and status. A row
inserted or edited with SQL alone does not verify, so it opens nothing (SECURITY-CASES 45).
Changes go through :func:`save_application` / :func:`save_app_key`, which write only when
the stored revision is the one read (optimistic concurrency).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from sceau.core.rowseal import SealedKind
from sceau.errors import ConcurrentChange
from sceau.store import hot
from sceau.store.schema import app_keys, applications
from sceau.vocab import AppKeyStatus, AppStatus

__all__ = [
    "ANY_USER",
    "AppKeyRow",
    "AppRow",
    "app_check",
    "app_key_exists",
    "get_app_key",
    "get_application",
    "insert_app_key",
    "insert_application",
    "list_app_keys",
    "list_applications",
    "save_app_key",
    "save_application",
    "save_revision",
    "touch_application",
]

# The pattern that lets an application assert every user; never implied (SECURITY-CASES 47).
ANY_USER = "*"


@dataclass(frozen=True)
class AppRow:
    """An application as stored. ``last_used_at`` is bookkeeping and not sealed."""

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

    def seal_kind(self) -> SealedKind:
        return SealedKind.APPLICATION

    def seal_id(self) -> str:
        return self.app_id

    def seal_fields(self) -> Mapping[str, Any]:
        return {
            "name": self.name,
            "users": list(self.users),
            "status": str(self.status),
            "enc_jwk": self.enc_jwk,
            "created_at": self.created_at,
            "revision": self.revision,
        }


@dataclass(frozen=True)
class AppKeyRow:
    """One signing key of an application, bound to its one algorithm."""

    kid: str
    app_id: str
    alg: str
    jwk: dict[str, Any]
    status: AppKeyStatus
    added_at: int
    retired_at: int | None
    revision: int = 1
    seal: bytes | None = None

    def seal_kind(self) -> SealedKind:
        return SealedKind.APP_KEY

    def seal_id(self) -> str:
        return self.kid

    def seal_fields(self) -> Mapping[str, Any]:
        return {
            "app_id": self.app_id,
            "alg": self.alg,
            "jwk": self.jwk,
            "status": str(self.status),
            "added_at": self.added_at,
            "retired_at": self.retired_at,
            "revision": self.revision,
        }


def _seal_bytes(value: Any) -> bytes | None:
    return bytes(value) if value is not None else None


def _app_from_row(row: Any) -> AppRow:
    return AppRow(
        app_id=row.app_id,
        name=row.name,
        users=tuple(json.loads(row.users)),
        status=AppStatus(row.status),
        enc_jwk=json.loads(row.enc_jwk) if row.enc_jwk else None,
        created_at=int(row.created_at),
        last_used_at=row.last_used_at,
        revision=int(row.revision),
        seal=_seal_bytes(row.seal),
    )


def _app_key_from_row(row: Any) -> AppKeyRow:
    return AppKeyRow(
        kid=row.kid,
        app_id=row.app_id,
        alg=row.alg,
        jwk=json.loads(row.jwk),
        status=AppKeyStatus(row.status),
        added_at=int(row.added_at),
        retired_at=row.retired_at,
        revision=int(row.revision),
        seal=_seal_bytes(row.seal),
    )


def _app_values(app: AppRow) -> dict[str, Any]:
    return {
        "name": app.name,
        "users": json.dumps(list(app.users)),
        "status": str(app.status),
        "enc_jwk": json.dumps(app.enc_jwk, sort_keys=True) if app.enc_jwk else None,
        "created_at": app.created_at,
        "revision": app.revision,
        "seal": app.seal,
    }


def _app_key_values(key: AppKeyRow) -> dict[str, Any]:
    return {
        "app_id": key.app_id,
        "alg": key.alg,
        "jwk": json.dumps(key.jwk, sort_keys=True),
        "status": str(key.status),
        "added_at": key.added_at,
        "retired_at": key.retired_at,
        "revision": key.revision,
        "seal": key.seal,
    }


def insert_application(conn: sa.Connection, app: AppRow) -> None:
    conn.execute(
        applications.insert().values(app_id=app.app_id, last_used_at=None, **_app_values(app))
    )


def insert_app_key(conn: sa.Connection, key: AppKeyRow, thumbprint: str) -> None:
    conn.execute(
        app_keys.insert().values(kid=key.kid, thumbprint=thumbprint, **_app_key_values(key))
    )


def save_revision(conn: sa.Connection, table: sa.Table, key: sa.ColumnElement[bool],
                  revision: int, values: Mapping[str, Any], what: str) -> None:
    """Update the row ``key`` selects only if it is still at ``revision`` (optimistic).

    :class:`ConcurrentChange` when another writer moved it since it was read.
    """
    result = conn.execute(
        table.update().where(key).where(table.c.revision == revision).values(**values)
    )
    if result.rowcount != 1:
        raise ConcurrentChange(f"{what} changed meanwhile; try again")


def save_application(conn: sa.Connection, before: AppRow, after: AppRow) -> None:
    """Write ``after`` over ``before``; :class:`ConcurrentChange` if the row moved since."""
    save_revision(conn, applications, applications.c.app_id == before.app_id, before.revision,
                  _app_values(after), f"application {before.app_id}")


def save_app_key(conn: sa.Connection, before: AppKeyRow, after: AppKeyRow) -> None:
    """Write ``after`` over ``before``; :class:`ConcurrentChange` if the row moved since."""
    save_revision(conn, app_keys, app_keys.c.kid == before.kid, before.revision,
                  _app_key_values(after), f"signing key {before.kid}")


def app_key_exists(conn: sa.Connection, kid: str, thumbprint: str) -> bool:
    row = conn.execute(
        sa.select(app_keys.c.kid).where(
            sa.or_(app_keys.c.kid == kid, app_keys.c.thumbprint == thumbprint)
        )
    ).first()
    return row is not None


def get_application(conn: sa.Connection, app_id: str) -> AppRow | None:
    row = conn.execute(sa.select(applications).where(applications.c.app_id == app_id)).first()
    return _app_from_row(row) if row is not None else None


def list_applications(conn: sa.Connection) -> list[AppRow]:
    rows = conn.execute(sa.select(applications).order_by(applications.c.created_at)).all()
    return [_app_from_row(r) for r in rows]


def get_app_key(conn: sa.Connection, kid: str) -> AppKeyRow | None:
    row = conn.execute(sa.select(app_keys).where(app_keys.c.kid == kid)).first()
    return _app_key_from_row(row) if row is not None else None


def list_app_keys(conn: sa.Connection, app_id: str) -> list[AppKeyRow]:
    rows = conn.execute(
        sa.select(app_keys).where(app_keys.c.app_id == app_id).order_by(app_keys.c.added_at)
    ).all()
    return [_app_key_from_row(r) for r in rows]


def app_check(conn: sa.Connection, kid: str) -> tuple[AppKeyRow, AppRow] | None:
    """The signing key and its application, read in one indexed join (SPEC §6 step 1).

    Returns both rows whole, seals included, so the caller verifies them before deciding.
    """
    row = hot.run(conn, "app_check", {"kid": kid}).first()
    if row is None:
        return None
    key = AppKeyRow(
        kid=kid,
        app_id=row.key_app,
        alg=row.key_alg,
        jwk=json.loads(row.key_jwk),
        status=AppKeyStatus(row.key_status),
        added_at=int(row.key_added_at),
        retired_at=row.key_retired_at,
        revision=int(row.key_revision),
        seal=_seal_bytes(row.key_seal),
    )
    app = AppRow(
        app_id=row.app_id,
        name=row.name,
        users=tuple(json.loads(row.users)),
        status=AppStatus(row.status),
        enc_jwk=json.loads(row.enc_jwk) if row.enc_jwk else None,
        created_at=int(row.created_at),
        last_used_at=row.last_used_at,
        revision=int(row.revision),
        seal=_seal_bytes(row.seal),
    )
    return key, app


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
