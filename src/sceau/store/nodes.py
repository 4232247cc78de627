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
from dataclasses import dataclass
from enum import StrEnum

import sqlalchemy as sa

from sceau.core.rowseal import SealedFields, SealedKind
from sceau.store.audit import checkpoint_line
from sceau.store.rows import Rows
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
class AuditNodeRow(SealedFields):
    """One registered node. ``kind`` stays text: a row edited by SQL must still load, so that
    its seal (not a parse error) is what reports it."""

    SEAL_KIND = SealedKind.AUDIT_NODE
    SEAL_ID = ("node",)

    node: str
    kind: str
    registered_at: int
    seal: bytes | None = None


_NODES = Rows(audit_nodes, AuditNodeRow, what="audit node")


def get_node(conn: sa.Connection, node: str) -> AuditNodeRow | None:
    """The node's registry row, or None."""
    return _NODES.get(conn, node)


def list_nodes(conn: sa.Connection) -> list[AuditNodeRow]:
    """Every registry row, by node id."""
    return _NODES.where(conn, order_by=[audit_nodes.c.node])


def insert_node(conn: sa.Connection, row: AuditNodeRow) -> None:
    """Insert a sealed row (the caller checked it is absent: one process holds a node id)."""
    _NODES.insert(conn, row)


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
    line = checkpoint_line(conn, node, node_seq)
    if line is None:
        return None
    value = json.loads(line).get("hash")
    return value if isinstance(value, str) else None


def first_node_seq(conn: sa.Connection, node: str) -> int | None:
    """The lowest ``node_seq`` of the node's stored records (above 1 after an archive)."""
    value = conn.execute(
        sa.select(sa.func.min(audit_records.c.node_seq)).where(audit_records.c.node == node)
    ).scalar()
    return int(value) if value is not None else None
