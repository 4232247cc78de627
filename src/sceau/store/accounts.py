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

from dataclasses import dataclass

import sqlalchemy as sa

from sceau.core.rowseal import SealedFields, SealedKind
from sceau.errors import InvalidRequest
from sceau.store.rows import Rows
from sceau.store.schema import accounts, console_sessions

__all__ = [
    "AUTH_OIDC",
    "AUTH_PASSWORD",
    "AccountRow",
    "ConsoleSessionRow",
    "count_unsealed_sessions",
    "delete_console_session",
    "delete_console_sessions_of",
    "delete_unsealed_sessions",
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
class AccountRow(SealedFields):
    """A console account as stored."""

    SEAL_KIND = SealedKind.ACCOUNT
    SEAL_ID = ("username",)

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


@dataclass(frozen=True)
class ConsoleSessionRow(SealedFields):
    """A server-side console session; only the SHA-256 of its id is stored."""

    SEAL_KIND = SealedKind.CONSOLE_SESSION
    SEAL_ID = ("sid_hash",)
    UNSEALED = ("last_seen_at",)

    sid_hash: str
    username: str
    csrf: str
    created_at: int
    last_seen_at: int
    ip: str | None
    seal: bytes | None = None


_ACCOUNTS = Rows(accounts, AccountRow, what="account")
_SESSIONS = Rows(console_sessions, ConsoleSessionRow, what="session")


def insert_account(conn: sa.Connection, account: AccountRow) -> None:
    _ACCOUNTS.insert(conn, account)


def get_account(conn: sa.Connection, username: str) -> AccountRow | None:
    return _ACCOUNTS.get(conn, username)


def list_accounts(conn: sa.Connection) -> list[AccountRow]:
    return _ACCOUNTS.where(conn, order_by=[accounts.c.username])


def save_account(conn: sa.Connection, before: AccountRow, after: AccountRow) -> None:
    """Write ``after`` over ``before``; :class:`ConcurrentChange` if the row moved since.

    An account's sign-in method never changes, and an OpenID Connect account never gets a
    password (:class:`InvalidRequest`): whatever page or command asks, the store refuses.
    """
    if after.auth != before.auth:
        raise InvalidRequest("an account's sign-in method cannot change")
    if before.auth == AUTH_OIDC and after.password_hash != before.password_hash:
        raise InvalidRequest("this account signs in through OpenID Connect: it has no password")
    _ACCOUNTS.save(conn, before, after)


def insert_console_session(conn: sa.Connection, row: ConsoleSessionRow) -> None:
    _SESSIONS.insert(conn, row)


def get_console_session(conn: sa.Connection, sid_hash: str) -> ConsoleSessionRow | None:
    return _SESSIONS.get(conn, sid_hash)


def touch_console_session(conn: sa.Connection, sid_hash: str, now: int) -> None:
    conn.execute(
        console_sessions.update()
        .where(console_sessions.c.sid_hash == sid_hash)
        .values(last_seen_at=now)
    )


def delete_console_session(conn: sa.Connection, sid_hash: str) -> None:
    """End one session (none left is not an error: a sign-out twice ends it once)."""
    conn.execute(console_sessions.delete().where(console_sessions.c.sid_hash == sid_hash))


def _deleted(conn: sa.Connection, *conditions: sa.ColumnElement[bool]) -> int:
    return int(conn.execute(console_sessions.delete().where(*conditions)).rowcount)


def delete_console_sessions_of(conn: sa.Connection, username: str) -> int:
    """End every session of an account (password change, disable, role change)."""
    return _deleted(conn, console_sessions.c.username == username)


def count_unsealed_sessions(conn: sa.Connection) -> int:
    """Sessions left from before seals existed (``sceau db upgrade`` ends them)."""
    return int(conn.execute(
        sa.select(sa.func.count()).select_from(console_sessions)
        .where(console_sessions.c.seal.is_(None))
    ).scalar_one())


def delete_unsealed_sessions(conn: sa.Connection) -> int:
    return _deleted(conn, console_sessions.c.seal.is_(None))


def purge_console_sessions(conn: sa.Connection, *, idle_before: int, created_before: int) -> None:
    """End the sessions idle since ``idle_before`` or opened before ``created_before``."""
    _deleted(conn, sa.or_(console_sessions.c.last_seen_at < idle_before,
                          console_sessions.c.created_at < created_before))
