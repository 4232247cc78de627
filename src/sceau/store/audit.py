"""The audit trail's tables: records (``audit_records``) and checkpoints (``audit_checkpoints``).

The writer (``writer.py``) appends records and checkpoints and reads its chain head here;
exports, verification and archives (``sceau.auditlog``) and the console read them. Two
ways to read the trail in order:

- :func:`iter_audit_lines` places each checkpoint after the record it names, so a
  checkpoint whose record is gone is left out: what a verifier of a live trail reads;
- :func:`records_between` and :func:`checkpoints_between` return *every* row, including a
  checkpoint whose record is gone: exactly the evidence a verifier of a cut trail needs.

Every function takes a live connection and leaves transactions to the caller.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from sceau.store import driver
from sceau.store.schema import audit_checkpoints, audit_records

__all__ = [
    "CheckpointRow",
    "RecordRow",
    "chain_head",
    "checkpoint_head",
    "checkpoint_heads",
    "checkpoint_keys",
    "checkpoint_line",
    "checkpoints_after",
    "checkpoints_between",
    "delete_through",
    "insert_audit_records",
    "insert_checkpoint",
    "iter_audit_lines",
    "last_checkpoint",
    "newest_audit_lines",
    "max_seq",
    "next_seqs",
    "node_first_node_seqs",
    "node_last_seqs",
    "record_positions",
    "records_between",
    "snapshot",
]

_RECORD_COLUMNS = ("seq", "node", "node_seq", "key", "hash", "line")
_INSERT_RECORD = driver.Statement(
    "insert_audit", driver.insert_text("audit_records", _RECORD_COLUMNS)
)
_INSERT_CHECKPOINT = driver.Statement(
    "insert_checkpoint",
    driver.insert_text("audit_checkpoints", ("node", "node_seq", "after_seq", "line")),
)
_NEXT_SEQS = driver.Statement(
    "next_seqs", "SELECT nextval('audit_seq') FROM generate_series(1, :n)"
)
_MAX_SEQ = driver.Statement("max_seq", "SELECT COALESCE(MAX(seq), 0) FROM audit_records")

_records = audit_records.c
_checkpoints = audit_checkpoints.c


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

    On PostgreSQL, several nodes draw ``seq`` from one sequence and commit independently,
    so a lower ``seq`` can become visible after a higher one; in one REPEATABLE READ
    snapshot every node's chain is a committed prefix, so a one-shot export always
    verifies. SQLite reads inside one transaction see one snapshot already. Call before
    the connection's first query (without effect once a transaction is open).
    """
    if conn.dialect.name == "postgresql" and not conn.in_transaction():
        conn.execution_options(isolation_level="REPEATABLE READ")


# --- the writer's side ---------------------------------------------------------------------------


def max_seq(conn: sa.Connection) -> int:
    """The highest stored ``seq`` (0 when empty)."""
    return int(driver.run(conn, _MAX_SEQ, {}).scalar_one())


def next_seqs(conn: sa.Connection, count: int, last: int) -> list[int]:
    """``count`` fresh global sequence numbers.

    PostgreSQL draws them from a sequence (unique across nodes, gaps allowed). SQLite has one
    writer at a time (BEGIN IMMEDIATE), so the next numbers follow the current maximum.
    """
    if conn.dialect.name == "postgresql":
        rows = driver.run(conn, _NEXT_SEQS, {"n": count}).rows
        # Sorted: the records of a batch are chained in this order and seq must increase.
        return sorted(int(r[0]) for r in rows)
    start = max(max_seq(conn), last)
    return list(range(start + 1, start + 1 + count))


