"""Alembic migrations (run programmatically by :mod:`sceau.store.db`)."""
