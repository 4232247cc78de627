"""Alembic migrations (run programmatically by :mod:`sceau.store.db`).

May import: the store's schema helpers only (the frozen ``versions/*`` never change).
"""
