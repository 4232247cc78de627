"""Persistence: SQLAlchemy Core tables, migrations, queries and the group-commit writer.

Runs on SQLite (embedded default, WAL) and PostgreSQL; nothing here uses SQL that only one of
them understands except behind an explicit dialect check.
"""
