"""The witness file and the witness readers, on real files and a real file keystore."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sceau.auditlog.syslog import SyslogOptions, syslog_line
from sceau.auditlog.witness import SyslogTarget, WitnessFile, extract_json, read_witness
from sceau.config import load_config
from sceau.core.audit import build_checkpoint, record_line
from sceau.core.verify import jwks_public_keys
from sceau.errors import ConfigError
from sceau.keystore import Keystore, KeystoreSettings, init_keystore, open_keystore
from sceau.keystore.base import KeyPurpose


@pytest.fixture(scope="module")
def keystore(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keystore]:
    settings = KeystoreSettings(tmp_path_factory.mktemp("witness-ks") / "keystore")
    init_keystore(settings)
    with open_keystore(settings) as ks:
        yield ks


def checkpoint(keystore: Keystore, node: str, node_seq: int) -> str:
    def sign(digest: bytes) -> bytes:
        return keystore.sign(KeyPurpose.AUDIT, digest)[1]

    return record_line(build_checkpoint(
        node=node, node_seq=node_seq, hash=f"{node_seq:064x}", time_ms=1_800_000_000_000,
        kid=keystore.signing_key(KeyPurpose.AUDIT).kid, sign=sign))


@pytest.mark.parametrize(("text", "expected"), [
    ("udp://collector.example:514", ("udp", "collector.example", 514)),
    ("tcp://[2001:db8::1]:601", ("tcp", "2001:db8::1", 601)),
    ("unix:/dev/log", ("unix", "/dev/log", 0)),
])
def test_syslog_targets(text: str, expected: tuple[str, str, int]) -> None:
    target = SyslogTarget.parse(text)
    assert (target.transport, target.host, target.port) == expected
    assert str(target) == text


@pytest.mark.parametrize("text", [
    "collector:514", "http://collector:514", "udp://collector", "udp://:514",
    "tcp://collector:0", "tcp://collector:65536", "unix:dev/log",
])
def test_bad_syslog_targets_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="audit.witness_syslog"):
        SyslogTarget.parse(text)


def test_settings_are_checked_when_loaded(tmp_path: Path) -> None:
    for name, value in (("SCEAU_AUDIT_WITNESS_SYSLOG", "syslog.example:514"),
                        ("SCEAU_AUDIT_WITNESS_URL", "http://witness.example")):
        with pytest.raises(ConfigError, match=name.removeprefix("SCEAU_AUDIT_").lower()):
            load_config(tmp_path, env={name: value})


def test_extract_json_from_lines_and_syslog(keystore: Keystore) -> None:
    line = checkpoint(keystore, "n1", 3)
    message = syslog_line(line, SyslogOptions(hostname="h"))
    assert extract_json(line) == line
    assert extract_json(message) == line
    assert extract_json(message.replace("\ufeff", "")) == line  # a collector dropped the BOM
    assert extract_json("Jan 15 08:00:00 host cron[1]: nothing here") is None


def test_the_last_verified_checkpoint_is_read_from_the_end(
    keystore: Keystore, tmp_path: Path
) -> None:
    witness = WitnessFile(tmp_path / "w")
    witness.prepare()
    witness.open_node("n1")
    keys = jwks_public_keys(keystore.public_jwks())
    asked: list[int] = []

    def audit_keys() -> dict[str, Any]:
        asked.append(1)
        return keys

    assert witness.last_checkpoint("n1", audit_keys) is None
    assert asked == []  # no checkpoint line: the keystore is not even asked
    for node_seq in range(1, 400):  # more than one 64 KiB block from the end
        witness.append("n1", checkpoint(keystore, "n1", node_seq))
    forged = json.loads(checkpoint(keystore, "n1", 400))
    forged["node_seq"] = 900  # pushed forward: the signature no longer covers it
    witness.append("n1", json.dumps(forged))
    witness.append("n1", '{"type":"countersignature","node":"n1","node_seq":399}')
    found = witness.last_checkpoint("n1", audit_keys)
    assert found is not None and found.node_seq == 399 and asked == [1]
    assert (tmp_path / "w" / "n1.jsonl").stat().st_mode & 0o777 == 0o600


def test_a_torn_line_is_ended_at_open_and_read_as_unreadable(
    keystore: Keystore, tmp_path: Path
) -> None:
    witness = WitnessFile(tmp_path / "w")
    witness.prepare()
    path = tmp_path / "w" / "n1.jsonl"
    whole = checkpoint(keystore, "n1", 1)
    path.write_text(whole + "\n" + whole[:40])  # a crash in the middle of a write
    witness.open_node("n1")
    witness.append("n1", checkpoint(keystore, "n1", 2))
    lines = path.read_text().splitlines()
    assert lines[1] == whole[:40] and json.loads(lines[2])["node_seq"] == 2
    evidence = read_witness([tmp_path / "w"], keystore.public_jwks())
    assert [p.node_seq for p in evidence.points] == [1, 2]
    assert evidence.unreadable == 1 and evidence.problems == []


def test_a_directory_writable_by_everyone_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "w"
    directory.mkdir()
    os.chmod(directory, 0o777)
    with pytest.raises(ConfigError, match="writable by every user"):
        WitnessFile(directory).prepare()
    made = WitnessFile(tmp_path / "new" / "w")
    made.prepare()
    assert (tmp_path / "new" / "w").stat().st_mode & 0o777 == 0o700


def test_read_witness_reports_lines_that_do_not_verify(
    keystore: Keystore, tmp_path: Path
) -> None:
    good = checkpoint(keystore, "n1", 5)
    edited: dict[str, Any] = json.loads(good)
    edited["hash"] = "e" * 64
    capture = tmp_path / "capture.log"
    capture.write_text("\n".join([
        syslog_line(good, SyslogOptions(hostname="h")),
        json.dumps(edited),
        "<13>1 - h other - - - hello",
    ]) + "\n")
    moved = tmp_path / "dir"
    moved.mkdir()
    (moved / "n1.jsonl.restored-2027-01-15").write_text(good + "\n")
    evidence = read_witness([capture, moved], keystore.public_jwks())
    assert [(p.node, p.node_seq) for p in evidence.points] == [("n1", 5)]
    assert [(p.node, p.kind) for p in evidence.problems] == [("n1", "bad_witness")]
    assert "capture.log line 2" in evidence.problems[0].message
    assert evidence.unreadable == 1 and evidence.sources == [str(capture)]
