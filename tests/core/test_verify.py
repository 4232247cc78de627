"""Offline audit verification (SPEC §8) for sceau.core.verify, cross-checked by an independent
verifier written from the SPEC text alone (bottom of this file)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from sceau.core.audit import (
    AuditEvent,
    ChainHead,
    build_checkpoint,
    build_record,
    head_of,
    record_line,
)
from sceau.core.verify import (
    ProblemKind,
    VerifyReport,
    WitnessIndex,
    WitnessPoint,
    checkpoint_anchor,
    jwks_public_keys,
    verify_lines,
    witness_point,
)
from sceau.errors import IntegrityFailure, InvalidRequest
from sceau.vocab import Action, Outcome


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclasses.dataclass(frozen=True)
class Signer:
    kid: str
    sign: Callable[[bytes], bytes]
    jwk: dict[str, Any]


def ed25519_signer(kid: str, seed: int) -> Signer:
    private = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
    raw = private.public_key().public_bytes_raw()
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64u(raw), "kid": kid, "use": "sig", "alg": "EdDSA"}
    return Signer(kid, private.sign, jwk)


def p256_signer(kid: str, secret: int) -> Signer:
    private = ec.derive_private_key(secret, ec.SECP256R1())
    numbers = private.public_key().public_numbers()

    def sign(message: bytes) -> bytes:
        r, s = decode_dss_signature(private.sign(message, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    jwk = {
        "kty": "EC",
        "crv": "P-256",
        "x": b64u(numbers.x.to_bytes(32, "big")),
        "y": b64u(numbers.y.to_bytes(32, "big")),
        "kid": kid,
        "use": "sig",
        "alg": "ES256",
    }
    return Signer(kid, sign, jwk)


ED = ed25519_signer("audit-1", 1)
ED2 = ed25519_signer("audit-2", 2)
ROGUE = ed25519_signer("audit-1", 3)  # same kid as ED, another key
STRANGE = ed25519_signer("audit-x", 4)  # a kid the JWKS does not hold
ES = p256_signer("audit-ec", 123456789)
RSA_ENC = {"kty": "RSA", "kid": "enc-1", "use": "enc", "n": "AQAB", "e": "AQAB"}


def jwks(*signers: Signer) -> dict[str, Any]:
    return {"keys": [RSA_ENC, *(s.jwk for s in signers)]}


class Export:
    """Builds an export the way the service does: per-node chains, global seq, checkpoints."""

    def __init__(self) -> None:
        self.heads: dict[str, ChainHead] = {}
        self.seq = 0
        self.lines: list[str] = []
        self.records: list[dict[str, Any]] = []

    def record(self, node: str, signer: Signer = ED, *, step: int = 1, **changes: Any) -> str:
        self.seq += step
        ev = AuditEvent(
            time_ms=1_800_000_000_000 + self.seq,
            app="app1",
            user="alice@corp.com",
            ip="192.0.2.7",
            action=Action.DECRYPT,
            outcome=Outcome.GRANTED,
            reason=None,
            key="AAECAwQFBgcICQoLDA0ODw",
            req=f"jti-{self.seq}",
            details={"items": 1},
        )
        ev = dataclasses.replace(ev, **changes)
        head = self.heads.get(node, ChainHead.genesis(node))
        rec = build_record(ev, seq=self.seq, head=head, kid=signer.kid, sign=signer.sign)
        self.heads[node] = head_of(rec)
        self.records.append(rec)
        self.lines.append(record_line(rec))
        return self.lines[-1]

    def checkpoint(self, node: str, signer: Signer = ED, **changes: Any) -> str:
        head = self.heads[node]
        args: dict[str, Any] = {
            "node": node,
            "node_seq": head.node_seq,
            "hash": head.hash,
            "time_ms": 1_800_000_000_000 + self.seq,
            "kid": signer.kid,
            "sign": signer.sign,
            **changes,
        }
        self.lines.append(record_line(build_checkpoint(**args)))
        return self.lines[-1]


def base_export() -> Export:
    """Two nodes interleaved, seq with gaps between nodes, checkpoints after both.

    line: 1 n1#1  2 n1#2  3 n2#1  4 n1#3  5 cp n1@3  6 n2#2  7 n1#4  8 n1#5  9 n2#3
          10 n1#6  11 cp n1@6  12 cp n2@3
    """
    ex = Export()
    ex.record("n1")
    ex.record("n1")
    ex.record("n2", step=8)
    ex.record("n1")
    ex.checkpoint("n1")
    ex.record("n2")
    ex.record("n1")
    ex.record("n1")
    ex.record("n2", step=6)
    ex.record("n1")
    ex.checkpoint("n1")
    ex.checkpoint("n2")
    return ex


BASE = base_export()
BASE_LINES = BASE.lines
BASE_JWKS = jwks(ED)


def edit(line: str, **changes: Any) -> str:
    obj = json.loads(line)
    obj.update(changes)
    return record_line(obj)


def resign(line: str, signer: Signer, **changes: Any) -> str:
    """A forger's edit: change members, recompute the hash, sign with ``signer``."""
    obj = json.loads(line)
    obj.update(changes, kid=signer.kid)
    body = {k: v for k, v in obj.items() if k not in ("hash", "sig")}
    obj["hash"] = hashlib.sha256(rfc8785.dumps(body)).hexdigest()
    obj["sig"] = b64u(signer.sign(bytes.fromhex(obj["hash"])))
    return record_line(obj)


