"""The console's sign-in state: login throttling, used TOTP steps, OpenID Connect sign-ins.

Throttle counters (``console_throttle``) count failed sign-ins per account and per client
address in a fixed window (SECURITY-CASES 39). ``console_totp_used`` holds the last TOTP
time step accepted per account, so a code is accepted once (RFC 6238 §5.2).

An OpenID Connect sign-in in flight (``console_login_state``) is written once and taken
once. Its key is a hash of the ``state`` sent to the provider *and* the browser-binding
value of the ``__Host-`` cookie set with it (service/console/oidc.py), so a callback finds
its row only in the browser that started the sign-in. Taking a row deletes it in the same
transaction: a state answers one callback, on any node.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from sceau.errors import InternalError
from sceau.store.rows import Rows, insert_or_ignore
from sceau.store.schema import console_login_state, console_throttle, console_totp_used

__all__ = [
    "LoginState",
    "charge_throttle",
    "clear_throttle",
    "count_login_states",
    "get_throttle",
    "insert_login_state",
    "purge_login_states",
    "purge_throttle",
    "refund_throttle",
    "set_totp_last_step",
    "take_login_state",
    "totp_last_step",
]


# --- throttle ----------------------------------------------------------------------------------


def _counter(scope: str, subject: str) -> tuple[sa.ColumnElement[bool], ...]:
    return console_throttle.c.scope == scope, console_throttle.c.subject == subject


def get_throttle(conn: sa.Connection, scope: str, subject: str) -> tuple[int, int] | None:
    """(failures, window_start) of a throttle counter, or None."""
    row = conn.execute(
        sa.select(console_throttle.c.failures, console_throttle.c.window_start)
        .where(*_counter(scope, subject))
    ).first()
    return (int(row.failures), int(row.window_start)) if row is not None else None


def charge_throttle(conn: sa.Connection, scope: str, subject: str, now: int,
                    window: int) -> tuple[int, int]:
    """Count one more attempt atomically; returns the counter after it.

    One ``UPDATE ... SET failures = failures + 1`` (a new window once the old one passed):
    concurrent attempts on any node each see their own count, never a stale one, so no
    more attempts than the limit are ever judged (SECURITY-CASES 39). The row lock it takes
    holds until the attempt's transaction ends.
    """
    conn.execute(insert_or_ignore(conn, console_throttle).values(
        scope=scope, subject=subject, failures=0, window_start=now))
    stale = console_throttle.c.window_start <= now - window
    conn.execute(console_throttle.update().where(*_counter(scope, subject)).values(
        failures=sa.case((stale, 1), else_=console_throttle.c.failures + 1),
        window_start=sa.case((stale, now), else_=console_throttle.c.window_start)))
    counter = get_throttle(conn, scope, subject)
    if counter is None:  # inserted above, in this transaction: the store lost a write
        raise InternalError("the sign-in throttle row vanished within its transaction")
    return counter


def refund_throttle(conn: sa.Connection, scope: str, subject: str) -> None:
    """Take back one counted attempt (it succeeded)."""
    conn.execute(console_throttle.update().where(
        *_counter(scope, subject), console_throttle.c.failures > 0,
    ).values(failures=console_throttle.c.failures - 1))


def clear_throttle(conn: sa.Connection, scope: str, subject: str) -> None:
    conn.execute(console_throttle.delete().where(*_counter(scope, subject)))


def purge_throttle(conn: sa.Connection, before: int) -> None:
    """Drop the counters whose window started before ``before``."""
    conn.execute(console_throttle.delete().where(console_throttle.c.window_start < before))


# --- TOTP steps --------------------------------------------------------------------------------


def totp_last_step(conn: sa.Connection, username: str) -> int | None:
    value = conn.execute(
        sa.select(console_totp_used.c.last_step).where(console_totp_used.c.username == username)
    ).scalar()
    return int(value) if value is not None else None


def set_totp_last_step(conn: sa.Connection, username: str, step: int) -> None:
    conn.execute(
        insert_or_ignore(conn, console_totp_used).values(username=username, last_step=step)
    )
    conn.execute(
        console_totp_used.update()
        .where(console_totp_used.c.username == username)
        .values(last_step=step)
    )


# --- OpenID Connect sign-ins in flight ---------------------------------------------------------


@dataclass(frozen=True)
class LoginState:
    """What the callback needs back: the ID token's expected nonce and the PKCE verifier."""

    state_hash: str
    nonce: str
    verifier: str
    created_at: int

    def __repr__(self) -> str:  # the verifier is a secret for its few minutes of life
        return f"LoginState(created_at={self.created_at})"


_LOGIN_STATES = Rows(console_login_state, LoginState)


def insert_login_state(conn: sa.Connection, row: LoginState) -> None:
    _LOGIN_STATES.insert(conn, row)


def take_login_state(conn: sa.Connection, state_hash: str) -> LoginState | None:
    """The row for ``state_hash``, deleted; None when it does not exist (or was taken)."""
    row = _LOGIN_STATES.get(conn, state_hash)
    if row is None:
        return None
    deleted = conn.execute(
        console_login_state.delete().where(console_login_state.c.state_hash == state_hash)
    ).rowcount
    if deleted != 1:
        # Another transaction took it between the two statements: it is that one's.
        return None
    return row


def purge_login_states(conn: sa.Connection, created_before: int) -> None:
    """Drop the sign-ins started before ``created_before`` (never finished)."""
    conn.execute(
        console_login_state.delete().where(console_login_state.c.created_at < created_before)
    )


def count_login_states(conn: sa.Connection) -> int:
    return int(conn.execute(
        sa.select(sa.func.count()).select_from(console_login_state)).scalar_one())
