"""Alembic environment: always handed a live connection by sceau.store.db."""

from __future__ import annotations

from alembic import context

from sceau.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, transactional_ddl=True)
with context.begin_transaction():
    context.run_migrations()
