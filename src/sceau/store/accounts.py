"""Console accounts and their sessions: sealed rows and their queries.

An account row is sealed over its name, role, status, password hash, second-factor state
and sign-in method; a session row over the account it belongs to, its CSRF token and its
creation time. A DBA who inserts an admin account, swaps a password hash, clears a TOTP
secret or writes a session row for a known id gets rows that do not verify, and the console
refuses them (SECURITY-CASES 45). A session's ``last_seen_at`` is bookkeeping, touched
without a keystore operation, and outside the seal; its ``created_at`` (the absolute
timeout) is inside.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa

from sceau.core.rowseal import SealedKind
from sceau.errors import InvalidRequest
from sceau.store.applications import save_revision
from sceau.store.console_schema import console_sessions
from sceau.store.schema import accounts

__all__ = [
    "AUTH_OIDC",
    "AUTH_PASSWORD",
    "AccountRow",
    "ConsoleSessionRow",
    "delete_console_session",
    "delete_console_sessions_of",
    "get_account",
    "get_console_session",
    "insert_account",
    "insert_console_session",
    "list_accounts",
    "purge_console_sessions",
    "save_account",
    "touch_console_session",
]

AUTH_PASSWORD = "password"  # noqa: S105 - a sign-in method's name
AUTH_OIDC = "oidc"


@dataclass(frozen=True)
class AccountRow:
    """A console account as stored."""

    username: str
    password_hash: str
    role: str
    status: str
    must_change_password: bool
    totp_secret: str | None
    created_at: int
    updated_at: int
    auth: str = AUTH_PASSWORD
    revision: int = 1
    seal: bytes | None = None

    def __repr__(self) -> str:  # never print the hash or the TOTP secret
        return f"AccountRow({self.username!r}, role={self.role}, status={self.status})"

    def seal_kind(self) -> SealedKind:
        return SealedKind.ACCOUNT

    def seal_id(self) -> str:
        return self.username

    def seal_fields(self) -> Mapping[str, Any]:
        return {
            "password_hash": self.password_hash,
            "role": self.role,
            "status": self.status,
            "must_change_password": self.must_change_password,
            "totp_secret": self.totp_secret,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "auth": self.auth,
            "revision": self.revision,
        }


@dataclass(frozen=True)
class ConsoleSessionRow:
    """A server-side console session; only the SHA-256 of its id is stored."""

    sid_hash: str
    username: str
    csrf: str
    created_at: int
    last_seen_at: int
    ip: str | None
    seal: bytes | None = None

    def seal_kind(self) -> SealedKind:
        return SealedKind.CONSOLE_SESSION

    def seal_id(self) -> str:
        return self.sid_hash

    def seal_fields(self) -> Mapping[str, Any]:
        return {
            "username": self.username,
            "csrf": self.csrf,
            "created_at": self.created_at,
            "ip": self.ip,
        }


def _account(row: Any) -> AccountRow:
    values = dict(row._mapping)
    if values["seal"] is not None:
        values["seal"] = bytes(values["seal"])
    return AccountRow(**values)


def insert_account(conn: sa.Connection, account: AccountRow) -> None:
    conn.execute(accounts.insert().values(**asdict(account)))


def get_account(conn: sa.Connection, username: str) -> AccountRow | None:
    row = conn.execute(sa.select(accounts).where(accounts.c.username == username)).first()
    return _account(row) if row is not None else None


def list_accounts(conn: sa.Connection) -> list[AccountRow]:
    rows = conn.execute(sa.select(accounts).order_by(accounts.c.username)).all()
    return [_account(r) for r in rows]


def save_account(conn: sa.Connection, before: AccountRow, after: AccountRow) -> None:
    """Write ``after`` over ``before``; :class:`ConcurrentChange` if the row moved since.

    An account's sign-in method never changes, and an OpenID Connect account never gets a
    password (:class:`InvalidRequest`): whatever page or command asks, the store refuses.
    """
    if after.auth != before.auth:
        raise InvalidRequest("an account's sign-in method cannot change")
    if before.auth == AUTH_OIDC and after.password_hash != before.password_hash:
        raise InvalidRequest("this account signs in through OpenID Connect: it has no password")
    values = asdict(after)
    del values["username"]
    save_revision(conn, accounts, accounts.c.username == before.username, before.revision,
                  values, f"account {before.username}")


def insert_console_session(conn: sa.Connection, row: ConsoleSessionRow) -> None:
    conn.execute(console_sessions.insert().values(**asdict(row)))


def get_console_session(conn: sa.Connection, sid_hash: str) -> ConsoleSessionRow | None:
    row = conn.execute(
        sa.select(console_sessions).where(console_sessions.c.sid_hash == sid_hash)
    ).first()
    if row is None:
        return None
    values = dict(row._mapping)
    if values["seal"] is not None:
        values["seal"] = bytes(values["seal"])
    return ConsoleSessionRow(**values)


def touch_console_session(conn: sa.Connection, sid_hash: str, now: int) -> None:
    conn.execute(
        console_sessions.update()
        .where(console_sessions.c.sid_hash == sid_hash)
        .values(last_seen_at=now)
    )


def delete_console_session(conn: sa.Connection, sid_hash: str) -> int:
    return int(
        conn.execute(
            console_sessions.delete().where(console_sessions.c.sid_hash == sid_hash)
        ).rowcount
    )


def delete_console_sessions_of(conn: sa.Connection, username: str) -> int:
    """End every session of an account (password change, disable, role change)."""
    return int(
        conn.execute(
            console_sessions.delete().where(console_sessions.c.username == username)
        ).rowcount
    )


def count_unsealed_sessions(conn: sa.Connection) -> int:
    """Sessions left from before seals existed (``sceau db upgrade`` ends them)."""
    return int(conn.execute(
        sa.select(sa.func.count()).select_from(console_sessions)
        .where(console_sessions.c.seal.is_(None))
    ).scalar_one())


def delete_unsealed_sessions(conn: sa.Connection) -> int:
    return int(
        conn.execute(console_sessions.delete().where(console_sessions.c.seal.is_(None))).rowcount
    )


def purge_console_sessions(conn: sa.Connection, *, idle_before: int, created_before: int) -> int:
    return int(
        conn.execute(
            console_sessions.delete().where(
                sa.or_(
                    console_sessions.c.last_seen_at < idle_before,
                    console_sessions.c.created_at < created_before,
                )
            )
        ).rowcount
    )
