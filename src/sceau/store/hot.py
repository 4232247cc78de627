"""Driver-level SQL for the statements every request runs.

SQLAlchemy Core builds, caches and compiles a statement object on each call; on the request
path that costs more than SQLite itself (docs/performance.md). These few statements are
written once as plain SQL, valid on SQLite and PostgreSQL, with ``:name`` parameters that
are rewritten to psycopg's ``%(name)s`` style once per dialect, and executed with
``exec_driver_sql``. They touch exactly the tables and columns of ``schema.py``; the store
contract tests run them on both engines.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

import sqlalchemy as sa

STATEMENTS: dict[str, str] = {
    "remember_jti": "INSERT INTO replay (iss, jti, expires_at) VALUES (:iss, :jti, :expires_at) "
    "ON CONFLICT DO NOTHING RETURNING jti",
    "app_check": "SELECT k.app_id AS key_app, k.status AS key_status, a.app_id, a.name, "
    "a.users, a.status, a.enc_jwk FROM app_keys k JOIN applications a ON a.app_id = k.app_id "
    "WHERE k.kid = :kid",
    "insert_key": (
        "INSERT INTO keys (key_id, seed, master_version, owner, application, name, "
        "name_lower, tag, created_at, expires_at, not_before, not_after, status, "
        "destroy_at, destroyed_at, rules, decryptions, revision, seal) VALUES (:key_id, "
        ":seed, :master_version, :owner, :application, :name, :name_lower, :tag, "
        ":created_at, :expires_at, :not_before, :not_after, :status, :destroy_at, "
        ":destroyed_at, :rules, :decryptions, :revision, :seal)"
    ),
    "insert_auth": (
        "INSERT INTO authorizations (key_id, principal, rights, status, not_before, "
        "not_after, added_by, added_at) VALUES (:key_id, :principal, :rights, :status, "
        ":not_before, :not_after, :added_by, :added_at)"
    ),
    "load_key": (
        "SELECT key_id, seed, master_version, owner, application, name, name_lower, tag, "
        "created_at, expires_at, not_before, not_after, status, destroy_at, destroyed_at, "
        "rules, decryptions, revision, seal FROM keys WHERE key_id = :key_id"
    ),
    "load_key_locked": (
        "SELECT key_id, seed, master_version, owner, application, name, name_lower, tag, "
        "created_at, expires_at, not_before, not_after, status, destroy_at, destroyed_at, "
        "rules, decryptions, revision, seal FROM keys WHERE key_id = :key_id FOR UPDATE"
    ),
    "load_auths": (
        "SELECT key_id, principal, rights, status, not_before, not_after, added_by, "
        "added_at FROM authorizations WHERE key_id = :key_id"
    ),
    "count_use": "UPDATE keys SET decryptions = :decryptions, seal = :seal "
    "WHERE key_id = :key_id AND revision = :revision AND decryptions = :before",
    "insert_audit": "INSERT INTO audit_records (seq, node, node_seq, key, hash, line) "
    "VALUES (:seq, :node, :node_seq, :key, :hash, :line)",
    "max_seq": "SELECT COALESCE(MAX(seq), 0) FROM audit_records",
}

_PLACEHOLDER = re.compile(r"(?<![:\w]):([a-z_]+)")


@cache
def statement(name: str, dialect: str) -> str:
    """The SQL text of ``name`` in ``dialect``'s parameter style."""
    text = STATEMENTS[name]
    if dialect == "postgresql":
        return _PLACEHOLDER.sub(r"%(\1)s", text)
    if name == "load_key_locked":  # SQLite locks the whole database for its single writer
        return STATEMENTS["load_key"]
    return text


def run(conn: sa.Connection, name: str, params: Mapping[str, Any]) -> sa.CursorResult[Any]:
    """Execute one hot statement."""
    return conn.exec_driver_sql(statement(name, conn.dialect.name), dict(params))


def run_many(conn: sa.Connection, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Execute one hot statement for many parameter sets (executemany)."""
    if rows:
        conn.exec_driver_sql(statement(name, conn.dialect.name), [dict(r) for r in rows])
