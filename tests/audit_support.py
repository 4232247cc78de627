"""Reading a server's audit trail from its store, for assertions."""

from __future__ import annotations

import json
from typing import Any

import httpx

from sceau.auditlog.export import ExportFormat, iter_export
from sceau.core.verify import VerifyReport, verify_lines
from sceau.store.db import create_engines
from support import Server


def audit_lines(server: Server) -> list[str]:
    """The trail as `sceau audit export` writes it (orphaned checkpoints included)."""
    engines = create_engines(server.config().database_url)
    try:
        return list(iter_export(engines, ExportFormat.JSONL))
    finally:
        engines.dispose()


def records(server: Server) -> list[dict[str, Any]]:
    out = []
    for line in audit_lines(server):
        obj = json.loads(line)
        if obj["type"] == "record":
            out.append(obj)
    return out


def verify_store(server: Server) -> VerifyReport:
    jwks = httpx.get(f"{server.url}/.well-known/jwks.json", verify=server.cert).json()
    return verify_lines(audit_lines(server), jwks)


def last_record(server: Server, **match: Any) -> dict[str, Any]:
    for rec in reversed(records(server)):
        if all(rec.get(k) == v for k, v in match.items()):
            return rec
    raise AssertionError(f"no audit record matching {match}")


def count_rows(server: Server, table: str) -> int:
    engines = create_engines(server.config().database_url)
    try:
        with engines.read.connect() as conn:
            return int(conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one())
    finally:
        engines.dispose()
