"""``sceau audit verify``: the core verifier over a store or an export file, with anchors.

:func:`sceau.core.verify.verify_lines` does the cryptographic work. This module feeds it a
stream and handles what only a stream has:

- **Anchors.** Checkpoints that come before any record of the stream (an export of a store
  after an archive starts with them) are taken as the starting heads of their nodes, each
  signature checked. An anchor is *confirmed* when a verified ``AUDIT_ARCHIVE`` record of
  the stream lists it (the archive command writes one, in the same transaction as the
  deletion) or when the caller passes it explicitly (``--start-checkpoint``); otherwise it
  is reported as ``unconfirmed_anchor``, because cutting the head of a log and keeping one
  checkpoint would look the same.
- **Store rows.** Verifying a store also checks that every row's indexed columns (``seq``,
  ``node``, ``node_seq``, ``key``, ``hash``) say what its signed line says: ``list-accesses``
  searches by ``key``, so an edited column would hide a record from it (``row_mismatch``).

Line numbers of a store are those of the export ``sceau audit export`` would write.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sceau.auditlog import store
from sceau.auditlog.export import StreamItem, iter_stream
from sceau.auditlog.store import RecordRow
from sceau.core.audit import CHECKPOINT_TYPE, RECORD_TYPE, ChainHead
from sceau.core.verify import (
    ProblemsMixin,
    VerifyProblem,
    VerifyReport,
    checkpoint_anchor,
    verify_lines,
)
from sceau.errors import IntegrityFailure, InvalidRequest
from sceau.store.db import Engines
from sceau.vocab import Action, Outcome

__all__ = [
    "ROW_MISMATCH",
    "UNCONFIRMED_ANCHOR",
    "Anchor",
    "Verification",
    "read_jwks",
    "read_start_checkpoints",
    "verify_file",
    "verify_store",
    "verify_stream",
]

UNCONFIRMED_ANCHOR = "unconfirmed_anchor"
ROW_MISMATCH = "row_mismatch"
_ARCHIVE_MARK = '"' + Action.AUDIT_ARCHIVE.value + '"'


@dataclass(frozen=True)
class Anchor:
    """Where a node's chain starts in this stream: a signed checkpoint's head."""

    head: ChainHead
    line: int | None  # its line in the stream, None when given by the caller
    confirmed_by: int | None  # seq of the AUDIT_ARCHIVE record listing it, if any
    given: bool = False

    def to_json(self) -> dict[str, Any]:
        """Plain JSON for ``--json`` output."""
        return {
            "node": self.head.node, "node_seq": self.head.node_seq, "hash": self.head.hash,
            "line": self.line, "confirmed_by_seq": self.confirmed_by, "given": self.given,
        }  # fmt: skip


@dataclass(frozen=True)
class Verification(ProblemsMixin):
    """A verified stream: the core report, the anchors used, and every problem found."""

    report: VerifyReport
    anchors: list[Anchor]
    problems: list[VerifyProblem] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON for ``--json`` output."""
        def problem(p: VerifyProblem) -> dict[str, Any]:
            return {"line": p.line, "seq": p.seq, "node": p.node, "kind": p.kind,
                    "message": p.message}

        return {
            "ok": self.ok,
            "records": self.report.records,
            "checkpoints": self.report.checkpoints,
            "nodes": dict(sorted(self.report.nodes.items())),
            "anchors": [a.to_json() for a in self.anchors],
            "first_problem": problem(self.problems[0]) if self.problems else None,
            "problems": [problem(p) for p in self.problems],
        }


def read_jwks(path: Path) -> dict[str, Any]:
    """A JWKS file, as the verifier's trust input."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"jwks: cannot read {path}: {type(exc).__name__}") from None
    if not isinstance(value, dict):
        raise InvalidRequest("jwks: not a JSON object")
    return value


def read_start_checkpoints(path: Path, jwks: Mapping[str, Any]) -> dict[str, ChainHead]:
    """Start heads from a file of checkpoint lines (each signature checked)."""
    heads: dict[str, ChainHead] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        what = type(exc).__name__
        raise InvalidRequest(f"start checkpoint: cannot read {path}: {what}") from None
    for raw in text.splitlines():
        if raw.strip():
            head = checkpoint_anchor(raw, jwks)
            if head.node in heads and heads[head.node] != head:
                raise InvalidRequest(f"start checkpoint: two anchors for node {head.node}")
            heads[head.node] = head
    if not heads:
        raise InvalidRequest(f"start checkpoint: no checkpoint line in {path}")
    return heads


def _type_of(line: str) -> str | None:
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj.get("type") if isinstance(obj, dict) else None


class _Stream:
    """Feeds lines to the core verifier, lifting leading anchors and noting archive records."""

    def __init__(
        self, lines: Iterable[str], jwks: Mapping[str, Any], given: Mapping[str, ChainHead]
    ) -> None:
        self.lines = lines
        self.jwks = jwks
        self.given = dict(given)
        self.leading: dict[str, tuple[int, ChainHead]] = {}
        self.archive_records: list[tuple[int, dict[str, Any]]] = []

    def __iter__(self) -> Iterator[str]:
        in_head = True
        for number, raw in enumerate(self.lines, start=1):
            text = raw.rstrip("\r\n")
            if in_head and text.strip():
                kind = _type_of(text)
                if kind == CHECKPOINT_TYPE and self._lift(number, text):
                    yield ""  # keeps the line numbers of everything after it
                    continue
                in_head = kind == CHECKPOINT_TYPE
            if _ARCHIVE_MARK in text:
                self._note_archive(number, text)
            yield text

    def _lift(self, number: int, text: str) -> bool:
        """Take a leading checkpoint as its node's anchor; False leaves it to the verifier."""
        try:
            head = checkpoint_anchor(text, self.jwks)
        except (IntegrityFailure, InvalidRequest):
            return False  # the verifier reports what is wrong with it
        if head.node in self.given or head.node in self.leading:
            return False  # compared with the anchor already in place
        self.leading[head.node] = (number, head)
        return True

    def _note_archive(self, number: int, text: str) -> None:
        try:
            obj = json.loads(text)
        except ValueError:
            return
        if (
            isinstance(obj, dict)
            and obj.get("type") == RECORD_TYPE
            and obj.get("action") == Action.AUDIT_ARCHIVE.value
            and obj.get("outcome") == Outcome.GRANTED.value
        ):
            self.archive_records.append((number, obj))


