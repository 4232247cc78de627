"""The application table a node keeps in memory follows the store's revision counter.

Every admin change of an application or a signing key bumps ``store_revisions`` in its own
transaction, and the next call sees it. A row edited with SQL is never trusted: without a
bump the node keeps the sealed copy it verified (which grants nothing more), with a bump it
reloads the row and refuses it for its seal.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from sceau import admin
from sceau.errors import (
    ApplicationDisabled,
    IntegrityFailure,
    UnknownApplication,
    UserNotAllowed,
)
from sceau.store.db import create_engines
from sceau.vocab import AppStatus
from support import Server

ALICE = "alice@example.com"
BOB = "bob@example.com"


@pytest.fixture()
def store(server: Server) -> Iterator[sa.Engine]:
    """Direct SQL on the server's database (a DBA's access)."""
    engines = create_engines(server.config().database_url)
    yield engines.write
    engines.dispose()


def revision(store: sa.Engine) -> int:
    with store.connect() as conn:
        return int(conn.execute(sa.text(
            "SELECT revision FROM store_revisions WHERE name = 'applications'")).scalar_one())


def test_an_admin_change_bumps_the_revision_and_the_next_call_sees_it(
    server: Server, store: sa.Engine
) -> None:
    before = revision(store)
    app = server.register_app("followed", users=(ALICE,))
    assert revision(store) > before
    with server.client(app, ALICE) as client:
        client.encrypt(b"one")
        registered = revision(store)
        with server.admin_session() as session:
            admin.set_application_status(session, app.app_id, AppStatus.DISABLED)
        assert revision(store) > registered
        with pytest.raises(ApplicationDisabled):
            client.encrypt(b"two")
        with server.admin_session() as session:
            admin.set_application_status(session, app.app_id, AppStatus.ENABLED)
            admin.set_application_users(session, app.app_id, [BOB])
        with pytest.raises(UserNotAllowed):
            client.encrypt(b"three")
    with server.client(app, BOB) as client:
        client.encrypt(b"four")
        with server.admin_session() as session:
            admin.retire_app_key(session, app.app_id, app.identity.kid)
        with pytest.raises(UnknownApplication):
            client.encrypt(b"five")


def test_an_unsealed_edit_is_refused_whether_or_not_the_revision_moves(
    server: Server, store: sa.Engine
) -> None:
    app = server.register_app("edited", users=(ALICE,))
    with server.client(app, ALICE) as client:
        client.encrypt(b"cached now")
    with store.begin() as conn:
        honest = conn.execute(sa.text("SELECT users FROM applications WHERE app_id = :a"),
                              {"a": app.app_id}).scalar_one()
        conn.execute(sa.text("UPDATE applications SET users = '[\"*\"]' WHERE app_id = :a"),
                     {"a": app.app_id})
    # No bump: the node goes on with the sealed row it verified, which does not allow bob.
    with server.client(app, BOB) as client, pytest.raises(UserNotAllowed):
        client.encrypt(b"widened?")
    with store.begin() as conn:
        conn.execute(sa.text(
            "UPDATE store_revisions SET revision = revision + 1 WHERE name = 'applications'"))
    # Bumped: the row is read again and its seal refuses it, for every user.
    for user in (BOB, ALICE):
        with server.client(app, user) as client, pytest.raises(IntegrityFailure):
            client.encrypt(b"edited row")
    with store.begin() as conn:
        conn.execute(sa.text("UPDATE applications SET users = :u WHERE app_id = :a"),
                     {"u": honest, "a": app.app_id})
    # The honest row back (and no bump needed: nothing unsealed was ever kept).
    with server.client(app, ALICE) as client:
        client.encrypt(b"honest again")
