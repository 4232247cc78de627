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
- **The node registry** (store only): every ``audit_nodes`` row's seal, a registered node
  with no record or checkpoint left (``node_removed``), a node with a trail but no valid
  row (``unregistered_node``).
- **A witness** (``--witness``, :mod:`sceau.auditlog.witness`): positions kept outside the
  store that the stream must still reach, and each node's unprotected window after them.

Line numbers of a store are those of the export ``sceau audit export`` would write.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from sceau.auditlog.export import StreamItem, iter_stream
from sceau.auditlog.witness import WitnessEvidence
from sceau.core.audit import CHECKPOINT_TYPE, RECORD_TYPE, ChainHead
from sceau.core.verify import (
    ProblemKind,
    ProblemsMixin,
    VerifyProblem,
    VerifyReport,
    WitnessIndex,
    checkpoint_anchor,
    verify_lines,
)
from sceau.errors import IntegrityFailure, InvalidRequest
from sceau.keystore.base import Keystore
from sceau.store import audit, nodes
from sceau.store.audit import RecordRow
from sceau.store.db import Engines
from sceau.vocab import Action, Outcome

__all__ = [
    "REGISTRY_SEAL",
    "ROW_MISMATCH",
    "UNCONFIRMED_ANCHOR",
    "UNREGISTERED_NODE",
    "Anchor",
    "Registry",
    "Verification",
    "read_jwks",
    "read_start_checkpoints",
    "verify_file",
    "verify_store",
    "verify_stream",
]

UNCONFIRMED_ANCHOR = "unconfirmed_anchor"
ROW_MISMATCH = "row_mismatch"
REGISTRY_SEAL = "registry_seal"  # an audit_nodes row that does not match its seal
UNREGISTERED_NODE = "unregistered_node"  # a trail whose node has no valid registry row
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
class Registry:
    """The node registry as verification found it: node -> seal verdict.

    A verdict is ``ok``, ``bad`` (the row does not match its seal) or ``unchecked`` (no
    keystore at hand: ``--jwks`` without the data dir's keystore).
    """

    nodes: dict[str, str]
    kinds: dict[str, str]
    seals_checked: bool

    def to_json(self) -> dict[str, Any]:
        """Plain JSON for ``--json`` output."""
        return {
            "seals_checked": self.seals_checked,
            "nodes": {node: {"kind": self.kinds[node], "seal": verdict}
                      for node, verdict in sorted(self.nodes.items())},
        }


@dataclass(frozen=True)
class Verification(ProblemsMixin):
    """A verified stream: the core report, the anchors used, and every problem found;
    with the witness and the registry when they were part of the check."""

    report: VerifyReport
    anchors: list[Anchor]
    problems: list[VerifyProblem] = field(default_factory=list)
    witness: WitnessEvidence | None = None
    registry: Registry | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON for ``--json`` output."""
        def problem(p: VerifyProblem) -> dict[str, Any]:
            return {"line": p.line, "seq": p.seq, "node": p.node, "kind": p.kind,
                    "message": p.message}

        witness: dict[str, Any] | None = None
        if self.witness is not None:
            windows = self.report.windows or {}
            witness = {**self.witness.to_json(),
                       "windows": {n: w.to_json() for n, w in sorted(windows.items())}}
        return {
            "ok": self.ok,
            "records": self.report.records,
            "checkpoints": self.report.checkpoints,
            "nodes": dict(sorted(self.report.nodes.items())),
            "anchors": [a.to_json() for a in self.anchors],
            "witness": witness,
            "registry": self.registry.to_json() if self.registry is not None else None,
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
    witness: WitnessEvidence | None = None,
) -> Verification:
    """Verify export lines; leading checkpoints become (to be confirmed) anchors.

    ``start`` gives trusted anchors (from ``--start-checkpoint``); ``witness`` positions
    kept outside the store (:func:`sceau.auditlog.witness.read_witness`). Raises
    :class:`InvalidRequest` only for a bad JWKS.
    """
    given = dict(start or {})
    index: WitnessIndex | None = None
    witness_problems: list[VerifyProblem] = []
    if witness is not None:
        index, conflicts = witness.index()
        witness_problems = list(witness.problems) + conflicts
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

    report = verify_lines(replay(), jwks, start=heads, witness=index)
    bad_lines = {p.line for p in report.problems}
    confirmations = [
        (int(rec["seq"]), rec) for number, rec in stream.archive_records
        if number not in bad_lines and isinstance(rec.get("seq"), int)
    ]  # fmt: skip
    anchors: list[Anchor] = [Anchor(head, None, None, given=True) for head in given.values()]
    problems = list(report.problems) + list(extra_problems) + witness_problems
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
    return Verification(report=report, anchors=anchors, problems=problems, witness=witness)


def verify_file(
    path: Path,
    jwks: Mapping[str, Any],
    *,
    start: Mapping[str, ChainHead] | None = None,
    witness: WitnessEvidence | None = None,
) -> Verification:
    """Verify an export file (JSON Lines), against a witness if one is given."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            return verify_stream(handle, jwks, start=start, witness=witness)
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