def forged_after_line_7(signer: Signer) -> list[str]:
    n1_4 = json.loads(BASE_LINES[6])
    forged = resign(
        BASE_LINES[6],
        signer,
        node_seq=5,
        seq=n1_4["seq"] + 1,
        prev=n1_4["hash"],
        user="mallory@corp.com",
    )
    return [*BASE_LINES[:7], forged, *BASE_LINES[7:]]


def without(*numbers: int) -> list[str]:
    return [line for i, line in enumerate(BASE_LINES, 1) if i not in numbers]


def swapped(a: int, b: int) -> list[str]:
    lines = list(BASE_LINES)
    lines[a - 1], lines[b - 1] = lines[b - 1], lines[a - 1]
    return lines


def replaced(number: int, text: str) -> list[str]:
    lines = list(BASE_LINES)
    lines[number - 1] = text
    return lines


def sig_of(number: int) -> str:
    return str(json.loads(BASE_LINES[number - 1])["sig"])


# (id, lines, first problem (line, kind) or None)
SCENARIOS: list[tuple[str, list[str], tuple[int, str] | None]] = [
    ("intact", BASE_LINES, None),
    ("field-changed", replaced(7, edit(BASE_LINES[6], user="mallory@corp.com")), (7, "bad_hash")),
    ("details-changed", replaced(2, edit(BASE_LINES[1], details={"items": 2})), (2, "bad_hash")),
    ("outcome-changed", replaced(8, edit(BASE_LINES[7], outcome="DENIED")), (8, "bad_hash")),
    ("kid-changed", replaced(8, edit(BASE_LINES[7], kid="audit-2")), (8, "bad_hash")),
    ("stored-hash-changed", replaced(4, edit(BASE_LINES[3], hash="0" * 64)), (4, "bad_hash")),
    ("middle-deleted", without(7), (7, "gap")),
    ("first-deleted", without(1), (1, "gap")),
    ("other-node-first-deleted", without(3), (5, "gap")),
    ("tail-deleted-before-checkpoint", without(10), (10, "missing_tail")),
    ("tail-run-deleted", without(7, 8, 10), (8, "missing_tail")),
    ("tail-and-checkpoints-cut", BASE_LINES[:9], None),  # undetectable: idle checkpoints bound it
    ("swapped", swapped(7, 8), (7, "gap")),
    ("swapped-across-nodes", swapped(6, 7), (7, "seq_not_increasing")),
    ("forged-other-key", forged_after_line_7(ROGUE), (8, "bad_signature")),
    ("forged-unknown-kid", forged_after_line_7(STRANGE), (8, "unknown_kid")),
    ("signature-replaced", replaced(4, edit(BASE_LINES[3], sig=sig_of(2))), (4, "bad_signature")),
    (
        "signature-truncated",
        replaced(4, edit(BASE_LINES[3], sig=sig_of(4)[:-2])),
        (4, "bad_signature"),
    ),
    ("resigned-by-rogue", replaced(4, resign(BASE_LINES[3], ROGUE)), (4, "bad_signature")),
    ("reordered-seq", replaced(4, resign(BASE_LINES[3], ED, seq=2)), (4, "seq_not_increasing")),
    ("duplicated", [*BASE_LINES[:4], BASE_LINES[3], *BASE_LINES[4:]], (5, "duplicate")),
    ("replayed-at-end", [*BASE_LINES, BASE_LINES[0]], (13, "duplicate")),
    (
        "checkpoint-hash-edited",
        replaced(5, edit(BASE_LINES[4], hash="1" * 64)),
        (5, "bad_signature"),
    ),
    ("checkpoint-unknown-kid", replaced(5, edit(BASE_LINES[4], kid="nope")), (5, "unknown_kid")),
    ("prev-relinked", replaced(7, resign(BASE_LINES[6], ED, prev="2" * 64)), (7, "broken_link")),
    ("not-json", replaced(3, "{not json"), (3, "bad_json")),
    ("json-array", replaced(3, "[]"), (3, "bad_json")),
    ("duplicate-member", replaced(3, BASE_LINES[2][:-1] + ',"user":"x"}'), (3, "bad_json")),
    ("extra-member", replaced(3, edit(BASE_LINES[2], extra=1)), (3, "bad_json")),
    (
        "missing-member",
        replaced(3, record_line({k: v for k, v in json.loads(BASE_LINES[2]).items() if k != "ip"})),
        (3, "bad_json"),
    ),
    ("version-2", replaced(3, resign(BASE_LINES[2], ED, v=2)), (3, "bad_json")),
    ("seq-as-string", replaced(3, edit(BASE_LINES[2], seq="10")), (3, "bad_json")),
    ("nan", replaced(3, BASE_LINES[2].replace('"items":1', '"items":NaN')), (3, "bad_json")),
    ("deep", replaced(3, "[" * 100_000 + "]" * 100_000), (3, "bad_json")),
    ("unknown-type", replaced(3, edit(BASE_LINES[2], type="note")), (3, "bad_json")),
]


