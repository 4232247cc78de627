"""Approval requests of gated console actions: sealed rows and their queries.

A request is sealed over every column a decision reads: the action and its parameters
(``payload``), who asked and when, when it expires, its status and who decided. A row
inserted or edited with SQL alone (a request "approved" in the database, parameters swapped
after the approval was given, an expiry pushed back) does not verify, and the approvals
service refuses it with ``integrity_failure`` (SECURITY-CASES 45, 46).

``payload`` is canonical JSON: ``{"params": {...}, "approvals": [{"by", "at"}, ...]}``:
the parameters of the action as requested, and the approvals given so far when the quorum
needs more than one approver.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa

from sceau.core.canonical import canonical_json
from sceau.core.rowseal import SealedKind
from sceau.store.applications import save_revision
from sceau.store.schema import approvals

__all__ = [
    "ApprovalRow",
    "encode_payload",
    "get_approval",
    "insert_approval",
    "list_approvals",
    "save_approval",
]


def encode_payload(params: Mapping[str, Any], approvals_so_far: list[dict[str, Any]]) -> str:
    """The stored ``payload`` text (canonical JSON, so its seal input is stable)."""
    return canonical_json({"params": dict(params), "approvals": approvals_so_far}).decode()


@dataclass(frozen=True)
class ApprovalRow:
    """One request for a gated action, as stored."""

    approval_id: str
    action: str
    payload: str
    summary: str
    requested_by: str
    requested_at: int
    expires_at: int
    status: str
    decided_by: str | None
    decided_at: int | None
    revision: int = 1
    seal: bytes | None = None

    @property
    def params(self) -> dict[str, Any]:
        """The action's parameters, as requested."""
        value: dict[str, Any] = json.loads(self.payload)["params"]
        return value

    @property
    def approvals(self) -> list[dict[str, Any]]:
        """The approvals given so far (``by``, ``at``), in order."""
        value: list[dict[str, Any]] = json.loads(self.payload)["approvals"]
        return value

    def seal_kind(self) -> SealedKind:
        return SealedKind.APPROVAL

    def seal_id(self) -> str:
        return self.approval_id

    def seal_fields(self) -> Mapping[str, Any]:
        return {
            "action": self.action,
            "payload": self.payload,
            "summary": self.summary,
            "requested_by": self.requested_by,
            "requested_at": self.requested_at,
            "expires_at": self.expires_at,
            "status": self.status,
            "decided_by": self.decided_by,
            "decided_at": self.decided_at,
            "revision": self.revision,
        }


def _row(row: Any) -> ApprovalRow:
    values = dict(row._mapping)
    if values["seal"] is not None:
        values["seal"] = bytes(values["seal"])
    return ApprovalRow(**values)


def insert_approval(conn: sa.Connection, row: ApprovalRow) -> None:
    conn.execute(approvals.insert().values(**asdict(row)))


def get_approval(conn: sa.Connection, approval_id: str, *,
                 for_update: bool = False) -> ApprovalRow | None:
    """One request; ``for_update`` locks it until the decision commits (PostgreSQL: two
    admins deciding at once on two nodes wait for each other; SQLite has one writer)."""
    query = sa.select(approvals).where(approvals.c.approval_id == approval_id)
    if for_update:
        query = query.with_for_update()
    row = conn.execute(query).first()
    return _row(row) if row is not None else None


def list_approvals(conn: sa.Connection, *, status: str | None = None,
                   limit: int = 100) -> list[ApprovalRow]:
    """The newest requests first, optionally of one stored status."""
    query = sa.select(approvals).order_by(approvals.c.requested_at.desc(),
                                          approvals.c.approval_id)
    if status is not None:
        query = query.where(approvals.c.status == status)
    return [_row(r) for r in conn.execute(query.limit(limit)).all()]


def save_approval(conn: sa.Connection, before: ApprovalRow, after: ApprovalRow) -> None:
    """Write ``after`` over ``before``; :class:`ConcurrentChange` if the row moved since
    (two admins deciding the same request at once: one of them is refused)."""
    values = asdict(after)
    del values["approval_id"]
    save_revision(conn, approvals, approvals.c.approval_id == before.approval_id,
                  before.revision, values, f"request {before.approval_id}")