def insert_audit_records(conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> None:
    driver.run_many(conn, _INSERT_RECORD, rows)


def insert_audit_records_later(
    rows: Sequence[dict[str, Any]],
) -> tuple[driver.Statement, Sequence[dict[str, Any]]]:
    """The executemany :func:`insert_audit_records` runs, for the caller to run later."""
    return _INSERT_RECORD, rows


def insert_checkpoint_later(
    node: str, node_seq: int, after_seq: int, line: str
) -> tuple[driver.Statement, Sequence[dict[str, Any]]]:
    """The insert :func:`insert_checkpoint` runs, for the caller to run later."""
    return _INSERT_CHECKPOINT, [
        {"node": node, "node_seq": node_seq, "after_seq": after_seq, "line": line}
    ]


def insert_checkpoint(
    conn: sa.Connection, node: str, node_seq: int, after_seq: int, line: str
) -> None:
    conn.execute(
        audit_checkpoints.insert().values(
            node=node, node_seq=node_seq, after_seq=after_seq, line=line
        )
    )


def chain_head(conn: sa.Connection, node: str) -> tuple[int, str, int] | None:
    """(node_seq, hash, seq) of the node's last record, or None."""
    row = conn.execute(
        sa.select(_records.node_seq, _records.hash, _records.seq)
        .where(_records.node == node)
        .order_by(_records.node_seq.desc())
        .limit(1)
    ).first()
    return (int(row.node_seq), row.hash, int(row.seq)) if row is not None else None


def checkpoint_head(conn: sa.Connection, node: str) -> tuple[int, str] | None:
    """(node_seq, hash) of the node's newest checkpoint, or None."""
    row = conn.execute(
        sa.select(_checkpoints.node_seq, _checkpoints.line)
        .where(_checkpoints.node == node)
        .order_by(_checkpoints.node_seq.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    return int(row.node_seq), str(json.loads(row.line)["hash"])


def last_checkpoint(conn: sa.Connection, node: str) -> int:
    """The ``node_seq`` the node's newest checkpoint covers (0 without one)."""
    value = conn.execute(
        sa.select(sa.func.max(_checkpoints.node_seq)).where(_checkpoints.node == node)
    ).scalar()
    return int(value or 0)


# --- reading the trail ---------------------------------------------------------------------------


def iter_audit_lines(
    conn: sa.Connection, *, since: int = 0, until: int | None = None, batch: int = 2000
) -> Iterator[tuple[int, str, str]]:
    """(seq, kind, line) in export order: records by seq, each checkpoint after its record.

    When the caller has not opened a transaction yet, the pages are read from one snapshot
    (:func:`snapshot`), so a full export always verifies.
    """
    snapshot(conn)
    position = since
    while True:
        query = sa.select(_records.seq, _records.line).where(_records.seq > position)
        if until is not None:
            query = query.where(_records.seq <= until)
        rows = conn.execute(query.order_by(_records.seq).limit(batch)).all()
        if not rows:
            return
        low, high = rows[0].seq, rows[-1].seq
        cps: dict[int, list[str]] = {}
        for cp in conn.execute(
            sa.select(_checkpoints.after_seq, _checkpoints.line)
            .where(_checkpoints.after_seq >= low, _checkpoints.after_seq <= high)
            .order_by(_checkpoints.after_seq, _checkpoints.node_seq)
        ):
            cps.setdefault(int(cp.after_seq), []).append(cp.line)
        for row in rows:
            yield int(row.seq), "record", row.line
            for line in cps.get(int(row.seq), []):
                yield int(row.seq), "checkpoint", line
        position = int(high)


def newest_audit_lines(
    conn: sa.Connection, *, before: int | None, limit: int, key: str | None = None
) -> list[tuple[int, str]]:
    """(seq, line) of the records below ``before`` (all when None), newest first; only
    those naming ``key`` when given (a key's accesses)."""
    query = sa.select(_records.seq, _records.line)
    if key is not None:
        query = query.where(_records.key == key)
    if before is not None:
        query = query.where(_records.seq < before)
    rows = conn.execute(query.order_by(_records.seq.desc()).limit(limit)).all()
    return [(int(r.seq), r.line) for r in rows]


def records_between(
    conn: sa.Connection, after: int, until: int | None, limit: int
) -> list[RecordRow]:
    """Records with ``after < seq <= until`` (no upper bound when None), by seq."""
    query = sa.select(audit_records).where(_records.seq > after)
    if until is not None:
        query = query.where(_records.seq <= until)
    rows = conn.execute(query.order_by(_records.seq).limit(limit)).all()
    return [RecordRow(int(r.seq), r.node, int(r.node_seq), r.key, r.hash, r.line) for r in rows]


def _checkpoint(row: Any) -> CheckpointRow:
    return CheckpointRow(row.node, int(row.node_seq), int(row.after_seq), row.line)


def checkpoints_between(
    conn: sa.Connection, after: tuple[int, str, int], until: int | None, since: int, limit: int
) -> list[CheckpointRow]:
    """Checkpoints in export order (after_seq, node, node_seq) strictly after ``after``.

    Only those with ``since < after_seq <= until`` (no upper bound when None).
    """
    query = sa.select(audit_checkpoints).where(
        sa.tuple_(_checkpoints.after_seq, _checkpoints.node, _checkpoints.node_seq)
        > sa.tuple_(*after),
        _checkpoints.after_seq > since,
    )
    if until is not None:
        query = query.where(_checkpoints.after_seq <= until)
    order = (_checkpoints.after_seq, _checkpoints.node, _checkpoints.node_seq)
    return [_checkpoint(r) for r in conn.execute(query.order_by(*order).limit(limit))]


def checkpoints_after(conn: sa.Connection, node: str, node_seq: int) -> list[CheckpointRow]:
    """The node's checkpoints with a ``node_seq`` above ``node_seq``, in order."""
    rows = conn.execute(
        sa.select(audit_checkpoints)
        .where(_checkpoints.node == node, _checkpoints.node_seq > node_seq)
        .order_by(_checkpoints.node_seq)
    )
    return [_checkpoint(r) for r in rows]


def checkpoint_line(conn: sa.Connection, node: str, node_seq: int) -> str | None:
    """The stored line of one checkpoint, or None."""
    line = conn.execute(
        sa.select(_checkpoints.line).where(
            _checkpoints.node == node, _checkpoints.node_seq == node_seq
        )
    ).scalar()
    return None if line is None else str(line)


# --- per node ------------------------------------------------------------------------------------


def _per_node(conn: sa.Connection, table: sa.Table, value: Any, *where: Any) -> dict[str, int]:
    """{node: value} over the rows of ``table`` (records or checkpoints)."""
    node = table.c.node
    rows = conn.execute(sa.select(node, value).where(*where).group_by(node)).all()
    return {str(name): int(found) for name, found in rows}


def checkpoint_heads(conn: sa.Connection, *, until: int | None = None) -> dict[str, int]:
    """Per node, the highest checkpoint ``node_seq`` (with ``after_seq <= until`` if given)."""
    where = [] if until is None else [_checkpoints.after_seq <= until]
    return _per_node(conn, audit_checkpoints, sa.func.max(_checkpoints.node_seq), *where)


def node_first_node_seqs(conn: sa.Connection) -> dict[str, int]:
    """Per node, the lowest ``node_seq`` still stored (above 1 after an archive)."""
    return _per_node(conn, audit_records, sa.func.min(_records.node_seq))


def node_last_seqs(conn: sa.Connection) -> dict[str, int]:
    """Per node, the ``seq`` of its last stored record."""
    return _per_node(conn, audit_records, sa.func.max(_records.seq))


# --- archiving -----------------------------------------------------------------------------------


def checkpoint_keys(conn: sa.Connection, until: int) -> set[tuple[str, int]]:
    """(node, node_seq) of every checkpoint naming a record with ``seq <= until``."""
    rows = conn.execute(
        sa.select(_checkpoints.node, _checkpoints.node_seq).where(_checkpoints.after_seq <= until)
    ).all()
    return {(str(r.node), int(r.node_seq)) for r in rows}


def record_positions(
    conn: sa.Connection, until: int, *, batch: int = 5000
) -> Iterator[tuple[int, str, int]]:
    """(seq, node, node_seq) of every record with ``seq <= until``, by seq, in pages."""
    position = 0
    while True:
        rows = conn.execute(
            sa.select(_records.seq, _records.node, _records.node_seq)
            .where(_records.seq > position, _records.seq <= until)
            .order_by(_records.seq)
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
    records = conn.execute(audit_records.delete().where(_records.seq <= through_seq))
    condition = _checkpoints.after_seq <= through_seq
    for node, node_seq in keep:
        condition = condition & sa.not_(
            (_checkpoints.node == node) & (_checkpoints.node_seq == node_seq)
        )
    checkpoints = conn.execute(audit_checkpoints.delete().where(condition))
    return int(records.rowcount), int(checkpoints.rowcount)
