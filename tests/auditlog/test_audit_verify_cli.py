"""`sceau audit verify|export` against a real server's store: tampering, exports, follow."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from auditlog_support import (
    canonical,
    checkpointed,
    copy_data_dir,
    db,
    independent_verify,
    parse_rfc5424,
    record_rows,
)

from sceau.auditlog.export import ExportFormat, iter_export, write_atomic
from sceau.core.audit import record_hash
from sceau.store.db import create_engines
from support import SCEAU, Server, make_server, run_cli

OWNER = "alice@example.com"


@pytest.fixture(scope="module")
def trail(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    """A server with some traffic; yields it (running) and its JWKS file."""
    base = tmp_path_factory.mktemp("trail")
    server = make_server(base, env={"SCEAU_CHECKPOINT_EVERY": "7"})
    app = server.register_app("audited")
    with server.client(app, OWNER) as c:
        for i in range(12):
            _key, env = c.encrypt(f"item {i}".encode(), name=f"doc-{i}")
            c.decrypt(env)
    with server.client(app, "mallory@example.org") as c:
        with pytest.raises(Exception):  # a DENIED record
            c.decrypt(env)
    jwks_path = base / "jwks.json"
    jwks_path.write_text(httpx.get(f"{server.url}/.well-known/jwks.json",
                                   verify=server.cert).text)
    yield server, jwks_path
    if server.proc is not None:
        server.stop()


@pytest.fixture(scope="module")
def stopped(trail: tuple[Server, Path]) -> tuple[Server, Path]:
    """The same server stopped (its final checkpoint written): a quiet store to tamper with."""
    server, jwks = trail
    if server.proc is not None:
        server.stop()
    return server, jwks


def verify_json(*args: str) -> tuple[int, dict[str, Any], str]:
    proc = run_cli("audit", "verify", "--json", *args, check=False)
    return proc.returncode, json.loads(proc.stdout), proc.stderr.decode()


# --- live server: follow ----------------------------------------------------------------------


def test_follow_streams_new_records(trail: tuple[Server, Path], tmp_path: Path) -> None:
    server, jwks = trail
    if server.proc is None:  # run out of order, after the `stopped` fixture
        server.start()
    out = tmp_path / "follow.jsonl"
    proc = subprocess.Popen([*SCEAU, "audit", "export", "--follow", "--poll", "0.2",
                             "--data-dir", str(server.data_dir), "--output", str(out)])
    try:
        app = server.apps[0]
        with server.client(app, OWNER) as c:
            key_id, _env = c.encrypt(b"followed")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            text = out.read_text() if out.exists() else ""
            if key_id in text and '"checkpoint"' in text.split(key_id)[-1]:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the new record and its checkpoint were not streamed")
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
    lines = out.read_text().splitlines()
    # What was streamed verifies on its own, with an independent recomputation.
    nodes = independent_verify(lines, json.loads(jwks.read_text()))
    assert nodes
    rc, report, _ = verify_json("--export", str(out), "--jwks", str(jwks))
    assert rc == 0, report


# --- exports -------------------------------------------------------------------------------


def test_jsonl_export_is_the_stored_lines_and_verifies(
    stopped: tuple[Server, Path], tmp_path: Path
) -> None:
    server, jwks = stopped
    out = tmp_path / "export.jsonl"
    run_cli("audit", "export", "--format", "jsonl", "--data-dir", str(server.data_dir),
            "--output", str(out))
    lines = out.read_text().splitlines()
    conn = db(server.data_dir)
    stored = {line for *_rest, line in record_rows(conn)}
    stored |= {row[0] for row in conn.execute("SELECT line FROM audit_checkpoints")}
    assert set(lines) == stored and len(lines) == len(stored)
    nodes = independent_verify(lines, json.loads(jwks.read_text()))
    rc, report, _ = verify_json("--export", str(out), "--jwks", str(jwks))
    assert rc == 0 and report["nodes"] == nodes
    assert report["records"] == len(record_rows(conn)) and report["checkpoints"] >= 3
    rc, store_report, _ = verify_json("--database-url", f"sqlite:///{server.data_dir}/sceau.db",
                                      "--jwks", str(jwks))
    assert rc == 0 and store_report["nodes"] == nodes


def test_syslog_export_parses_as_rfc5424(stopped: tuple[Server, Path]) -> None:
    server, _jwks = stopped
    proc = run_cli("audit", "export", "--format", "syslog", "--facility", "local4",
                   "--hostname", "soc-feed", "--data-dir", str(server.data_dir))
    jsonl = run_cli("audit", "export", "--data-dir", str(server.data_dir)).stdout
    lines = proc.stdout.decode().splitlines()
    originals = jsonl.decode().splitlines()
    assert len(lines) == len(originals)
    severities = {"GRANTED": 6, "DENIED": 4, "ERROR": 3}
    seen: set[str] = set()
    for line, original in zip(lines, originals, strict=True):
        msg = parse_rfc5424(line)
        obj = json.loads(original)
        assert msg["version"] == "1" and msg["app"] == "sceau"
        assert msg["hostname"] == "soc-feed" and msg["procid"] == obj["node"]
        assert msg["msg"] == "\ufeff" + original
        params = msg["sd"]["sceau@32473"]
        if obj["type"] == "record":
            assert int(msg["pri"]) == 20 * 8 + severities[obj["outcome"]]
            assert msg["msgid"] == obj["action"] and msg["timestamp"] == obj["time"]
            assert params["seq"] == str(obj["seq"]) and params["hash"] == obj["hash"]
            assert json.loads(params["details"]) == obj["details"]
            assert ("user" in params) == (obj["user"] is not None)
            seen.add(obj["outcome"])
        else:
            assert msg["msgid"] == "CHECKPOINT" and int(msg["pri"]) == 20 * 8 + 5
    assert {"GRANTED", "DENIED"} <= seen


# --- tampering ------------------------------------------------------------------------------


Tamper = Callable[[Any, list[tuple[int, str, int, str]], set[tuple[str, int]]], set[int]]


def _middle(rows: list[tuple[int, str, int, str]], cps: set[tuple[str, int]]) -> int:
    """Index of a server record in the middle that no checkpoint names, nor its successor."""
    server_rows = [i for i, r in enumerate(rows) if r[1].startswith("n")]
    for i in server_rows[len(server_rows) // 2:]:
        if (rows[i][1], rows[i][2]) not in cps and (rows[i][1], rows[i][2] + 1) not in cps:
            return i
    raise AssertionError("no uncovered record in the middle")


def edit_field(conn: Any, rows: list[Any], cps: set[Any]) -> set[int]:
    seq, _node, _ns, line = rows[_middle(rows, cps)]
    obj = json.loads(line)
    obj["outcome"] = "DENIED" if obj["outcome"] == "GRANTED" else "GRANTED"
    conn.execute("UPDATE audit_records SET line = ? WHERE seq = ?", (canonical(obj), seq))
    return {seq}


def delete_middle(conn: Any, rows: list[Any], cps: set[Any]) -> set[int]:
    i = _middle(rows, cps)
    conn.execute("DELETE FROM audit_records WHERE seq = ?", (rows[i][0],))
    following = next(r for r in rows[i + 1:] if r[1] == rows[i][1])
    return {following[0]}  # the gap shows at the node's next record


def delete_tail(conn: Any, rows: list[Any], cps: set[Any]) -> set[int]:
    node = rows[-1][1]
    last = [r for r in rows if r[1] == node][-3:]
    assert (node, last[-1][2]) in cps  # the final checkpoint names the last record
    conn.executemany("DELETE FROM audit_records WHERE seq = ?", [(r[0],) for r in last])
    return set()  # reported at the checkpoint line (missing_tail), with no seq


def swap_records(conn: Any, rows: list[Any], cps: set[Any]) -> set[int]:
    i = _middle(rows, cps)
    j = next(k for k in range(i + 1, len(rows)) if rows[k][1] == rows[i][1])
    conn.execute("UPDATE audit_records SET line = ? WHERE seq = ?", (rows[j][3], rows[i][0]))
    conn.execute("UPDATE audit_records SET line = ? WHERE seq = ?", (rows[i][3], rows[j][0]))
    return {rows[i][0], rows[j][0]}


def insert_forged(conn: Any, rows: list[Any], cps: set[Any]) -> set[int]:
    seq, node, node_seq, line = rows[-1]
    forged = json.loads(line)
    forged.update(seq=seq + 1, node_seq=node_seq + 1, prev=forged["hash"],
                  user="someone@example.com", action="DECRYPT", outcome="GRANTED")
    forged["hash"] = record_hash(forged)  # a consistent hash, but the signature is not its own
    conn.execute("INSERT INTO audit_records (seq, node, node_seq, key, hash, line) "
                 "VALUES (?, ?, ?, ?, ?, ?)",
                 (seq + 1, node, node_seq + 1, forged["key"], forged["hash"], canonical(forged)))
    return {seq + 1}


def replace_signature(conn: Any, rows: list[Any], cps: set[Any]) -> set[int]:
    i = _middle(rows, cps)
    obj = json.loads(rows[i][3])
    obj["sig"] = json.loads(rows[i - 1][3])["sig"]
    conn.execute("UPDATE audit_records SET line = ? WHERE seq = ?", (canonical(obj), rows[i][0]))
    return {rows[i][0]}


CASES: dict[str, tuple[Tamper, set[str]]] = {
    "edit_field": (edit_field, {"bad_hash"}),
    "delete_middle": (delete_middle, {"gap"}),
    "delete_tail": (delete_tail, {"missing_tail"}),
    "swap_records": (swap_records, {"gap", "broken_link", "seq_not_increasing"}),
    "insert_forged": (insert_forged, {"bad_signature"}),
    "replace_signature": (replace_signature, {"bad_signature"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_tampering_is_detected(stopped: tuple[Server, Path], tmp_path: Path, case: str) -> None:
    server, jwks = stopped
    tamper, kinds = CASES[case]
    data = copy_data_dir(server.data_dir, tmp_path / "data")
    conn = db(data)
    named = tamper(conn, record_rows(conn), checkpointed(conn))
    conn.close()

    rc, report, stderr = verify_json("--data-dir", str(data))
    assert rc == 1 and not report["ok"]
    first = report["first_problem"]
    assert first["kind"] in kinds, report["problems"]
    if named:
        assert first["seq"] in named
    assert f"line {first['line']}, seq {first['seq']}: {first['kind']}" in stderr

    # The same damage in an export file taken from that store, verified offline.
    engines = create_engines(f"sqlite:///{data / 'sceau.db'}")
    try:
        export = tmp_path / "export.jsonl"
        write_atomic(export, iter_export(engines, ExportFormat.JSONL))
    finally:
        engines.dispose()
    rc, offline, _ = verify_json("--export", str(export), "--jwks", str(jwks))
    assert rc == 1 and offline["first_problem"]["kind"] in kinds
    assert offline["first_problem"]["line"] == first["line"]
    with pytest.raises(AssertionError):
        independent_verify(export.read_text().splitlines(), json.loads(jwks.read_text()))


def test_edited_index_column_is_detected(stopped: tuple[Server, Path], tmp_path: Path) -> None:
    """list-accesses searches the `key` column: editing it would hide a record."""
    server, _jwks = stopped
    data = copy_data_dir(server.data_dir, tmp_path / "data")
    conn = db(data)
    seq = next(r[0] for r in record_rows(conn) if json.loads(r[3])["key"])
    conn.execute("UPDATE audit_records SET key = NULL WHERE seq = ?", (seq,))
    conn.close()
    proc = run_cli("audit", "verify", "--data-dir", str(data), check=False)
    assert proc.returncode == 1
    stdout = proc.stdout.decode()
    assert "FAILED: line " in stdout and f"seq {seq}, node " in stdout and "row_mismatch" in stdout
    assert "records: " in stdout and "node n1: last node_seq " in stdout


def test_export_with_wrong_jwks_fails(stopped: tuple[Server, Path], tmp_path: Path) -> None:
    server, jwks = stopped
    out = tmp_path / "e.jsonl"
    run_cli("audit", "export", "--data-dir", str(server.data_dir), "--output", str(out))
    other = json.loads(jwks.read_text())
    for key in other["keys"]:
        key["kid"] = "other-" + key["kid"]
    (tmp_path / "other.json").write_text(json.dumps(other))
    rc, report, _ = verify_json("--export", str(out), "--jwks", str(tmp_path / "other.json"))
    assert rc == 1 and report["first_problem"]["kind"] == "unknown_kid"
    assert report["first_problem"]["line"] == 1
