"""Retention: move old audit records to an archive file, anchored by signed checkpoints.

``archive_audit(session, before=SEQ, output=FILE)``:

1. verifies the whole store first (never archive, and so destroy, evidence of tampering);
2. picks the boundary ``S``: the highest ``seq < SEQ`` such that, for every node, its last
   record with ``seq <= S`` is named by a signed checkpoint. The archive is then a prefix of
   the export in ``seq`` order (so *archive + rest* is one valid stream) and every cut chain
   ends on a signed head (so *the rest* alone verifies from those heads);
3. writes every record and checkpoint with ``seq <= S`` to FILE (exclusive create, fsync,
   atomic rename), then verifies FILE;
4. in one transaction of this admin session's writer: deletes those rows, except the
   boundary checkpoints, which stay in the store as the anchors its export starts with,
   and writes an ``AUDIT_ARCHIVE`` record whose ``details.anchors`` lists every anchor, so
   that a verifier can tell an archive boundary from a cut head.

A node's last record is never archived, except for the node writing the archive record
(its chain goes on in memory): a writer that restarts continues its chain from the last
record the store holds (``Writer.open``), and would otherwise start again at ``node_seq``
1. Until the writer can continue from an anchor, a node that wrote nothing after ``SEQ``
therefore holds the boundary below its last record.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from sceau.admin import CLI_APP, AdminSession
from sceau.auditlog.export import ExportFormat, iter_export, write_atomic
from sceau.auditlog.verify import Verification, verify_file, verify_store
from sceau.core.audit import ChainHead
from sceau.errors import IntegrityFailure, InvalidRequest
from sceau.store import audit
from sceau.store.writer import AuditContext, Job, Tx
from sceau.vocab import Action

__all__ = ["ArchivePlan", "ArchiveResult", "archive_audit", "plan_archive"]


@dataclass(frozen=True)
class ArchivePlan:
    """What an archive will move: records with ``seq <= through_seq``; anchors kept."""

    before: int
    through_seq: int
    records: int
    keep: dict[str, int]  # node -> node_seq of the checkpoint kept as its anchor
    limited_by: str | None  # a node whose last record held the boundary down, if any


@dataclass(frozen=True)
class ArchiveResult:
    """A completed archive."""

    path: Path
    through_seq: int
    records: int
    checkpoints_deleted: int
    anchors: dict[str, ChainHead]
    sha256: str
    record_seq: int  # seq of the AUDIT_ARCHIVE record

    def to_json(self) -> dict[str, Any]:
        """Plain JSON for ``--json`` output."""
        return {
            "output": str(self.path),
            "through_seq": self.through_seq,
            "records": self.records,
            "checkpoints_deleted": self.checkpoints_deleted,
            "anchors": {n: {"node_seq": h.node_seq, "hash": h.hash}
                        for n, h in sorted(self.anchors.items())},
            "sha256": self.sha256,
            "audit_seq": self.record_seq,
        }


def plan_archive(conn: sa.Connection, before: int, writer_node: str) -> ArchivePlan | None:
    """The boundary for archiving records with ``seq < before``, or None if there is none."""
    if type(before) is not int or before < 2:
        raise InvalidRequest("before: a seq greater than 1")
    bound = before - 1
    limited_by: str | None = None
    for node, last in audit.node_last_seqs(conn).items():
        if node != writer_node and last - 1 < bound:
            bound, limited_by = last - 1, node
    if bound < 1:
        return None
    checkpointed = audit.checkpoint_keys(conn, bound)
    dirty: set[str] = set()
    last_of: dict[str, int] = {}
    best: tuple[int, int, dict[str, int]] | None = None
    count = 0
    for seq, node, node_seq in audit.record_positions(conn, bound):
        count += 1
        last_of[node] = node_seq
        if (node, node_seq) in checkpointed:
            dirty.discard(node)
        else:
            dirty.add(node)
        if not dirty:
            best = (seq, count, dict(last_of))
    if best is None:
        return None
    through, records, touched = best
    keep = dict(touched)
    for node, first in audit.node_first_node_seqs(conn).items():
        if node not in keep and first > 1:
            keep[node] = first - 1  # an earlier archive's anchor, still in use
    return ArchivePlan(before, through, records, keep, limited_by)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_archive_file(found: Verification, plan: ArchivePlan) -> None:
    if not found.ok:
        raise IntegrityFailure(f"the archive file does not verify: {found.first_problem}")
    if found.report.records != plan.records:
        raise InvalidRequest(
            f"the store changed while archiving ({found.report.records} records written, "
            f"{plan.records} planned); run the archive again"
        )


def archive_audit(session: AdminSession, *, before: int, output: Path) -> ArchiveResult:
    """Archive the records with ``seq < before`` to ``output`` and remove them (see module)."""
    engines = session.engines
    jwks = session.keystore.public_jwks()
    current = verify_store(engines, jwks, sealer=session.keystore)
    if not current.ok:
        raise IntegrityFailure(
            f"the store does not verify, nothing archived: {current.first_problem}"
        )
    with engines.read.connect() as conn:
        audit.snapshot(conn)
        with conn.begin():
            plan = plan_archive(conn, before, session.writer.node)
    if plan is None:
        raise InvalidRequest(
            f"nothing to archive before seq {before}: no boundary where every node's last "
            "record is covered by a signed checkpoint"
        )
    start = {a.head.node: a.head for a in current.anchors}
    write_atomic(output, iter_export(engines, ExportFormat.JSONL, until=plan.through_seq),
                 exclusive=True)
    _check_archive_file(verify_file(output, jwks, start=start), plan)
    sha256 = _file_sha256(output)
    anchors: dict[str, ChainHead] = {}

    def remove(tx: Tx) -> int:
        for node, node_seq in plan.keep.items():
            line = audit.checkpoint_line(tx.conn, node, node_seq)
            if line is None:
                raise InvalidRequest(f"anchor checkpoint {node}/{node_seq} vanished; run again")
            anchors[node] = ChainHead(node=node, node_seq=node_seq, hash=json.loads(line)["hash"])
        records, checkpoints = audit.delete_through(
            tx.conn, plan.through_seq, set(plan.keep.items())
        )
        if records != plan.records:
            raise InvalidRequest(
                f"the store changed while archiving ({records} records to delete, "
                f"{plan.records} archived); nothing removed, run the archive again"
            )
        tx.ctx.details = {
            "before": plan.before,
            "through_seq": plan.through_seq,
            "records": records,
            "checkpoints": checkpoints,
            "file": output.name,
            "sha256": sha256,
            "anchors": {n: {"node_seq": h.node_seq, "hash": h.hash}
                        for n, h in sorted(anchors.items())},
        }
        return checkpoints

    ctx = AuditContext(action=Action.AUDIT_ARCHIVE, app=CLI_APP, user=session.actor, ip=None,
                       req=None)
    outcome = session.writer.run_now(Job(fn=remove, ctx=ctx))
    return ArchiveResult(
        path=output,
        through_seq=plan.through_seq,
        records=plan.records,
        checkpoints_deleted=int(outcome.value),
        anchors=anchors,
        sha256=sha256,
        record_seq=outcome.records[0][0],
    )