def scenario_ids() -> list[str]:
    return [s[0] for s in SCENARIOS]


@pytest.mark.parametrize(("lines", "expected"), [s[1:] for s in SCENARIOS], ids=scenario_ids())
def test_scenarios(lines: list[str], expected: tuple[int, str] | None) -> None:
    report = verify_lines(lines, BASE_JWKS)
    first = report.first_problem
    if expected is None:
        assert report.ok and first is None, report.problems
        report.check()
    else:
        assert not report.ok and first is not None
        assert (first.line, first.kind) == expected, report.problems
        with pytest.raises(IntegrityFailure, match=f"line {expected[0]}"):
            report.check()


@pytest.mark.parametrize(("lines", "expected"), [s[1:] for s in SCENARIOS], ids=scenario_ids())
def test_independent_verifier_agrees(lines: list[str], expected: tuple[int, str] | None) -> None:
    ours = verify_lines(lines, BASE_JWKS).first_problem
    theirs = independent_first_bad_line(lines, BASE_JWKS)
    assert (None if ours is None else ours.line) == theirs


def test_first_problem_names_the_seq() -> None:
    report = verify_lines(replaced(7, edit(BASE_LINES[6], user="x")), BASE_JWKS)
    first = report.first_problem
    assert first is not None
    assert (first.seq, first.node) == (json.loads(BASE_LINES[6])["seq"], "n1")
    assert f"seq {first.seq}" in str(first)


def test_one_altered_record_is_reported_once() -> None:
    report = verify_lines(replaced(7, edit(BASE_LINES[6], user="x")), BASE_JWKS)
    assert [(p.line, p.kind) for p in report.problems] == [(7, "bad_hash")]


def test_deleted_record_reported_once() -> None:
    report = verify_lines(without(7), BASE_JWKS)
    assert [(p.line, p.kind) for p in report.problems] == [(7, "gap")]


def test_report_counts() -> None:
    report = verify_lines(BASE_LINES, BASE_JWKS)
    assert (report.records, report.checkpoints) == (9, 3)
    assert report.nodes == {"n1": 6, "n2": 3}


def test_stop_at_first() -> None:
    lines = replaced(2, "junk")
    lines[7] = "junk"
    assert len(verify_lines(lines, BASE_JWKS).problems) > 1
    report = verify_lines(lines, BASE_JWKS, stop_at_first=True)
    assert [(p.line, p.kind) for p in report.problems] == [(2, "bad_json")]


def test_blank_lines_and_crlf() -> None:
    lines = [BASE_LINES[0] + "\r\n", "\n", *[line + "\n" for line in BASE_LINES[1:]]]
    report = verify_lines(lines, BASE_JWKS)
    assert report.ok, report.problems
    bad = replaced(3, "junk")
    bad.insert(0, "")
    assert verify_lines(bad, BASE_JWKS).problems[0].line == 4


