"""Offline verifier of an audit export (SPEC §8, §10 "Audit encoding"). Pure: no I/O.

Input: the JSON Lines of an export (records and checkpoints interleaved) and the service's
JWKS. Nothing stored in a line is trusted: every hash is recomputed from the parsed
members, every signature checked with the JWKS key named by ``kid``, every ``prev`` link and
``node_seq`` followed per node, ``seq`` checked to increase over the whole stream, and every
checkpoint matched against the record it names. A checkpoint beyond the last record of its
node means the tail was cut (``missing_tail``).

Given a *witness* (signed checkpoints or records kept outside the store: the witness file,
a syslog capture, an earlier export; see :class:`WitnessIndex`), the verifier also reports
what the stream alone cannot show: a node whose chain stops below a witnessed position
(``behind_witness``), a node the witness saw that the stream no longer has at all
(``node_removed``), and a record at a witnessed position with another hash: the chain was
rewritten from an older head (``witness_mismatch``). It then measures, per node, the
records after the last witnessed position: the window only the chain protects.

Each bad line yields one problem (the first check it fails) so that the first problem names
the first bad record rather than the damage it caused downstream; the chain then continues
from the line's own ``hash`` so one altered record is reported once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sceau.core.audit import (
    AUDIT_VERSION,
    CHECKPOINT_MEMBERS,
    CHECKPOINT_TYPE,
    RECORD_MEMBERS,
    RECORD_TYPE,
    SIGNATURE_BYTES,
    ZERO_HASH,
    AuditEncodingError,
    ChainHead,
    checkpoint_digest,
    record_hash,
)
from sceau.core.b64 import MalformedBase64, b64u_decode
from sceau.core.jwk import JwkError, jws_verify, public_key_from_jwk
from sceau.errors import IntegrityFailure, InvalidRequest
from sceau.vocab import Outcome, SigAlg

__all__ = [
    "AuditPublicKey",
    "ProblemKind",
    "VerifyProblem",
    "VerifyReport",
    "WitnessIndex",
    "WitnessPoint",
    "WitnessWindow",
    "checkpoint_anchor",
    "jwks_public_keys",
    "verify_lines",
    "witness_point",
]

AuditPublicKey = Ed25519PublicKey | ec.EllipticCurvePublicKey

_HEX64 = re.compile(r"[0-9a-f]{64}")
_TIME_MS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
_OUTCOMES = frozenset(o.value for o in Outcome)
_RECORD_KEYS = frozenset(RECORD_MEMBERS)
_CHECKPOINT_KEYS = frozenset(CHECKPOINT_MEMBERS)
_NULLABLE_TEXT = ("app", "user", "ip", "reason", "key", "req")


class ProblemKind(StrEnum):
    """What is wrong with a line of an audit export."""

    BAD_JSON = "bad_json"  # not a JSON object of the record/checkpoint shape
    BAD_HASH = "bad_hash"  # recomputed hash differs from the stored one
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KID = "unknown_kid"
    BROKEN_LINK = "broken_link"  # prev does not match, or node_seq goes back
    GAP = "gap"  # node_seq skips records of its node
    SEQ_NOT_INCREASING = "seq_not_increasing"
    MISSING_TAIL = "missing_tail"  # a checkpoint names records the stream lacks at its end
    BAD_CHECKPOINT = "bad_checkpoint"  # a checkpoint disagrees with the record it names
    DUPLICATE = "duplicate"  # the same (node, node_seq) twice
    # Against a witness (SECURITY-CASES 48):
    BEHIND_WITNESS = "behind_witness"  # the node's chain stops below a witnessed position
    NODE_REMOVED = "node_removed"  # a node the witness saw has no record or checkpoint left
    WITNESS_MISMATCH = "witness_mismatch"  # a witnessed position holds another record
    WITNESS_CONFLICT = "witness_conflict"  # two signed witness lines disagree: a fork
    BAD_WITNESS = "bad_witness"  # a witness line of ours that does not verify


@dataclass(frozen=True)
class VerifyProblem:
    """One finding: where (1-based line, seq, node), what kind, and a short message."""

    line: int | None
    seq: int | None
    node: str | None
    kind: str
    message: str

    def __str__(self) -> str:
        if self.line is None and self.seq is None:  # about a node, not a line (witness, registry)
            return f"node {self.node}: {self.kind}: {self.message}"
        return f"line {self.line}, seq {self.seq}, node {self.node}: {self.kind}: {self.message}"


class ProblemsMixin:
    """``ok`` / ``first_problem`` / ``check()`` for any result holding ``problems``."""

    problems: list[VerifyProblem]

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    @property
    def first_problem(self) -> VerifyProblem | None:
        """The first problem in stream order (end-of-stream findings come last)."""
        return self.problems[0] if self.problems else None

    def check(self) -> None:
        """Return None when the stream verified; raise :class:`IntegrityFailure` otherwise."""
        if self.problems:
            raise IntegrityFailure(f"audit verification failed: {self.problems[0]}")


@dataclass(frozen=True)
class WitnessPoint:
    """A chain position vouched for by a signed line found outside the store.

    ``source`` says where (``witness/n1.jsonl line 12``) so that a report can point at it.
    """

    node: str
    node_seq: int
    hash: str
    source: str


@dataclass(frozen=True)
class WitnessIndex:
    """Every witnessed position, and per node the highest one. Build with :meth:`of`."""

    points: dict[tuple[str, int], WitnessPoint]
    tops: dict[str, WitnessPoint]

    @classmethod
    def of(cls, points: Iterable[WitnessPoint]) -> tuple[WitnessIndex, list[VerifyProblem]]:
        """Index ``points``; two points giving one position two hashes are a problem each
        (``witness_conflict``: the node's chain forked, a witness saw both branches)."""
        index: dict[tuple[str, int], WitnessPoint] = {}
        tops: dict[str, WitnessPoint] = {}
        conflicts: list[VerifyProblem] = []
        for point in points:
            key = (point.node, point.node_seq)
            known = index.get(key)
            if known is not None:
                if known.hash != point.hash:
                    conflicts.append(VerifyProblem(
                        None, None, point.node, str(ProblemKind.WITNESS_CONFLICT),
                        f"node_seq {point.node_seq} has two signed hashes: {known.source} and "
                        f"{point.source} (the chain was forked)",
                    ))  # fmt: skip
                continue
            index[key] = point
            top = tops.get(point.node)
            if top is None or point.node_seq > top.node_seq:
                tops[point.node] = point
        return cls(points=index, tops=tops), conflicts


@dataclass(frozen=True)
class WitnessWindow:
    """One node's records after its last witnessed position: protected by the chain only."""

    node: str
    witnessed: int  # highest witnessed node_seq, 0 when the witness never saw this node
    source: str | None
    records: int
    first_seq: int | None
    last_seq: int | None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON for ``--json`` output."""
        return {
            "witnessed_node_seq": self.witnessed, "witnessed_at": self.source,
            "unprotected_records": self.records, "first_seq": self.first_seq,
            "last_seq": self.last_seq,
        }  # fmt: skip


@dataclass(frozen=True)
class VerifyReport(ProblemsMixin):
    """The outcome of :func:`verify_lines`. ``nodes`` maps node id to its last node_seq;
    ``windows`` (only when a witness was given) each node's unprotected window."""

    records: int
    checkpoints: int
    nodes: dict[str, int]
    problems: list[VerifyProblem] = field(default_factory=list)
    windows: dict[str, WitnessWindow] | None = None



# --- keys ------------------------------------------------------------------------------------


def _b64u_decode(text: Any) -> bytes | None:
    """Canonical unpadded base64url, or None."""
    if not isinstance(text, str):
        return None
    try:
        return b64u_decode(text)
    except MalformedBase64:
        return None


# (kty, crv) of the keys that sign audit records -> the ``alg`` values a JWKS may give them.
_AUDIT_KEY_ALGS: dict[tuple[str, str], tuple[str | None, ...]] = {
    ("OKP", "Ed25519"): (None, SigAlg.EDDSA, "Ed25519"),
    ("EC", "P-256"): (None, SigAlg.ES256),
}


def _jwk_public_key(jwk: Mapping[str, Any], where: str) -> AuditPublicKey | None:
    shape = (str(jwk.get("kty")), str(jwk.get("crv")))
    algs = _AUDIT_KEY_ALGS.get(shape)
    if algs is None:
        return None  # RSA, X25519...: keys of the JWKS that never sign audit records
    alg = jwk.get("alg")
    if alg not in algs:
        raise InvalidRequest(f"{where}: alg {alg!r} does not fit this {shape[1]} key")
    try:
        key = public_key_from_jwk(jwk)
    except JwkError as exc:
        raise InvalidRequest(f"{where}: {exc.detail}") from None
    if not isinstance(key, Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise InvalidRequest(f"{where}: not a signing key")  # unreachable: shapes above
    return key


def jwks_public_keys(jwks: Mapping[str, Any]) -> dict[str, AuditPublicKey]:
    """``kid`` -> public key for the JWKS's Ed25519 and P-256 signing keys.

    Other keys (RSA, X25519, ``use: enc``) are skipped: the same JWKS publishes the
    service's encryption key. A malformed Ed25519/P-256 key, or one ``kid`` naming two
    different keys, raises :class:`InvalidRequest`: the verifier's own trust input is bad.
    """
    keys = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if not isinstance(keys, list):
        raise InvalidRequest("jwks: an object with a 'keys' array")
    out: dict[str, AuditPublicKey] = {}
    for index, jwk in enumerate(keys):
        where = f"jwks.keys[{index}]"
        if not isinstance(jwk, Mapping):
            raise InvalidRequest(f"{where}: not an object")
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid or jwk.get("use", "sig") != "sig":
            continue
        key = _jwk_public_key(jwk, where)
        if key is None:
            continue
        if kid in out and out[kid] != key:
            raise InvalidRequest(f"{where}: kid {kid!r} names two different keys")
        out[kid] = key
    return out


class _BadSignature(Exception):
    pass


def _check_signature(key: AuditPublicKey, sig_text: str, message: bytes) -> None:
    """Raise :class:`_BadSignature` unless ``sig_text`` signs ``message`` with ``key``.

    ECDSA P-256 is ES256 as in JWS (RFC 7518 §3.4): raw r||s over SHA-256 of the message,
    the message being the 32 digest bytes.
    """
    sig = _b64u_decode(sig_text)
    if sig is None or len(sig) != SIGNATURE_BYTES:
        raise _BadSignature
    alg = SigAlg.EDDSA if isinstance(key, Ed25519PublicKey) else SigAlg.ES256
    try:
        jws_verify(alg, key, message, sig)
    except (InvalidSignature, ValueError):
        raise _BadSignature from None


# --- parsing ---------------------------------------------------------------------------------


class _BadLine(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name in out:
            raise _BadLine(f"duplicate member {name[:40]!r}")
        out[name] = value
    return out


def _refuse_constant(name: str) -> Any:
    raise _BadLine(f"{name} is not JSON")


def _parse(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant)
    except _BadLine:
        raise
    except (ValueError, RecursionError):
        raise _BadLine("not JSON") from None
    if not isinstance(value, dict):
        raise _BadLine("not a JSON object")
    return value


def _is_int(value: Any, minimum: int) -> bool:
    return type(value) is int and value >= minimum


def _check_common(obj: Mapping[str, Any]) -> None:
    if obj["v"] != AUDIT_VERSION or type(obj["v"]) is not int:
        raise _BadLine(f"unsupported version {obj['v']!r}"[:80])
    if not isinstance(obj["node"], str) or not obj["node"]:
        raise _BadLine("node must be a non-empty string")
    if not _is_int(obj["node_seq"], 1):
        raise _BadLine("node_seq must be a positive integer")
    if not isinstance(obj["time"], str) or _TIME_MS.fullmatch(obj["time"]) is None:
        raise _BadLine("time must be RFC 3339 UTC with milliseconds")
    if not isinstance(obj["hash"], str) or _HEX64.fullmatch(obj["hash"]) is None:
        raise _BadLine("hash must be 64 lowercase hex characters")
    if not isinstance(obj["kid"], str) or not obj["kid"]:
        raise _BadLine("kid must be a non-empty string")
    if not isinstance(obj["sig"], str):
        raise _BadLine("sig must be a string")


def _check_record_shape(rec: Mapping[str, Any]) -> None:
    if rec.keys() != _RECORD_KEYS:
        missing = sorted(_RECORD_KEYS - rec.keys())
        extra = sorted(k[:40] for k in rec.keys() - _RECORD_KEYS)
        raise _BadLine(f"members differ from a v1 record (missing {missing}, extra {extra})")
    _check_common(rec)
    if not _is_int(rec["seq"], 1):
        raise _BadLine("seq must be a positive integer")
    for name in _NULLABLE_TEXT:
        if rec[name] is not None and not isinstance(rec[name], str):
            raise _BadLine(f"{name} must be a string or null")
    if not isinstance(rec["action"], str) or not rec["action"]:
        raise _BadLine("action must be a non-empty string")
    if rec["outcome"] not in _OUTCOMES:
        raise _BadLine("outcome must be GRANTED, DENIED or ERROR")
    if not isinstance(rec["details"], dict):
        raise _BadLine("details must be an object")
    if not isinstance(rec["prev"], str) or _HEX64.fullmatch(rec["prev"]) is None:
        raise _BadLine("prev must be 64 lowercase hex characters")


def _check_checkpoint_shape(cp: Mapping[str, Any]) -> None:
    if cp.keys() != _CHECKPOINT_KEYS:
        raise _BadLine("members differ from a v1 checkpoint")
    _check_common(cp)


def _parse_checkpoint(text: str) -> dict[str, Any]:
    obj = _parse(text)
    if obj.get("type") != CHECKPOINT_TYPE:
        raise _BadLine("not a checkpoint")
    _check_checkpoint_shape(obj)
    return obj


# --- verification ------------------------------------------------------------------------------


class _Verifier:
    """Walks the stream once, keeping per-node heads and the hashes seen so far."""

    def __init__(
        self,
        keys: Mapping[str, AuditPublicKey],
        start: Mapping[str, ChainHead],
        witness: WitnessIndex | None = None,
    ):
        self.keys = keys
        self.start = dict(start)
        self.witness = witness
        # Per node: (records after the top witnessed position, first seq, last seq).
        self.window: dict[str, tuple[int, int | None, int | None]] = {}
        self.heads: dict[str, ChainHead] = dict(start)
        self.seen: dict[tuple[str, int], str] = {}
        # Checkpoints whose record has not been seen yet: (node, node_seq) -> [(line, hash)].
        self.pending: dict[tuple[str, int], list[tuple[int, str]]] = {}
        self.last_seq = 0
        self.records = 0
        self.checkpoints = 0
        self.checkpoint_nodes: set[str] = set()
        self.problems: list[VerifyProblem] = []

    def problem(
        self, line: int | None, seq: int | None, node: str | None, kind: ProblemKind, msg: str
    ) -> None:
        self.problems.append(VerifyProblem(line, seq, node, str(kind), msg))

    def _signature_problem(
        self, kid: str, sig: str, message: bytes
    ) -> tuple[ProblemKind, str] | None:
        key = self.keys.get(kid)
        if key is None:
            return ProblemKind.UNKNOWN_KID, f"kid {kid[:64]!r} is not in the JWKS"
        try:
            _check_signature(key, sig, message)
        except _BadSignature:
            return ProblemKind.BAD_SIGNATURE, "signature does not verify"
        return None

    def line(self, number: int, text: str) -> None:
        obj: dict[str, Any] | None = None
        try:
            obj = _parse(text)
            kind = obj.get("type")
            if kind == RECORD_TYPE:
                self.records += 1
                _check_record_shape(obj)
            elif kind == CHECKPOINT_TYPE:
                self.checkpoints += 1
                _check_checkpoint_shape(obj)
            else:
                raise _BadLine("type must be 'record' or 'checkpoint'")
        except _BadLine as exc:
            # Name the seq when the line still has a usable one, to help find it.
            seq = obj.get("seq") if obj is not None else None
            seq = seq if _is_int(seq, 1) else None
            self.problem(number, seq, None, ProblemKind.BAD_JSON, str(exc))
            return
        if kind == RECORD_TYPE:
            self.record(number, obj)
        else:
            self.checkpoint(number, obj)

    def record(self, number: int, rec: dict[str, Any]) -> None:
        seq, node, node_seq, stored = rec["seq"], rec["node"], rec["node_seq"], rec["hash"]
        found: tuple[ProblemKind, str] | None = None
        try:
            computed = record_hash(rec)
        except AuditEncodingError:
            found = (ProblemKind.BAD_JSON, "members are not canonicalizable (RFC 8785)")
        else:
            if computed != stored:
                found = (ProblemKind.BAD_HASH, "hash does not match the record's members")
            else:
                found = self._signature_problem(rec["kid"], rec["sig"], bytes.fromhex(stored))
        head = self.heads.get(node) or ChainHead(node=node, node_seq=0, hash=ZERO_HASH)
        expected = head.node_seq + 1
        key = (node, node_seq)
        if found is None and key in self.seen:
            found = (ProblemKind.DUPLICATE, f"node_seq {node_seq} of {node} appears twice")
        if found is None and seq <= self.last_seq:
            found = (ProblemKind.SEQ_NOT_INCREASING, f"seq {seq} after seq {self.last_seq}")
        self.last_seq = max(self.last_seq, seq)
        if found is None:
            if node_seq < expected:
                found = (ProblemKind.BROKEN_LINK, f"node_seq {node_seq} after {head.node_seq}")
            elif node_seq > expected:
                found = (ProblemKind.GAP, f"node_seq {expected}..{node_seq - 1} missing")
            elif rec["prev"] != head.hash:
                found = (
                    ProblemKind.BROKEN_LINK,
                    "prev is not the hash of the node's previous record",
                )
        if found is None and self.witness is not None:
            found = _witness_problem(self.witness, node, node_seq, stored)
        if found is not None:
            self.problem(number, seq, node, found[0], found[1])
        if self.witness is not None:
            self._count_window(self.witness, node, node_seq, seq)

        if key not in self.seen:
            self.seen[key] = stored
            for cp_line, cp_hash in self.pending.pop(key, []):
                if cp_hash != stored:
                    self.problem(
                        cp_line,
                        None,
                        node,
                        ProblemKind.BAD_CHECKPOINT,
                        f"checkpoint hash differs from record node_seq {node_seq}",
                    )
        if node_seq > head.node_seq:
            self.heads[node] = ChainHead(node=node, node_seq=node_seq, hash=stored)

    def _count_window(self, witness: WitnessIndex, node: str, node_seq: int, seq: int) -> None:
        top = witness.tops.get(node)
        if top is not None and node_seq <= top.node_seq:
            return
        count, first, _last = self.window.get(node, (0, None, None))
        self.window[node] = (count + 1, seq if first is None else first, seq)

    def checkpoint(self, number: int, cp: dict[str, Any]) -> None:
        node, node_seq = cp["node"], cp["node_seq"]
        try:
            found = self._signature_problem(cp["kid"], cp["sig"], checkpoint_digest(cp))
        except AuditEncodingError:
            found = (ProblemKind.BAD_JSON, "members are not canonicalizable (RFC 8785)")
        if found is not None:
            self.problem(number, None, node, found[0], "checkpoint: " + found[1])
            return
        self.checkpoint_nodes.add(node)
        key = (node, node_seq)
        anchor = self.start.get(node)
        if key in self.seen:
            if self.seen[key] != cp["hash"]:
                self.problem(
                    number,
                    None,
                    node,
                    ProblemKind.BAD_CHECKPOINT,
                    f"checkpoint hash differs from record node_seq {node_seq}",
                )
        elif anchor is not None and node_seq <= anchor.node_seq:
            # Before the archive boundary: only the anchor itself can be compared.
            if node_seq == anchor.node_seq and anchor.hash != cp["hash"]:
                self.problem(
                    number,
                    None,
                    node,
                    ProblemKind.BAD_CHECKPOINT,
                    "checkpoint hash differs from the start anchor",
                )
        else:
            self.pending.setdefault(key, []).append((number, cp["hash"]))

    def finish(self) -> None:
        for (node, node_seq), waiting in sorted(self.pending.items(), key=lambda kv: kv[1][0]):
            last = self.heads[node].node_seq if node in self.heads else 0
            for cp_line, _hash in waiting:
                if node_seq > last:
                    self.problem(
                        cp_line,
                        None,
                        node,
                        ProblemKind.MISSING_TAIL,
                        f"checkpoint at node_seq {node_seq} but the stream stops at {last}",
                    )
                else:
                    self.problem(
                        cp_line,
                        None,
                        node,
                        ProblemKind.BAD_CHECKPOINT,
                        f"checkpoint names node_seq {node_seq}, absent from the stream",
                    )
        self.pending.clear()
        if self.witness is not None:
            self._finish_witness(self.witness)

    def _finish_witness(self, witness: WitnessIndex) -> None:
        """Nodes the witness saw further than the stream goes, or that the stream lacks."""
        for node, top in sorted(witness.tops.items()):
            head = self.heads.get(node)
            if head is None and node not in self.checkpoint_nodes:
                self.problem(
                    None, None, node, ProblemKind.NODE_REMOVED,
                    f"the witness ({top.source}) saw node {node} reach node_seq "
                    f"{top.node_seq}; no record or checkpoint of it is left",
                )  # fmt: skip
                continue
            last = head.node_seq if head is not None else 0
            if last < top.node_seq:
                self.problem(
                    None, None, node, ProblemKind.BEHIND_WITNESS,
                    f"the chain stops at node_seq {last} but the witness ({top.source}) saw "
                    f"node_seq {top.node_seq}: records {last + 1}..{top.node_seq} were removed",
                )  # fmt: skip
        # A start anchor is a position the stream vouches for without its record.
        for (node, node_seq), point in sorted(witness.points.items()):
            anchor = self.start.get(node)
            if (
                anchor is not None
                and anchor.node_seq == node_seq
                and (node, node_seq) not in self.seen
                and anchor.hash != point.hash
            ):
                self.problem(
                    None, None, node, ProblemKind.WITNESS_MISMATCH,
                    f"the start anchor at node_seq {node_seq} differs from the witness "
                    f"({point.source})",
                )  # fmt: skip

    def windows(self, witness: WitnessIndex) -> dict[str, WitnessWindow]:
        """Per node of the stream: the records after its highest ``witness``ed position."""
        out: dict[str, WitnessWindow] = {}
        for node in sorted(self.heads):
            top = witness.tops.get(node)
            count, first, last = self.window.get(node, (0, None, None))
            out[node] = WitnessWindow(
                node=node, witnessed=top.node_seq if top is not None else 0,
                source=top.source if top is not None else None, records=count,
                first_seq=first, last_seq=last,
            )  # fmt: skip
        return out


def _witness_problem(
    witness: WitnessIndex, node: str, node_seq: int, stored: str
) -> tuple[ProblemKind, str] | None:
    point = witness.points.get((node, node_seq))
    if point is None or point.hash == stored:
        return None
    return (
        ProblemKind.WITNESS_MISMATCH,
        f"the witness ({point.source}) saw another record at node_seq {node_seq}: the "
        "chain was rewritten from an older head",
    )


def verify_lines(
    lines: Iterable[str],
    jwks: Mapping[str, Any],
    *,
    start: Mapping[str, ChainHead] | None = None,
    stop_at_first: bool = False,
    witness: WitnessIndex | None = None,
) -> VerifyReport:
    """Verify an audit export; the report lists every problem, first bad line first.

    ``start`` continues chains from known heads (for an archive's suffix: the head given by
    a signed checkpoint at the boundary, see :func:`checkpoint_anchor`); nodes absent from
    it must start at ``node_seq`` 1 with ``prev`` = 64 zeros. Blank lines are skipped but
    counted in line numbers. ``witness`` holds positions seen outside the stream (already
    verified, see :func:`witness_point`): the stream must reach each and agree with it, and
    the report gets each node's unprotected window. Raises :class:`InvalidRequest` only for
    a bad JWKS or ``start``.
    """
    anchors: dict[str, ChainHead] = {}
    for name, head in (start or {}).items():
        if not isinstance(head, ChainHead) or head.node != name or head.node_seq < 0:
            raise InvalidRequest(f"start: bad anchor for node {name!r}")
        anchors[name] = head
    verifier = _Verifier(jwks_public_keys(jwks), anchors, witness)
    for number, raw in enumerate(lines, start=1):
        text = raw.rstrip("\r\n")
        if not text.strip():
            continue
        verifier.line(number, text)
        if stop_at_first and verifier.problems:
            break
    else:
        verifier.finish()
    problems = verifier.problems[:1] if stop_at_first else verifier.problems
    return VerifyReport(
        records=verifier.records,
        checkpoints=verifier.checkpoints,
        nodes={node: head.node_seq for node, head in verifier.heads.items()},
        problems=list(problems),
        windows=verifier.windows(witness) if witness is not None else None,
    )


def checkpoint_anchor(line: str, jwks: Mapping[str, Any]) -> ChainHead:
    """The chain head a signed checkpoint line vouches for, to pass as ``start``.

    Raises :class:`IntegrityFailure` unless the line is a well-formed checkpoint whose
    signature verifies with a key of ``jwks``.
    """
    keys = jwks_public_keys(jwks)
    try:
        cp = _parse_checkpoint(line.rstrip("\r\n"))
        key = keys.get(cp["kid"])
        if key is None:
            raise _BadSignature
        _check_signature(key, cp["sig"], checkpoint_digest(cp))
    except (_BadLine, _BadSignature, AuditEncodingError):
        raise IntegrityFailure("not a checkpoint signed by a key of the JWKS") from None
    return ChainHead(node=cp["node"], node_seq=cp["node_seq"], hash=cp["hash"])


def witness_point(
    text: str, keys: Mapping[str, AuditPublicKey], source: str
) -> WitnessPoint | None:
    """The position a witness line vouches for, once its signature verified.

    ``text`` is a stored line (checkpoint or record) as a witness kept it. Returns None for
    JSON of another ``type`` (a countersignature line of the witness file, for one); raises
    :class:`IntegrityFailure` for a checkpoint or record that is malformed or does not
    verify with ``keys`` (a witness line nobody may trust, and a sign of tampering).
    """
    try:
        obj = _parse(text)
        kind = obj.get("type")
        if kind == CHECKPOINT_TYPE:
            _check_checkpoint_shape(obj)
            message = checkpoint_digest(obj)
        elif kind == RECORD_TYPE:
            _check_record_shape(obj)
            if record_hash(obj) != obj["hash"]:
                raise _BadLine("hash does not match the record's members")
            message = bytes.fromhex(obj["hash"])
        else:
            return None
        key = keys.get(obj["kid"])
        if key is None:
            raise _BadLine("kid is not in the JWKS")
        _check_signature(key, obj["sig"], message)
    except _BadLine as exc:
        raise IntegrityFailure(f"{source}: {exc}") from None
    except _BadSignature:
        raise IntegrityFailure(f"{source}: signature does not verify") from None
    except AuditEncodingError:
        raise IntegrityFailure(f"{source}: members are not canonicalizable") from None
    return WitnessPoint(node=obj["node"], node_seq=obj["node_seq"], hash=obj["hash"],
                        source=source)