def _check_registry(
    conn: sa.Connection, sealer: Keystore | None
) -> tuple[Registry, list[VerifyProblem]]:
    """The registry against the trail of the same snapshot (see the module docstring)."""
    problems: list[VerifyProblem] = []
    verdicts: dict[str, str] = {}
    kinds: dict[str, str] = {}
    trail = nodes.trail_nodes(conn)
    for row in nodes.list_nodes(conn):
        kinds[row.node] = row.kind
        if sealer is None:
            verdicts[row.node] = "unchecked"
        else:
            try:
                sealer.verify_row(row)
            except IntegrityFailure:
                verdicts[row.node] = "bad"
                problems.append(VerifyProblem(
                    None, None, row.node, REGISTRY_SEAL,
                    "its audit_nodes row does not match its seal (written outside Sceau)",
                ))  # fmt: skip
                continue
            verdicts[row.node] = "ok"
        if row.node not in trail:
            problems.append(VerifyProblem(
                None, None, row.node, str(ProblemKind.NODE_REMOVED),
                f"node {row.node} is registered (it wrote records) but no record or "
                "checkpoint of it is left",
            ))  # fmt: skip
    for node in sorted(trail - verdicts.keys()):
        problems.append(VerifyProblem(
            None, None, node, UNREGISTERED_NODE,
            f"node {node} has records or checkpoints but no registry row",
        ))  # fmt: skip
    return Registry(verdicts, kinds, seals_checked=sealer is not None), problems


def verify_store(
    engines: Engines,
    jwks: Mapping[str, Any],
    *,
    start: Mapping[str, ChainHead] | None = None,
    until: int | None = None,
    witness: WitnessEvidence | None = None,
    registry: bool = True,
    sealer: Keystore | None = None,
) -> Verification:
    """Verify the store as its JSON Lines export, plus its rows' index columns, its node
    registry (seals checked with ``sealer``, the keystore, when given) and ``witness``."""
    row_problems: list[VerifyProblem] = []
    found: Registry | None = None

    def lines(items: Iterator[StreamItem]) -> Iterator[str]:
        for number, item in enumerate(items, start=1):
            if isinstance(item, RecordRow):
                found = _row_problem(number, item)
                if found is not None:
                    row_problems.append(found)
            yield item.line

    with engines.read.connect() as conn:
        audit.snapshot(conn)
        with conn.begin():
            result = verify_stream(lines(iter_stream(conn, until=until)), jwks, start=start,
                                   witness=witness)
            if registry and until is None:
                found, registry_problems = _check_registry(conn, sealer)
                row_problems += registry_problems
    if not row_problems and found is None:
        return result
    problems = sorted(result.problems + row_problems, key=_problem_order)
    return Verification(report=result.report, anchors=result.anchors, problems=problems,
                        witness=witness, registry=found)