def test_empty_export_verifies() -> None:
    report = verify_lines([], BASE_JWKS)
    assert report.ok and report.records == 0 and report.nodes == {}


def test_checkpoint_disagreeing_with_its_record() -> None:
    ex = base_export()
    ex.checkpoint("n1", hash="3" * 64)  # validly signed, but the wrong hash
    report = verify_lines(ex.lines, BASE_JWKS)
    assert [(p.line, p.kind) for p in report.problems] == [(13, "bad_checkpoint")]
    assert independent_first_bad_line(ex.lines, BASE_JWKS) == 13


def test_checkpoint_before_its_record_is_checked_when_it_arrives() -> None:
    lines = swapped(10, 11)  # checkpoint n1@6 now precedes record n1#6
    assert verify_lines(lines, BASE_JWKS).ok
    ex = Export()
    ex.record("n1")
    ex.record("n1")
    ex.checkpoint("n1", node_seq=3, hash="7" * 64)  # signed, early, and wrong
    ex.record("n1")
    report = verify_lines(ex.lines, BASE_JWKS)
    assert [(p.line, p.kind) for p in report.problems] == [(3, "bad_checkpoint")]


def test_checkpoint_of_a_node_absent_from_the_stream() -> None:
    lines = [line for line in BASE_LINES if '"node":"n2"' not in line or "checkpoint" in line]
    report = verify_lines(lines, BASE_JWKS)
    assert report.first_problem is not None
    assert report.first_problem.kind == ProblemKind.MISSING_TAIL


# --- algorithms and keys -------------------------------------------------------------------


def test_p256_chain() -> None:
    ex = Export()
    for node in ["a", "b", "a", "a"]:
        ex.record(node, ES)
    ex.checkpoint("a", ES)
    keys = jwks(ES)
    assert verify_lines(ex.lines, keys).ok
    assert independent_first_bad_line(ex.lines, keys) is None
    tampered = [*ex.lines[:2], edit(ex.lines[2], ip="203.0.113.9"), *ex.lines[3:]]
    first = verify_lines(tampered, keys).first_problem
    assert first is not None and (first.line, first.kind) == (3, "bad_hash")
    # r and s swapped: still 64 bytes, no longer a signature.
    sig = base64.urlsafe_b64decode(json.loads(ex.lines[1])["sig"] + "==")
    swapped_sig = [ex.lines[0], edit(ex.lines[1], sig=b64u(sig[32:] + sig[:32])), *ex.lines[2:]]
    first = verify_lines(swapped_sig, keys).first_problem
    assert first is not None and (first.line, first.kind) == (2, "bad_signature")
    assert independent_first_bad_line(swapped_sig, keys) == 2


def test_key_rotation() -> None:
    ex = Export()
    ex.record("n1", ED)
    ex.record("n1", ED)
    ex.checkpoint("n1", ED)
    ex.record("n1", ED2)
    ex.record("n1", ES)
    ex.checkpoint("n1", ED2)
    assert verify_lines(ex.lines, jwks(ED, ED2, ES)).ok
    assert independent_first_bad_line(ex.lines, jwks(ED, ED2, ES)) is None
    first = verify_lines(ex.lines, jwks(ED, ES)).first_problem
    assert first is not None and (first.line, first.kind) == (4, "unknown_kid")


def test_wrong_algorithm_for_kid() -> None:
    """An Ed25519 signature presented under a P-256 kid does not verify."""
    ex = Export()
    ex.record("n1", ED)
    forged = resign(ex.lines[0], Signer(ES.kid, ED.sign, ES.jwk))
    first = verify_lines([forged], jwks(ED, ES)).first_problem
    assert first is not None and first.kind == "bad_signature"


def test_jwks_public_keys() -> None:
    keys = jwks_public_keys(
        {
            "keys": [
                RSA_ENC,
                ED.jwk,
                ES.jwk,
                {**ED2.jwk, "use": "enc"},
                {"kty": "OKP", "crv": "X25519", "x": "AA", "kid": "x"},
            ]
        }
    )
    assert set(keys) == {"audit-1", "audit-ec"}
    assert isinstance(keys["audit-1"], Ed25519PublicKey)
    assert isinstance(keys["audit-ec"], ec.EllipticCurvePublicKey)


