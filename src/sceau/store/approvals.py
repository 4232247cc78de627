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
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from sceau.core.canonical import canonical_json
from sceau.core.rowseal import SealedFields, SealedKind
from sceau.store.rows import Rows
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
class ApprovalRow(SealedFields):
    """One request for a gated action, as stored."""

    SEAL_KIND = SealedKind.APPROVAL
    SEAL_ID = ("approval_id",)

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


_REQUESTS = Rows(approvals, ApprovalRow, what="request")


def insert_approval(conn: sa.Connection, row: ApprovalRow) -> None:
    _REQUESTS.insert(conn, row)


def get_approval(conn: sa.Connection, approval_id: str, *,
                 for_update: bool = False) -> ApprovalRow | None:
    """One request; ``for_update`` locks it until the decision commits (PostgreSQL: two
    admins deciding at once on two nodes wait for each other; SQLite has one writer)."""
    return _REQUESTS.get(conn, approval_id, for_update=for_update)


def list_approvals(conn: sa.Connection, *, status: str | None = None,
                   limit: int = 100) -> list[ApprovalRow]:
    """The newest requests first, optionally of one stored status."""
    where = [] if status is None else [approvals.c.status == status]
    order = [approvals.c.requested_at.desc(), approvals.c.approval_id]
    return _REQUESTS.where(conn, *where, order_by=order, limit=limit)


def save_approval(conn: sa.Connection, before: ApprovalRow, after: ApprovalRow) -> None:
    """Write ``after`` over ``before``; :class:`ConcurrentChange` if the row moved since
    (two admins deciding the same request at once: one of them is refused)."""
    _REQUESTS.save(conn, before, after)
