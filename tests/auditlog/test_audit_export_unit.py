"""Export ordering, follow mode and the syslog mapping, on a scratch store (no server)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from auditlog_support import parse_rfc5424

from sceau.auditlog.export import ExportFormat, follow_export, iter_export, write_atomic
from sceau.auditlog.syslog import SyslogOptions, escape_param_value, facility_code, syslog_line
from sceau.errors import InvalidRequest
from sceau.store.db import Engines
from sceau.store.schema import audit_checkpoints, audit_records, metadata


def _record(seq: int, node: str = "n1", **extra: object) -> str:
    obj = {"type": "record", "seq": seq, "node": node, "node_seq": seq, "outcome": "GRANTED",
           "action": "ENCRYPT", "time": "2027-01-15T08:00:00.123Z", **extra}
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _checkpoint(node_seq: int, node: str = "n1") -> str:
    return json.dumps({"type": "checkpoint", "node": node, "node_seq": node_seq,
                       "time": "2027-01-15T08:00:01.000Z"}, sort_keys=True)


@pytest.fixture()
def engines(tmp_path: Path) -> Iterator[Engines]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'scratch.db'}")
    metadata.create_all(engine, tables=[audit_records, audit_checkpoints])
    yield Engines(write=engine, read=engine)
    engine.dispose()


def _add(engines: Engines, records: list[int], checkpoints: list[tuple[int, int]]) -> None:
    with engines.write.begin() as conn:
        for seq in records:
            conn.execute(audit_records.insert().values(
                seq=seq, node="n1", node_seq=seq, key=None, hash="0" * 64, line=_record(seq)))
        for node_seq, after in checkpoints:
            conn.execute(audit_checkpoints.insert().values(
                node="n1", node_seq=node_seq, after_seq=after, line=_checkpoint(node_seq)))


def _kinds(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        obj = json.loads(line)
        out.append(f"r{obj['seq']}" if obj["type"] == "record" else f"c{obj['node_seq']}")
    return out


def test_checkpoints_follow_their_record_and_orphans_are_kept(engines: Engines) -> None:
    # Records 3 and 6 are gone (deleted), but the checkpoints naming them are still exported
    # where they belong: that is how a verifier sees the removal.
    _add(engines, [1, 2, 4, 5], [(2, 2), (3, 3), (6, 6)])
    lines = list(iter_export(engines, ExportFormat.JSONL))
    assert _kinds(lines) == ["r1", "r2", "c2", "c3", "r4", "r5", "c6"]
    assert _kinds(list(iter_export(engines, ExportFormat.JSONL, since=2))) == [
        "c3", "r4", "r5", "c6"]
    assert _kinds(list(iter_export(engines, ExportFormat.JSONL, until=4))) == [
        "r1", "r2", "c2", "c3", "r4"]


def test_follow_emits_new_records_and_late_checkpoints(engines: Engines) -> None:
    _add(engines, [1, 2], [(2, 2)])
    polls = iter([
        lambda: _add(engines, [3, 4], []),
        lambda: _add(engines, [], [(4, 4)]),  # an idle checkpoint after its record went out
        lambda: _add(engines, [5], [(5, 5)]),
    ])
    stopped = []

    def next_poll(_seconds: float) -> None:
        action = next(polls, None)
        if action is None:
            stopped.append(True)
        else:
            action()

    lines = list(follow_export(engines, ExportFormat.JSONL, poll_s=0, sleep=next_poll,
                               stop=lambda: bool(stopped)))
    assert _kinds(lines) == ["r1", "r2", "c2", "r3", "r4", "c4", "r5", "c5"]


def test_follow_with_a_lag_waits_before_emitting(engines: Engines) -> None:
    _add(engines, [1], [])
    now = [0.0]
    rounds: list[int] = []

    def tick(_seconds: float) -> None:
        now[0] += 1.0
        rounds.append(1)

    emitted_at: list[float] = []
    for line in follow_export(engines, ExportFormat.JSONL, lag_s=2.5, clock=lambda: now[0],
                              sleep=tick, stop=lambda: len(rounds) >= 5):
        emitted_at.append(now[0])
        assert _kinds([line]) == ["r1"]
    # seq 1 was first seen at t=0; the first poll at or after t=2.5 is the one at t=3.
    assert emitted_at == [3.0]


def test_write_atomic_refuses_to_overwrite_an_archive(tmp_path: Path) -> None:
    target = tmp_path / "a.jsonl"
    assert write_atomic(target, ["x", "y"], exclusive=True) == 2
    assert target.read_text() == "x\ny\n"
    with pytest.raises(InvalidRequest):
        write_atomic(target, ["z"], exclusive=True)
    assert write_atomic(target, ["z"]) == 1 and target.read_text() == "z\n"
    assert [p.name for p in tmp_path.iterdir()] == ["a.jsonl"]


# --- syslog -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ('say "hi"', 'say \\"hi\\"'),
        ("a]b", "a\\]b"),
        ("back\\slash", "back\\\\slash"),
        ("two\nlines", "two\\u000alines"),
        ("é ☃", "é ☃"),
    ],
)
def test_param_value_escaping(raw: str, escaped: str) -> None:
    assert escape_param_value(raw) == escaped


@pytest.mark.parametrize(("outcome", "severity"), [("GRANTED", 6), ("DENIED", 4), ("ERROR", 3)])
def test_syslog_priority_follows_the_outcome(outcome: str, severity: int) -> None:
    line = _record(7, outcome=outcome, user='eve"]\\@example.com', details={"n": 1})
    message = syslog_line(line, SyslogOptions(facility=facility_code("local0"), hostname="h"))
    parsed = parse_rfc5424(message)
    assert int(parsed["pri"]) == 16 * 8 + severity
    assert parsed["msgid"] == "ENCRYPT" and parsed["procid"] == "n1"
    params = parsed["sd"]["sceau@32473"]
    assert params["user"] == 'eve"]\\@example.com' and params["details"] == '{"n":1}'
    assert parsed["msg"] == "\ufeff" + line


def test_checkpoint_is_a_notice() -> None:
    parsed = parse_rfc5424(syslog_line(_checkpoint(3), SyslogOptions(hostname="h")))
    assert int(parsed["pri"]) == 13 * 8 + 5 and parsed["msgid"] == "CHECKPOINT"


@pytest.mark.parametrize("bad", ["bogus", "24", "-1", ""])
def test_bad_facility_is_refused(bad: str) -> None:
    with pytest.raises(InvalidRequest):
        facility_code(bad)


@pytest.mark.parametrize("sd_id", ["with space", 'q"uote', "x" * 33, ""])
def test_bad_sd_id_is_refused(sd_id: str) -> None:
    with pytest.raises(InvalidRequest):
        SyslogOptions(sd_id=sd_id)