@pytest.mark.parametrize(
    "bad",
    [
        [],
        {"keys": "nope"},
        {"keys": [1]},
        {"keys": [{**ED.jwk, "x": ED.jwk["x"] + "A"}]},
        {"keys": [{**ED.jwk, "x": ED.jwk["x"] + "="}]},
        {"keys": [{**ED.jwk, "alg": "ES256"}]},
        {"keys": [{**ES.jwk, "y": ES.jwk["x"]}]},  # off the curve
        {"keys": [{**ES.jwk, "alg": "EdDSA"}]},
        {"keys": [ED.jwk, ROGUE.jwk]},  # one kid, two keys
    ],
    ids=[
        "not-object",
        "keys-not-list",
        "key-not-object",
        "ed-x-long",
        "ed-x-padded",
        "ed-wrong-alg",
        "ec-off-curve",
        "ec-wrong-alg",
        "kid-twice",
    ],
)
def test_jwks_refused(bad: Any) -> None:
    with pytest.raises(InvalidRequest, match="jwks"):
        jwks_public_keys(bad)


# --- archives ------------------------------------------------------------------------------


def test_archive_suffix_with_checkpoint_anchor() -> None:
    ex = Export()
    for _ in range(3):
        ex.record("n1")
    anchor_line = ex.checkpoint("n1")
    for _ in range(3):
        ex.record("n1")
    ex.checkpoint("n1")
    suffix = ex.lines[4:]
    start = {"n1": checkpoint_anchor(anchor_line, BASE_JWKS)}
    assert start["n1"] == ChainHead("n1", 3, ex.records[2]["hash"])
    report = verify_lines(suffix, BASE_JWKS, start=start)
    assert report.ok and report.nodes == {"n1": 6}, report.problems
    assert (
        independent_first_bad_line(suffix, BASE_JWKS, start={"n1": (3, start["n1"].hash)}) is None
    )
    # Without the anchor the suffix does not start a chain.
    first = verify_lines(suffix, BASE_JWKS).first_problem
    assert first is not None and (first.line, first.kind) == (1, "gap")
    # An anchor with another hash breaks the first link.
    wrong = {"n1": ChainHead("n1", 3, "5" * 64)}
    first = verify_lines(suffix, BASE_JWKS, start=wrong).first_problem
    assert first is not None and (first.line, first.kind) == (1, "broken_link")
    # The anchor's own checkpoint in the suffix must agree with it.
    report = verify_lines([anchor_line, *suffix], BASE_JWKS, start=wrong)
    assert report.problems[0].kind == "bad_checkpoint" and report.problems[0].line == 1


@pytest.mark.parametrize(
    "line",
    [
        "junk",
        BASE_LINES[0],  # a record, not a checkpoint
        edit(BASE_LINES[4], hash="6" * 64),
        edit(BASE_LINES[4], kid="unknown"),
    ],
    ids=["junk", "record", "edited", "unknown-kid"],
)
def test_checkpoint_anchor_refuses(line: str) -> None:
    with pytest.raises(IntegrityFailure):
        checkpoint_anchor(line, BASE_JWKS)


def test_start_must_name_its_node() -> None:
    with pytest.raises(InvalidRequest):
        verify_lines(BASE_LINES, BASE_JWKS, start={"n1": ChainHead("n2", 1, "0" * 64)})


def test_report_is_a_value() -> None:
    report = verify_lines(BASE_LINES, BASE_JWKS)
    assert isinstance(report, VerifyReport)
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.records = 0  # type: ignore[misc]


# --- witnesses (SECURITY-CASES 48) --------------------------------------------------------------


def forked_export() -> Export:
    """BASE with n1's fifth record written differently: what a node that restarted from its
    fourth record (the rest cut from the store) writes next. Lines as in BASE."""
    ex = Export()
    ex.record("n1")
    ex.record("n1")
    ex.record("n2", step=8)
    ex.record("n1")
    ex.checkpoint("n1")
    ex.record("n2")
    ex.record("n1")
    ex.record("n1", user="mallory@corp.com")
    ex.record("n2", step=6)
    ex.record("n1")
    ex.checkpoint("n1")
    ex.checkpoint("n2")
    return ex


FORKED_LINES = forked_export().lines
_KEYS = jwks_public_keys(BASE_JWKS)


