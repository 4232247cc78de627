"""Audit record encoding (SPEC §8, §10 "Audit encoding") for sceau.core.audit."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import sceau.core.audit as audit_module
from sceau.core.audit import (
    AUDIT_VERSION,
    MAX_DETAILS_BYTES,
    ZERO_HASH,
    AuditEncodingError,
    AuditEvent,
    ChainHead,
    build_checkpoint,
    build_record,
    check_details,
    format_time_ms,
    head_of,
    record_hash,
    record_line,
)
from sceau.errors import SceauError
from sceau.vocab import Action, Outcome, Reason

PRIVATE = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUBLIC = PRIVATE.public_key()
KID = "audit-1"
SPEC_MEMBERS = {
    "type", "v", "seq", "node", "node_seq", "time", "app", "user", "ip", "action", "outcome",
    "reason", "key", "req", "details", "prev", "kid", "hash", "sig",
}  # fmt: skip


def sign(message: bytes) -> bytes:
    return PRIVATE.sign(message)


def event(**changes: Any) -> AuditEvent:
    base = AuditEvent(
        time_ms=1_800_000_000_123,
        app="app1",
        user="alice@corp.com",
        ip="192.0.2.7",
        action=Action.DECRYPT,
        outcome=Outcome.DENIED,
        reason=Reason.KEY_DISABLED,
        key="AAECAwQFBgcICQoLDA0ODw",
        req="jti-1",
        details={"items": 1},
    )
    return dataclasses.replace(base, **changes)


def b64u_decode(text: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def independent_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k not in ("hash", "sig")}
    return hashlib.sha256(rfc8785.dumps(body)).hexdigest()


# --- one record ------------------------------------------------------------------------------


def test_first_record_of_a_node() -> None:
    rec = build_record(event(), seq=1, head=ChainHead.genesis("n1"), kid=KID, sign=sign)
    assert set(rec) == SPEC_MEMBERS
    assert rec["type"] == "record" and rec["v"] == AUDIT_VERSION == 1
    assert (rec["seq"], rec["node"], rec["node_seq"]) == (1, "n1", 1)
    assert rec["prev"] == ZERO_HASH == "0" * 64
    assert rec["time"] == "2027-01-15T08:00:00.123Z"
    assert rec["action"] == "DECRYPT" and rec["outcome"] == "DENIED"
    assert rec["reason"] == "key_disabled"
    assert type(rec["action"]) is str and type(rec["reason"]) is str  # plain JSON, not enums
    assert rec["kid"] == KID


def test_hash_and_signature_follow_the_spec() -> None:
    rec = build_record(event(), seq=7, head=ChainHead.genesis("n1"), kid=KID, sign=sign)
    assert rec["hash"] == independent_hash(rec) == record_hash(rec)
    PUBLIC.verify(b64u_decode(rec["sig"]), bytes.fromhex(rec["hash"]))
    assert "=" not in rec["sig"] and len(b64u_decode(rec["sig"])) == 64


@pytest.mark.parametrize(
    ("member", "value"),
    [("kid", "audit-2"), ("type", "checkpoint"), ("details", {"items": 2}), ("prev", "1" * 64),
     ("user", None), ("seq", 8)],
)  # fmt: skip
def test_hash_covers_every_member(member: str, value: Any) -> None:
    rec = build_record(event(), seq=7, head=ChainHead.genesis("n1"), kid=KID, sign=sign)
    altered = {**rec, member: value}
    assert record_hash(altered) != rec["hash"]


def test_hash_ignores_hash_and_sig() -> None:
    rec = build_record(event(), seq=7, head=ChainHead.genesis("n1"), kid=KID, sign=sign)
    assert record_hash({**rec, "hash": "f" * 64, "sig": "x"}) == rec["hash"]


def test_nulls_are_present_not_omitted() -> None:
    bare = event(app=None, user=None, ip=None, reason=None, key=None, req=None, details={})
    rec = build_record(bare, seq=1, head=ChainHead.genesis("n1"), kid=KID, sign=sign)
    line = record_line(rec)
    for name in ("app", "user", "ip", "reason", "key", "req"):
        assert f'"{name}":null' in line
    assert '"details":{}' in line


def test_pinned_vector() -> None:
    """Regression vector: changing the encoding changes every exported chain."""
    rec = build_record(event(), seq=1, head=ChainHead.genesis("n1"), kid=KID, sign=sign)
    assert record_line(rec).startswith(
        '{"action":"DECRYPT","app":"app1","details":{"items":1},"hash":"'
    )
    assert rec["hash"] == PINNED_HASH


PINNED_HASH = "557b61390a55c47cb8733ebb5e0fc3830c6015f6d82e3e848354666df779b66c"


# --- the chain -------------------------------------------------------------------------------


def test_chain_links_per_node() -> None:
    heads = {"n1": ChainHead.genesis("n1"), "n2": ChainHead.genesis("n2")}
    records = []
    for seq, node in enumerate(["n1", "n2", "n1", "n1", "n2"], start=1):
        rec = build_record(event(req=f"j{seq}"), seq=seq, head=heads[node], kid=KID, sign=sign)
        assert rec["prev"] == heads[node].hash
        assert rec["node_seq"] == heads[node].node_seq + 1
        heads[node] = head_of(rec)
        records.append(rec)
    assert [r["node_seq"] for r in records] == [1, 1, 2, 3, 2]
    assert records[2]["prev"] == records[0]["hash"]
    assert records[4]["prev"] == records[1]["hash"]
    assert heads["n1"] == ChainHead("n1", 3, records[3]["hash"])


def test_record_line_is_canonical_json_of_the_whole_record() -> None:
    rec = build_record(event(details={"é": "ü", "b": [1, 2.5]}), seq=3,
                       head=ChainHead.genesis("n1"), kid=KID, sign=sign)  # fmt: skip
    line = record_line(rec)
    assert line == rfc8785.dumps(rec).decode("utf-8")
    assert "\n" not in line and json.loads(line) == rec


# --- time ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (1, "1970-01-01T00:00:00.001Z"),
        (999, "1970-01-01T00:00:00.999Z"),
        (1000, "1970-01-01T00:00:01.000Z"),
        (1_000_000_000_000, "2001-09-09T01:46:40.000Z"),
        (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),
    ],
)
def test_format_time_ms(ms: int, text: str) -> None:
    assert format_time_ms(ms) == text


@pytest.mark.parametrize("bad", [-1, True, 1.5, "0", 253_402_300_800_000, 10**30])
def test_format_time_ms_refuses(bad: Any) -> None:
    with pytest.raises(AuditEncodingError):
        format_time_ms(bad)


# --- details -------------------------------------------------------------------------------------


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"x": value}
    return value


@pytest.mark.parametrize(
    "details",
    [
        {},
        {"items": 3, "errors": [{"code": "not_found", "index": 2}]},
        {"plaintext_bytes": 10, "key_id": "AAEC", "rights": ["decrypt"], "ratio": 0.5},
        {"flag": True, "none": None, "neg": -(2**53 - 1)},
        nested(8),
    ],
    ids=["empty", "nested-list", "innocent-names", "scalars", "depth-8"],
)
def test_check_details_accepts(details: dict[str, Any]) -> None:
    assert check_details(details) is None


@pytest.mark.parametrize(
    ("details", "match"),
    [
        (nested(9), "deeper"),
        ({"password": "x"}, "password"),
        ({"new-Password": "x"}, "new-Password"),
        ({"Seed": "x"}, "Seed"),
        ({"plaintext": "x"}, "plaintext"),
        ({"data_key": "x"}, "data_key"),
        ({"key": "x"}, "key"),
        ({"outer": [{"client_secret": "x"}]}, "client_secret"),
        ({"raw": b"bytes"}, "unsupported"),
        ({"set": {1, 2}}, "unsupported"),
        ({1: "non-string name"}, "non-string"),
        ({"nan": float("nan")}, "canonical"),
        ({"big": 2**60}, "canonical"),
        ({"blob": "x" * (MAX_DETAILS_BYTES + 1)}, "larger"),
        ({"bad": "\ud800"}, "canonical"),
    ],
)
def test_check_details_refuses(details: Any, match: str) -> None:
    with pytest.raises(AuditEncodingError, match=match) as info:
        check_details(details)
    # A secret value is never echoed in the message.
    assert "x" * 20 not in str(info.value)


def test_check_details_refuses_non_mapping() -> None:
    with pytest.raises(AuditEncodingError):
        check_details(["not", "an", "object"])  # type: ignore[arg-type]


def test_audit_encoding_error_is_an_internal_sceau_error() -> None:
    assert issubclass(AuditEncodingError, SceauError)
    assert AuditEncodingError("x").code == "internal_error"


# --- refusals when building ----------------------------------------------------------------------

GENESIS = ChainHead.genesis("n1")


@pytest.mark.parametrize(
    ("kwargs", "ev"),
    [
        ({"seq": 0}, event()),
        ({"seq": True}, event()),
        ({"head": ChainHead("n1", -1, ZERO_HASH)}, event()),
        ({"head": ChainHead("n1", 0, "0" * 63)}, event()),
        ({"head": ChainHead("n1", 0, "A" * 64)}, event()),
        ({"head": ChainHead("", 0, ZERO_HASH)}, event()),
        ({"kid": ""}, event()),
        ({"sign": lambda m: b"short"}, event()),
        ({"sign": lambda m: "not-bytes"}, event()),
        ({}, event(action="DECRYPT")),
        ({}, event(outcome="GRANTED")),
        ({}, event(details={"password": "hunter2"})),
        ({}, event(time_ms=-5)),
    ],
    ids=[
        "seq-0", "seq-bool", "head-negative", "head-short-hash", "head-upper-hash", "empty-node",
        "empty-kid", "short-signature", "signature-not-bytes", "action-str", "outcome-str",
        "secret-details", "negative-time",
    ],
)  # fmt: skip
def test_build_record_refuses(kwargs: dict[str, Any], ev: AuditEvent) -> None:
    args: dict[str, Any] = {"seq": 1, "head": GENESIS, "kid": KID, "sign": sign, **kwargs}
    with pytest.raises(AuditEncodingError):
        build_record(ev, **args)


def test_build_record_refuses_a_non_string_member() -> None:
    """Pure Python, build_record refuses it; compiled with mypyc (pyproject.toml's
    [tool.sceau.compiled]), AuditEvent is a native class whose constructor already does."""
    if audit_module.__file__ is not None and audit_module.__file__.endswith(".py"):
        with pytest.raises(AuditEncodingError, match="user"):
            build_record(event(user=3), seq=1, head=GENESIS, kid=KID, sign=sign)
    else:
        with pytest.raises(TypeError):
            event(user=3)


# --- checkpoints -----------------------------------------------------------------------------


def test_checkpoint() -> None:
    rec = build_record(event(), seq=1, head=GENESIS, kid=KID, sign=sign)
    cp = build_checkpoint(node="n1", node_seq=1, hash=rec["hash"], time_ms=1_000, kid=KID,
                          sign=sign)  # fmt: skip
    assert set(cp) == {"type", "v", "node", "node_seq", "hash", "time", "kid", "sig"}
    assert (cp["type"], cp["v"], cp["node_seq"], cp["hash"]) == ("checkpoint", 1, 1, rec["hash"])
    assert cp["time"] == "1970-01-01T00:00:01.000Z"
    body = {k: v for k, v in cp.items() if k != "sig"}
    PUBLIC.verify(b64u_decode(cp["sig"]), hashlib.sha256(rfc8785.dumps(body)).digest())


@pytest.mark.parametrize(
    "changes",
    [{"node_seq": 0}, {"hash": "xyz"}, {"node": ""}, {"kid": ""}, {"time_ms": -1}],
)
def test_checkpoint_refuses(changes: dict[str, Any]) -> None:
    args: dict[str, Any] = {"node": "n1", "node_seq": 1, "hash": ZERO_HASH, "time_ms": 0,
                            "kid": KID, "sign": sign, **changes}  # fmt: skip
    with pytest.raises(AuditEncodingError):
        build_checkpoint(**args)