def _listed(record: Mapping[str, Any], head: ChainHead) -> bool:
    details = record.get("details")
    anchors = details.get("anchors") if isinstance(details, dict) else None
    entry = anchors.get(head.node) if isinstance(anchors, dict) else None
    return (
        isinstance(entry, dict)
        and entry.get("node_seq") == head.node_seq
        and entry.get("hash") == head.hash
    )


def _problem_order(p: VerifyProblem) -> tuple[int, int]:
    return (p.line if p.line is not None else 1 << 62, 0)


def verify_stream(
    lines: Iterable[str],
    jwks: Mapping[str, Any],
    *,
    start: Mapping[str, ChainHead] | None = None,
    extra_problems: Sequence[VerifyProblem] = (),
) -> Verification:
    """Verify export lines; leading checkpoints become (to be confirmed) anchors.

    ``start`` gives trusted anchors (from ``--start-checkpoint``). Raises
    :class:`InvalidRequest` only for a bad JWKS.
    """
    given = dict(start or {})
    stream = _Stream(lines, jwks, given)

    # The core verifier takes its start heads up front, but leading anchors are only known
    # once read: a lazy mapping would be fragile, so read the head of the stream first.
    iterator = iter(stream)
    buffered: list[str] = []
    for text in iterator:
        buffered.append(text)
        if text and _type_of(text) != CHECKPOINT_TYPE:
            break
    heads = {**given, **{node: head for node, (_n, head) in stream.leading.items()}}

    def replay() -> Iterator[str]:
        yield from buffered
        yield from iterator

    report = verify_lines(replay(), jwks, start=heads)
    bad_lines = {p.line for p in report.problems}
    confirmations = [
        (int(rec["seq"]), rec) for number, rec in stream.archive_records
        if number not in bad_lines and isinstance(rec.get("seq"), int)
    ]  # fmt: skip
    anchors: list[Anchor] = [Anchor(head, None, None, given=True) for head in given.values()]
    problems = list(report.problems) + list(extra_problems)
    for node, (number, head) in sorted(stream.leading.items()):
        confirmed = next((seq for seq, rec in confirmations if _listed(rec, head)), None)
        anchors.append(Anchor(head, number, confirmed))
        if confirmed is None:
            problems.append(VerifyProblem(
                number, None, node, UNCONFIRMED_ANCHOR,
                f"the stream starts at a checkpoint (node_seq {head.node_seq}) that no "
                "verified AUDIT_ARCHIVE record lists; pass it with --start-checkpoint if "
                "you trust it",
            ))  # fmt: skip
    problems.sort(key=_problem_order)
    return Verification(report=report, anchors=anchors, problems=problems)


def verify_file(
    path: Path, jwks: Mapping[str, Any], *, start: Mapping[str, ChainHead] | None = None
) -> Verification:
    """Verify an export file (JSON Lines)."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            return verify_stream(handle, jwks, start=start)
    except OSError as exc:
        raise InvalidRequest(f"export: cannot read {path}: {type(exc).__name__}") from None
    except UnicodeDecodeError:
        raise IntegrityFailure(f"export: {path} is not UTF-8") from None


def _row_problem(number: int, row: RecordRow) -> VerifyProblem | None:
    """The row's columns must repeat its line's members (they are indexes of it)."""
    try:
        obj = json.loads(row.line)
    except ValueError:
        return None  # the verifier reports the line itself
    if not isinstance(obj, dict):
        return None
    columns = {"seq": row.seq, "node": row.node, "node_seq": row.node_seq, "key": row.key,
               "hash": row.hash}
    differing = sorted(name for name, value in columns.items() if obj.get(name) != value)
    if not differing:
        return None
    return VerifyProblem(
        number, row.seq, row.node, ROW_MISMATCH,
        f"stored column(s) {', '.join(differing)} differ from the signed line",
    )  # fmt: skip


def verify_store(
    engines: Engines,
    jwks: Mapping[str, Any],
    *,
    start: Mapping[str, ChainHead] | None = None,
    until: int | None = None,
) -> Verification:
    """Verify the store as its JSON Lines export, plus its rows' index columns."""
    row_problems: list[VerifyProblem] = []

    def lines(items: Iterator[StreamItem]) -> Iterator[str]:
        for number, item in enumerate(items, start=1):
            if isinstance(item, RecordRow):
                found = _row_problem(number, item)
                if found is not None:
                    row_problems.append(found)
            yield item.line

    with engines.read.connect() as conn:
        store.snapshot(conn)
        with conn.begin():
            result = verify_stream(lines(iter_stream(conn, until=until)), jwks, start=start)
    if not row_problems:
        return result
    problems = sorted(result.problems + row_problems, key=_problem_order)
    return Verification(report=result.report, anchors=result.anchors, problems=problems)