def witnessed(*lines: str) -> WitnessIndex:
    points = [witness_point(text, _KEYS, f"w{i}") for i, text in enumerate(lines, 1)]
    index, conflicts = WitnessIndex.of(p for p in points if p is not None)
    assert not conflicts
    return index


# The witness holds BASE's last checkpoints: n1@6 (line 11) and n2@3 (line 12).
FULL_WITNESS = (BASE_LINES[10], BASE_LINES[11])

# (id, stream, witness lines, expected problems as (node, kind) in report order, and whether
# the stream verifies without the witness: the cuts and the fork do, which is the point).
WITNESS_SCENARIOS: list[
    tuple[str, list[str], tuple[str, ...], list[tuple[str | None, str]], bool]
] = [
    ("intact", BASE_LINES, FULL_WITNESS, [], True),
    ("tail-and-checkpoints-cut", without(8, 10, 11), FULL_WITNESS, [("n1", "behind_witness")],
     True),
    ("whole-node-removed", without(3, 6, 9, 12), FULL_WITNESS, [("n2", "node_removed")], True),
    ("records-gone-checkpoints-left", without(3, 6, 9), FULL_WITNESS,
     [("n2", "missing_tail"), ("n2", "behind_witness")], False),
    ("restarted-from-older-head", FORKED_LINES, FULL_WITNESS, [("n1", "witness_mismatch")],
     True),
    ("fork-after-the-witness", FORKED_LINES, (BASE_LINES[4],), [], True),
    ("record-lines-witness-too", without(10, 11), (BASE_LINES[9],), [("n1", "behind_witness")],
     True),
]  # fmt: skip


@pytest.mark.parametrize(("lines", "witness", "expected", "alone_ok"),
                         [s[1:] for s in WITNESS_SCENARIOS],
                         ids=[s[0] for s in WITNESS_SCENARIOS])
def test_witness_scenarios(
    lines: list[str], witness: tuple[str, ...], expected: list[tuple[str | None, str]],
    alone_ok: bool,
) -> None:
    report = verify_lines(lines, BASE_JWKS, witness=witnessed(*witness))
    assert [(p.node, p.kind) for p in report.problems] == expected, report.problems
    assert verify_lines(lines, BASE_JWKS).ok is alone_ok


def test_witness_problem_names_the_node_and_the_witnessed_position() -> None:
    report = verify_lines(without(8, 10, 11), BASE_JWKS, witness=witnessed(*FULL_WITNESS))
    problem = report.problems[0]
    assert problem.line is None and problem.node == "n1"
    assert "stops at node_seq 4" in problem.message and "node_seq 6" in problem.message
    assert "w1" in problem.message  # where the witness saw it
    mismatch = verify_lines(FORKED_LINES, BASE_JWKS, witness=witnessed(*FULL_WITNESS))
    assert mismatch.problems[0].line == 10  # n1#6 of the fork: the first witnessed record


def test_unprotected_window_per_node() -> None:
    # Witness: n1 up to its checkpoint at 3 (line 5); n2 never witnessed.
    report = verify_lines(BASE_LINES, BASE_JWKS, witness=witnessed(BASE_LINES[4]))
    assert report.ok and report.windows is not None
    n1, n2 = report.windows["n1"], report.windows["n2"]
    seqs = {(r["node"], r["node_seq"]): r["seq"] for r in BASE.records}
    assert (n1.witnessed, n1.records) == (3, 3)
    assert (n1.first_seq, n1.last_seq) == (seqs[("n1", 4)], seqs[("n1", 6)])
    assert (n2.witnessed, n2.records, n2.source) == (0, 3, None)
    full = verify_lines(BASE_LINES, BASE_JWKS, witness=witnessed(*FULL_WITNESS))
    assert full.windows is not None
    assert {n: w.records for n, w in full.windows.items()} == {"n1": 0, "n2": 0}
    assert verify_lines(BASE_LINES, BASE_JWKS).windows is None


def test_two_signed_hashes_for_one_position_are_a_conflict() -> None:
    points = [witness_point(text, _KEYS, src)
              for text, src in ((BASE_LINES[10], "a"), (FORKED_LINES[10], "b"))]
    _index, conflicts = WitnessIndex.of(p for p in points if p is not None)
    assert [(c.node, c.kind) for c in conflicts] == [("n1", "witness_conflict")]
    assert "a and b" in conflicts[0].message


