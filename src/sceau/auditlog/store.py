"""Queries over the audit tables for exports, verification and archiving.

Kept here rather than in :mod:`sceau.store.repo` so that the audit tooling owns its reads in
one place; every function takes a live connection and leaves transactions to the caller.

Unlike ``repo.iter_audit_lines`` (which places a checkpoint only after a record it finds),
these readers return *every* checkpoint row, including one whose record is gone: a
checkpoint left behind by deleted records is exactly the evidence a verifier needs.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass

import sqlalchemy as sa

from sceau.store.schema import audit_checkpoints, audit_records

__all__ = [
    "CheckpointRow",
    "RecordRow",
    "checkpoint_heads",
    "checkpoint_keys",
    "checkpoint_line",
    "checkpoints_after",
    "checkpoints_between",
    "delete_through",
    "max_record_seq",
    "node_first_node_seqs",
    "node_last_seqs",
    "record_positions",
    "records_between",
    "snapshot",
]


@dataclass(frozen=True, slots=True)
class RecordRow:
    """One stored record: its indexed columns and its exact stored line."""

    seq: int
    node: str
    node_seq: int
    key: str | None
    hash: str
    line: str


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    """One stored checkpoint; ``after_seq`` is the ``seq`` of the record it names."""

    node: str
    node_seq: int
    after_seq: int
    line: str


def snapshot(conn: sa.Connection) -> None:
    """Read the following queries from one snapshot where the engine needs asking.

    PostgreSQL nodes commit independently: in one REPEATABLE READ snapshot every node's
    chain is a committed prefix, so a one-shot export always verifies. SQLite reads inside
    one transaction see one snapshot already. Call before the connection's first query.
    """
    if conn.dialect.name == "postgresql" and not conn.in_transaction():
        conn.execution_options(isolation_level="REPEATABLE READ")


def records_between(
    conn: sa.Connection, after: int, until: int | None, limit: int
) -> list[RecordRow]:
    """Records with ``after < seq <= until`` (no upper bound when None), by seq."""
    query = sa.select(audit_records).where(audit_records.c.seq > after)
    if until is not None:
        query = query.where(audit_records.c.seq <= until)
    rows = conn.execute(query.order_by(audit_records.c.seq).limit(limit)).all()
    return [RecordRow(int(r.seq), r.node, int(r.node_seq), r.key, r.hash, r.line) for r in rows]


def checkpoints_between(
    conn: sa.Connection, after: tuple[int, str, int], until: int | None, since: int, limit: int
) -> list[CheckpointRow]:
    """Checkpoints in export order (after_seq, node, node_seq) strictly after ``after``.

    Only those with ``since < after_seq <= until`` (no upper bound when None).
    """
    cols = audit_checkpoints.c
    query = sa.select(audit_checkpoints).where(
        sa.tuple_(cols.after_seq, cols.node, cols.node_seq) > sa.tuple_(*after),
        cols.after_seq > since,
    )
    if until is not None:
        query = query.where(cols.after_seq <= until)
    rows = conn.execute(
        query.order_by(cols.after_seq, cols.node, cols.node_seq).limit(limit)
    ).all()
    return [CheckpointRow(r.node, int(r.node_seq), int(r.after_seq), r.line) for r in rows]


def checkpoint_heads(conn: sa.Connection, *, until: int | None = None) -> dict[str, int]:
    """Per node, the highest checkpoint ``node_seq`` (with ``after_seq <= until`` if given)."""
    query = sa.select(audit_checkpoints.c.node, sa.func.max(audit_checkpoints.c.node_seq))
    if until is not None:
        query = query.where(audit_checkpoints.c.after_seq <= until)
    rows = conn.execute(query.group_by(audit_checkpoints.c.node)).all()
    return {str(node): int(top) for node, top in rows}


def checkpoints_after(conn: sa.Connection, node: str, node_seq: int) -> list[CheckpointRow]:
    """The node's checkpoints with a ``node_seq`` above ``node_seq``, in order."""
    rows = conn.execute(
        sa.select(audit_checkpoints)
        .where(audit_checkpoints.c.node == node, audit_checkpoints.c.node_seq > node_seq)
        .order_by(audit_checkpoints.c.node_seq)
    ).all()
    return [CheckpointRow(r.node, int(r.node_seq), int(r.after_seq), r.line) for r in rows]


def node_first_node_seqs(conn: sa.Connection) -> dict[str, int]:
    """Per node, the lowest ``node_seq`` still stored (above 1 after an archive)."""
    rows = conn.execute(
        sa.select(audit_records.c.node, sa.func.min(audit_records.c.node_seq)).group_by(
            audit_records.c.node
        )
    ).all()
    return {str(node): int(low) for node, low in rows}


def checkpoint_line(conn: sa.Connection, node: str, node_seq: int) -> str | None:
    """The stored line of one checkpoint, or None."""
    row = conn.execute(
        sa.select(audit_checkpoints.c.line).where(
            audit_checkpoints.c.node == node, audit_checkpoints.c.node_seq == node_seq
        )
    ).first()
    return None if row is None else str(row.line)


def checkpoint_keys(conn: sa.Connection, until: int) -> set[tuple[str, int]]:
    """(node, node_seq) of every checkpoint naming a record with ``seq <= until``."""
    rows = conn.execute(
        sa.select(audit_checkpoints.c.node, audit_checkpoints.c.node_seq).where(
            audit_checkpoints.c.after_seq <= until
        )
    ).all()
    return {(str(r.node), int(r.node_seq)) for r in rows}


def max_record_seq(conn: sa.Connection) -> int:
    """The highest stored ``seq`` (0 when empty)."""
    value = conn.execute(sa.select(sa.func.max(audit_records.c.seq))).scalar()
    return int(value or 0)


def node_last_seqs(conn: sa.Connection) -> dict[str, int]:
    """Per node, the ``seq`` of its last stored record."""
    rows = conn.execute(
        sa.select(audit_records.c.node, sa.func.max(audit_records.c.seq)).group_by(
            audit_records.c.node
        )
    ).all()
    return {str(node): int(top) for node, top in rows}


def record_positions(
    conn: sa.Connection, until: int, *, batch: int = 5000
) -> Iterator[tuple[int, str, int]]:
    """(seq, node, node_seq) of every record with ``seq <= until``, by seq, in pages."""
    position = 0
    while True:
        rows = conn.execute(
            sa.select(audit_records.c.seq, audit_records.c.node, audit_records.c.node_seq)
            .where(audit_records.c.seq > position, audit_records.c.seq <= until)
            .order_by(audit_records.c.seq)
            .limit(batch)
        ).all()
        if not rows:
            return
        for row in rows:
            yield int(row.seq), str(row.node), int(row.node_seq)
        position = int(rows[-1].seq)


def delete_through(
    conn: sa.Connection, through_seq: int, keep: Collection[tuple[str, int]]
) -> tuple[int, int]:
    """Delete records with ``seq <= through_seq`` and their checkpoints, except ``keep``.

    ``keep`` names the checkpoints (node, node_seq) that stay as anchors of the remaining
    chains. Returns (records deleted, checkpoints deleted).
    """
    records = conn.execute(audit_records.delete().where(audit_records.c.seq <= through_seq))
    condition = audit_checkpoints.c.after_seq <= through_seq
    for node, node_seq in keep:
        condition = condition & sa.not_(
            (audit_checkpoints.c.node == node) & (audit_checkpoints.c.node_seq == node_seq)
        )
    checkpoints = conn.execute(audit_checkpoints.delete().where(condition))
    return int(records.rowcount), int(checkpoints.rowcount)
