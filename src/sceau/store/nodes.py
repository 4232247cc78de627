"""The audit node registry: every node that ever wrote a record, in a sealed row.

A node registers in the transaction of its first record (:class:`sceau.store.writer.Writer`),
so a registered node always had records: one with neither records nor checkpoints left was
removed behind the service's back, and a node with records but no valid row was written (or
unregistered) outside it. The row is sealed (``sceau.core.rowseal``, kind ``audit_node``)
over its kind and registration time; it never changes, so it carries no revision.

This is the store-side half of SECURITY-CASES 48; the witness outside the store
(``sceau.auditlog.witness``) is the half an attacker with SQL access cannot reach.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from sceau.core.rowseal import SealedKind
from sceau.store.schema import audit_checkpoints, audit_nodes, audit_records

__all__ = [
    "AuditNodeRow",
    "NodeKind",
    "first_node_seq",
    "get_node",
    "hash_at",
    "insert_node",
    "list_nodes",
    "trail_nodes",
    "valid_node_id",
]

# What `audit.node_id` accepts, and what leased ids (n1, cli1) look like.
_NODE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class NodeKind(StrEnum):
    """Which kind of process writes a node's chain."""

    SERVER = "server"  # `sceau serve` (n1, n2, ... or a configured id)
    CLI = "cli"  # an administrative command (cli1, cli2, ...)


def valid_node_id(node: str) -> bool:
    """True for an id a node may carry (also safe as a file name stem)."""
    return _NODE_ID.fullmatch(node) is not None and node not in (".", "..")


@dataclass(frozen=True)
class AuditNodeRow:
    """One registered node. ``kind`` stays text: a row edited by SQL must still load, so that
    its seal (not a parse error) is what reports it."""

    node: str
    kind: str
    registered_at: int
    seal: bytes | None = None

    def seal_kind(self) -> SealedKind:
        return SealedKind.AUDIT_NODE

    def seal_id(self) -> str:
        return self.node

    def seal_fields(self) -> Mapping[str, Any]:
        return {"kind": self.kind, "registered_at": self.registered_at}


def _from_row(row: Any) -> AuditNodeRow:
    return AuditNodeRow(
        node=str(row.node),
        kind=str(row.kind),
        registered_at=int(row.registered_at),
        seal=bytes(row.seal) if row.seal is not None else None,
    )


def get_node(conn: sa.Connection, node: str) -> AuditNodeRow | None:
    """The node's registry row, or None."""
    row = conn.execute(sa.select(audit_nodes).where(audit_nodes.c.node == node)).first()
    return _from_row(row) if row is not None else None


def list_nodes(conn: sa.Connection) -> list[AuditNodeRow]:
    """Every registry row, by node id."""
    rows = conn.execute(sa.select(audit_nodes).order_by(audit_nodes.c.node)).all()
    return [_from_row(r) for r in rows]


def insert_node(conn: sa.Connection, row: AuditNodeRow) -> None:
    """Insert a sealed row (the caller checked it is absent: one process holds a node id)."""
    conn.execute(
        audit_nodes.insert().values(
            node=row.node, kind=row.kind, registered_at=row.registered_at, seal=row.seal
        )
    )


def trail_nodes(conn: sa.Connection) -> set[str]:
    """Every node with at least one stored record or checkpoint."""
    query = sa.union(
        sa.select(audit_records.c.node).distinct(),
        sa.select(audit_checkpoints.c.node).distinct(),
    )
    return {str(row[0]) for row in conn.execute(query)}


def hash_at(conn: sa.Connection, node: str, node_seq: int) -> str | None:
    """The hash the store holds for ``(node, node_seq)``: its record's, else a checkpoint's
    (an archive boundary keeps the checkpoint of a record it removed), else None."""
    found = conn.execute(
        sa.select(audit_records.c.hash).where(
            audit_records.c.node == node, audit_records.c.node_seq == node_seq
        )
    ).scalar()
    if found is not None:
        return str(found)
    line = conn.execute(
        sa.select(audit_checkpoints.c.line).where(
            audit_checkpoints.c.node == node, audit_checkpoints.c.node_seq == node_seq
        )
    ).scalar()
    if line is None:
        return None
    value = json.loads(str(line)).get("hash")
    return value if isinstance(value, str) else None


def first_node_seq(conn: sa.Connection, node: str) -> int | None:
    """The lowest ``node_seq`` of the node's stored records (above 1 after an archive)."""
    value = conn.execute(
        sa.select(sa.func.min(audit_records.c.node_seq)).where(audit_records.c.node == node)
    ).scalar()
    return int(value) if value is not None else None