def test_archived_positions_do_not_alarm() -> None:
    """A witness older than an archive boundary: positions below the anchor are archived."""
    suffix = BASE_LINES[5:]  # after n1's checkpoint at 3 (line 5); n2 starts later too
    start = {"n1": checkpoint_anchor(BASE_LINES[4], BASE_JWKS),
             "n2": ChainHead("n2", 1, json.loads(BASE_LINES[2])["hash"])}
    witness = witnessed(BASE_LINES[1], BASE_LINES[4], *FULL_WITNESS)  # n1#2, n1@3, ...
    report = verify_lines(suffix, BASE_JWKS, start=start, witness=witness)
    assert report.ok, report.problems
    wrong = {**start, "n1": ChainHead("n1", 3, "7" * 64)}
    kinds = {p.kind for p in verify_lines(suffix, BASE_JWKS, start=wrong, witness=witness).problems}
    assert "witness_mismatch" in kinds


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (BASE_LINES[10], ("n1", 6)),
        (BASE_LINES[0], ("n1", 1)),  # a record vouches for its position too
        ('{"type":"countersignature","node":"n1"}', None),
    ],
    ids=["checkpoint", "record", "other-type"],
)
def test_witness_point_reads(line: str, expected: tuple[str, int] | None) -> None:
    point = witness_point(line, _KEYS, "here")
    assert (None if point is None else (point.node, point.node_seq)) == expected
    if point is not None:
        assert isinstance(point, WitnessPoint) and point.source == "here"


@pytest.mark.parametrize(
    "line",
    [
        edit(BASE_LINES[10], node_seq=9),  # pushed forward: signature no longer covers it
        edit(BASE_LINES[0], user="x"),  # record edited: hash
        resign(BASE_LINES[0], ROGUE),
        resign(BASE_LINES[0], STRANGE),
        edit(BASE_LINES[10], extra=1),
        "{not json",
    ],
    ids=["checkpoint-edited", "record-edited", "rogue-key", "unknown-kid", "extra-member",
         "not-json"],
)
def test_witness_point_refuses_what_does_not_verify(line: str) -> None:
    with pytest.raises(IntegrityFailure, match="^here: "):
        witness_point(line, _KEYS, "here")


# --- an independent verifier, from the SPEC text only --------------------------------------
# Uses only cryptography, hashlib, json and rfc8785; nothing from sceau.core.audit/verify.
# It returns the 1-based number of the first bad line, or None.

RECORD_FIELDS = {
    "type",
    "v",
    "seq",
    "node",
    "node_seq",
    "time",
    "app",
    "user",
    "ip",
    "action",
    "outcome",
    "reason",
    "key",
    "req",
    "details",
    "prev",
    "kid",
    "hash",
    "sig",
}
CHECKPOINT_FIELDS = {"type", "v", "node", "node_seq", "hash", "time", "kid", "sig"}


def _unpadded_b64url(text: str) -> bytes:
    if "=" in text:
        raise ValueError("padded")
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    # "The unpadded base64url of the signature" is one text: a last character whose unused
    # bits differ decodes to the same bytes but is not that encoding.
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != text:
        raise ValueError("not the canonical encoding")
    return raw


def _load_keys(jwks_doc: Mapping[str, Any]) -> dict[str, Any]:
    keys: dict[str, Any] = {}
    for jwk in jwks_doc["keys"]:
        if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519":
            keys[jwk["kid"]] = Ed25519PublicKey.from_public_bytes(_unpadded_b64url(jwk["x"]))
        elif jwk.get("kty") == "EC" and jwk.get("crv") == "P-256":
            x = int.from_bytes(_unpadded_b64url(jwk["x"]), "big")
            y = int.from_bytes(_unpadded_b64url(jwk["y"]), "big")
            keys[jwk["kid"]] = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    return keys


def _signature_ok(key: Any, sig_b64: str, digest: bytes) -> bool:
    try:
        sig = _unpadded_b64url(sig_b64)
        if len(sig) != 64:
            return False
        if isinstance(key, Ed25519PublicKey):
            key.verify(sig, digest)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
            key.verify(encode_dss_signature(r, s), digest, ec.ECDSA(hashes.SHA256()))
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    if len(names) != len(set(names)):
        raise ValueError("duplicate member")
    return dict(pairs)


def _bad_constant(name: str) -> Any:
    raise ValueError(name)


