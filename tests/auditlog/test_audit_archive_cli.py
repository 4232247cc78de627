"""`sceau audit archive`: retention with signed anchors; verification across the boundary."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from auditlog_support import db, independent_verify

from support import make_server, run_cli

OWNER = "alice@example.com"


@pytest.fixture(scope="module")
def archived(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A running server whose older records were archived while it served."""
    base = tmp_path_factory.mktemp("archive")
    server = make_server(base, env={"SCEAU_CHECKPOINT_EVERY": "5"})
    app = server.register_app("retained")
    with server.client(app, OWNER) as c:
        for i in range(17):
            c.encrypt(f"old {i}".encode())
    jwks = base / "jwks.json"
    jwks.write_text(httpx.get(f"{server.url}/.well-known/jwks.json", verify=server.cert).text)
    before = int(db(server.data_dir).execute("SELECT max(seq) FROM audit_records").fetchone()[0])
    archive = base / "archive-1.jsonl"
    proc = run_cli("audit", "archive", "--before", str(before + 1), "--output", str(archive),
                   "--json", "--data-dir", str(server.data_dir))
    result = json.loads(proc.stdout)
    with server.client(app, OWNER) as c:  # the service goes on after the archive
        for i in range(3):
            c.encrypt(f"new {i}".encode())
    rest = base / "rest.jsonl"  # the store's export after the archive
    run_cli("audit", "export", "--data-dir", str(server.data_dir), "--output", str(rest))
    yield {"server": server, "jwks": jwks, "archive": archive, "result": result, "base": base,
           "rest": rest}
    server.stop()


def _verify(*args: str) -> tuple[int, dict[str, Any]]:
    proc = run_cli("audit", "verify", "--json", *args, check=False)
    return proc.returncode, json.loads(proc.stdout)


def test_archive_moves_a_checkpointed_prefix(archived: dict[str, Any]) -> None:
    result, server = archived["result"], archived["server"]
    conn = db(server.data_dir)
    lowest = conn.execute("SELECT min(seq) FROM audit_records").fetchone()[0]
    assert lowest == result["through_seq"] + 1
    assert result["records"] == result["through_seq"]  # seq 1.. all archived (SQLite: no gaps)
    # Per node, the archive ends on a signed checkpoint that stays in the store as anchor.
    assert set(result["anchors"]) == {"n1", "cli1"}
    for node, anchor in result["anchors"].items():
        row = conn.execute("SELECT line FROM audit_checkpoints WHERE node = ? AND node_seq = ?",
                           (node, anchor["node_seq"])).fetchone()
        assert json.loads(row[0])["hash"] == anchor["hash"]
    lines = archived["archive"].read_text().splitlines()
    assert json.loads(lines[-1])["type"] == "checkpoint"
    record = json.loads(conn.execute(
        "SELECT line FROM audit_records WHERE seq = ?", (result["audit_seq"],)).fetchone()[0])
    assert record["action"] == "AUDIT_ARCHIVE" and record["outcome"] == "GRANTED"
    assert record["details"]["anchors"] == result["anchors"]
    assert record["details"]["sha256"] == result["sha256"]


def test_store_alone_archive_alone_and_both_verify(archived: dict[str, Any]) -> None:
    server, jwks, archive = archived["server"], archived["jwks"], archived["archive"]
    rc, store_report = _verify("--data-dir", str(server.data_dir))
    assert rc == 0, store_report["problems"]
    anchors = {a["node"]: a for a in store_report["anchors"]}
    assert set(anchors) == {"n1", "cli1"}
    assert all(a["confirmed_by_seq"] == archived["result"]["audit_seq"] for a in anchors.values())

    rc, archive_report = _verify("--export", str(archive), "--jwks", str(jwks))
    assert rc == 0 and archive_report["anchors"] == []
    assert archive_report["records"] == archived["result"]["records"]

    rest = archived["rest"]
    rc, rest_report = _verify("--export", str(rest), "--jwks", str(jwks))
    assert rc == 0 and rest_report["nodes"] == store_report["nodes"]

    both = archived["base"] / "both.jsonl"
    both.write_text(archive.read_text() + rest.read_text())
    rc, both_report = _verify("--export", str(both), "--jwks", str(jwks))
    assert rc == 0 and both_report["anchors"] == []
    assert both_report["records"] == archive_report["records"] + rest_report["records"]
    nodes = independent_verify(both.read_text().splitlines(), json.loads(jwks.read_text()))
    assert nodes == both_report["nodes"]


def test_a_cut_head_is_not_taken_for_an_archive(archived: dict[str, Any]) -> None:
    """A stream starting at a checkpoint no AUDIT_ARCHIVE record lists is reported."""
    jwks, base, rest = archived["jwks"], archived["base"], archived["rest"]
    lines = archived["archive"].read_text().splitlines() + rest.read_text().splitlines()
    objs = [json.loads(line) for line in lines]
    n1_cp = next(i for i, o in enumerate(objs)
                 if o["type"] == "checkpoint" and o["node"] == "n1" and o["node_seq"] == 5)
    cli_cp = next(i for i, o in enumerate(objs)
                  if o["type"] == "checkpoint" and o["node"] == "cli1")
    assert cli_cp < n1_cp
    cut = base / "cut.jsonl"
    cut.write_text("\n".join([lines[n1_cp], lines[cli_cp], *lines[n1_cp + 1:]]) + "\n")
    rc, report = _verify("--export", str(cut), "--jwks", str(jwks))
    assert rc == 1
    first = report["first_problem"]
    assert (first["kind"], first["node"], first["line"]) == ("unconfirmed_anchor", "n1", 1)
    start = base / "start.jsonl"
    start.write_text(lines[n1_cp] + "\n")
    rc, report = _verify("--export", str(cut), "--jwks", str(jwks),
                         "--start-checkpoint", str(start))
    assert rc == 0, report["problems"]


def test_nothing_left_to_archive_is_an_error(archived: dict[str, Any]) -> None:
    server, base = archived["server"], archived["base"]
    proc = run_cli("audit", "archive", "--before", "2", "--output", str(base / "none.jsonl"),
                   "--data-dir", str(server.data_dir), check=False)
    assert proc.returncode == 1 and b"nothing to archive" in proc.stderr
    assert not (base / "none.jsonl").exists()


def test_archived_records_are_not_taken_for_a_cut(archived: dict[str, Any]) -> None:
    """The witness saw records the archive removed: neither verify nor a restart objects."""
    server = archived["server"]
    witness = server.data_dir / "witness"
    seen = [json.loads(line)["node_seq"] for line in (witness / "n1.jsonl").read_text().split()]
    lowest = db(server.data_dir).execute(
        "SELECT min(node_seq) FROM audit_records WHERE node = 'n1'").fetchone()[0]
    assert min(seen) < lowest  # the witness holds positions that were archived
    rc, report = _verify("--data-dir", str(server.data_dir), "--witness", str(witness))
    assert rc == 0, report["problems"]
    server.restart()  # the start-up check accepts a chain whose beginning was archived
    rc, report = _verify("--data-dir", str(server.data_dir), "--witness", str(witness))
    assert rc == 0, report["problems"]
