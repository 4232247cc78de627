"""OpenID Connect sign-ins in flight (``console_login_state``): written once, taken once.

The row's key is a hash of the ``state`` sent to the provider *and* the browser-binding value
of the ``__Host-`` cookie set with it (service/console/oidc.py), so a callback finds its row
only in the browser that started the sign-in. Taking a row deletes it in the same statement's
transaction: a state answers one callback, on any node.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from sceau.store.console_schema import console_login_state

__all__ = [
    "LoginState",
    "count_login_states",
    "insert_login_state",
    "purge_login_states",
    "take_login_state",
]


@dataclass(frozen=True)
class LoginState:
    """What the callback needs back: the ID token's expected nonce and the PKCE verifier."""

    state_hash: str
    nonce: str
    verifier: str
    created_at: int

    def __repr__(self) -> str:  # the verifier is a secret for its few minutes of life
        return f"LoginState(created_at={self.created_at})"


def insert_login_state(conn: sa.Connection, row: LoginState) -> None:
    conn.execute(console_login_state.insert().values(
        state_hash=row.state_hash, nonce=row.nonce, verifier=row.verifier,
        created_at=row.created_at))


def take_login_state(conn: sa.Connection, state_hash: str) -> LoginState | None:
    """The row for ``state_hash``, deleted; None when it does not exist (or was taken)."""
    row = conn.execute(
        sa.select(console_login_state).where(console_login_state.c.state_hash == state_hash)
    ).first()
    if row is None:
        return None
    deleted = conn.execute(
        console_login_state.delete().where(console_login_state.c.state_hash == state_hash)
    ).rowcount
    if deleted != 1:
        # Another transaction took it between the two statements: it is that one's.
        return None
    values = row._mapping
    return LoginState(state_hash=values["state_hash"], nonce=values["nonce"],
                      verifier=values["verifier"], created_at=int(values["created_at"]))


def purge_login_states(conn: sa.Connection, created_before: int) -> int:
    return int(conn.execute(
        console_login_state.delete().where(console_login_state.c.created_at < created_before)
    ).rowcount)


def count_login_states(conn: sa.Connection) -> int:
    return int(conn.execute(
        sa.select(sa.func.count()).select_from(console_login_state)).scalar_one())