def independent_first_bad_line(
    lines: Iterable[str],
    jwks_doc: Mapping[str, Any],
    start: Mapping[str, tuple[int, str]] | None = None,
) -> int | None:
    keys = _load_keys(jwks_doc)
    chains: dict[str, tuple[int, str]] = dict(start or {})  # node -> (node_seq, hash)
    hashes_seen: dict[tuple[str, int], str] = {}
    checkpoints: list[tuple[int, str, int, str]] = []
    last_seq = 0
    for number, raw in enumerate(lines, 1):
        text = raw.rstrip("\r\n")
        if not text.strip():
            continue
        try:
            obj = json.loads(text, object_pairs_hook=_strict_object, parse_constant=_bad_constant)
        except (ValueError, RecursionError):
            return number
        if not isinstance(obj, dict):
            return number
        if obj.get("type") == "record":
            if set(obj) != RECORD_FIELDS or obj["v"] != 1 or type(obj["seq"]) is not int:
                return number
            if type(obj["node_seq"]) is not int or not isinstance(obj["details"], dict):
                return number
            body = {k: v for k, v in obj.items() if k not in ("hash", "sig")}
            try:
                digest = hashlib.sha256(rfc8785.dumps(body)).digest()
            except Exception:
                return number
            if digest.hex() != obj["hash"]:
                return number
            if obj["kid"] not in keys or not _signature_ok(keys[obj["kid"]], obj["sig"], digest):
                return number
            if obj["seq"] <= last_seq:
                return number
            last_seq = obj["seq"]
            prev_seq, prev_hash = chains.get(obj["node"], (0, "0" * 64))
            if obj["node_seq"] != prev_seq + 1 or obj["prev"] != prev_hash:
                return number
            chains[obj["node"]] = (obj["node_seq"], obj["hash"])
            hashes_seen[(obj["node"], obj["node_seq"])] = obj["hash"]
        elif obj.get("type") == "checkpoint":
            if set(obj) != CHECKPOINT_FIELDS or obj["v"] != 1:
                return number
            body = {k: v for k, v in obj.items() if k != "sig"}
            digest = hashlib.sha256(rfc8785.dumps(body)).digest()
            if obj["kid"] not in keys or not _signature_ok(keys[obj["kid"]], obj["sig"], digest):
                return number
            known = hashes_seen.get((obj["node"], obj["node_seq"]))
            if known is not None and known != obj["hash"]:
                return number
            anchor = (start or {}).get(obj["node"])
            if anchor is not None and obj["node_seq"] == anchor[0] and obj["hash"] != anchor[1]:
                return number
            checkpoints.append((number, obj["node"], obj["node_seq"], obj["hash"]))
        else:
            return number
    for number, node, node_seq, cp_hash in checkpoints:
        last = chains.get(node, (0, ""))[0]
        if node_seq > last:
            return number  # the tail up to this checkpoint is missing
        known = hashes_seen.get((node, node_seq))
        if known is not None and known != cp_hash:
            return number
    return None


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_single_character_change_is_caught(data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(BASE_LINES) - 1))
    line = BASE_LINES[index]
    pos = data.draw(st.integers(0, len(line) - 1))
    char = data.draw(st.characters(codec="utf-8").filter(lambda c: c != line[pos]))
    lines = replaced(index + 1, line[:pos] + char + line[pos + 1 :])
    report = verify_lines(lines, BASE_JWKS)
    assert not report.ok
    assert report.first_problem is not None and report.first_problem.line == index + 1
    assert independent_first_bad_line(lines, BASE_JWKS) == index + 1


def _docs_snippet() -> dict[str, Any]:
    text = (Path(__file__).resolve().parents[2] / "docs" / "audit.md").read_text("utf-8")
    code = text.split("```python\n", 1)[1].split("\n```", 1)[0]
    namespace: dict[str, Any] = {"__name__": "audit_snippet"}
    exec(compile(code, "docs/audit.md", "exec"), namespace)
    return namespace


@pytest.mark.parametrize(("lines", "expected"), [s[1:] for s in SCENARIOS], ids=scenario_ids())
def test_docs_snippet_agrees(lines: list[str], expected: tuple[int, str] | None) -> None:
    """The verifier printed in docs/audit.md stays correct."""
    out = _docs_snippet()["verify"](lines, BASE_JWKS)
    assert out == "OK" if expected is None else out.startswith(f"line {expected[0]}:")
