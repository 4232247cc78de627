"""Cutting the trail (SECURITY-CASES 48), end to end on real servers and stores.

The attacks are done with SQL on a real server's database (SQLite, PostgreSQL, and SQLite on
a PKCS#11 token): the last records of a node cut with their checkpoints, a whole node
removed, and a node restarted from an older head. `sceau audit verify` alone says OK for
each; `--witness` fails naming the node, and the server refuses to continue such a chain.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from auditlog_support import parse_rfc5424

from sceau.auditlog.export import ExportFormat, iter_export, write_atomic
from sceau.errors import AuditUnavailable
from sceau.store.db import create_engines
from support import BACKENDS, Server, new_backend_server, run_cli

OWNER = "alice@example.com"


# --- helpers -------------------------------------------------------------------------------------


def new_server(request: pytest.FixtureRequest, base: Path, backend: str,
               env: dict[str, str] | None = None, *, start: bool = True) -> Server:
    """A fresh server on ``backend``, as the conftest `server` fixture makes them."""
    return new_backend_server(request, base, backend, env=env, start=start)


def sql(server: Server, *statements: str) -> None:
    engines = create_engines(server.config().database_url)
    try:
        with engines.write.begin() as conn:
            for statement in statements:
                conn.execute(sa.text(statement))
    finally:
        engines.dispose()


def rows(server: Server, statement: str) -> list[Any]:
    engines = create_engines(server.config().database_url)
    try:
        with engines.read.connect() as conn:
            return list(conn.execute(sa.text(statement)))
    finally:
        engines.dispose()


def verify(server: Server, *args: str) -> tuple[int, dict[str, Any], str]:
    proc = run_cli("audit", "verify", "--json", "--data-dir", str(server.data_dir), *args,
                   env=server.env, check=False)
    return proc.returncode, json.loads(proc.stdout), proc.stderr.decode()


def witnessed(server: Server, node: str) -> list[dict[str, Any]]:
    path = server.data_dir / "witness" / f"{node}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_node(server: Server, node: str, calls: int, **env: str) -> None:
    """Serve as audit node ``node`` for ``calls`` encrypt calls, then stop (final checkpoint)."""
    saved = dict(server.env)
    server.env.update(SCEAU_NODE_ID=node, **env)
    try:
        server.start()
        with server.client(server.apps[0], OWNER) as c:
            for i in range(calls):
                c.encrypt(f"{node} {i}".encode())
        server.stop()
    finally:
        server.env.clear()
        server.env.update(saved)


def refused_start(server: Server, node: str) -> str:
    """Start as ``node``; the server must exit. Returns what it logged."""
    saved = dict(server.env)
    server.env["SCEAU_NODE_ID"] = node
    before = len(server.log())
    try:
        server.start(wait=False)
        assert server.proc is not None
        code = server.proc.wait(60)
        server.proc = None
    finally:
        server.env.clear()
        server.env.update(saved)
    assert code != 0
    return server.log()[before:]


def kinds_by_node(report: dict[str, Any]) -> dict[str | None, set[str]]:
    out: dict[str | None, set[str]] = {}
    for problem in report["problems"]:
        out.setdefault(problem["node"], set()).add(problem["kind"])
    return out


# --- the three cuts, on every backend ------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_cutting_the_trail_is_detected_and_refused(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    server = new_server(request, tmp_path, backend, {"SCEAU_CHECKPOINT_EVERY": "2"}, start=False)
    server.register_app("witnessed")
    for node in ("a", "b", "c"):
        run_node(server, node, 5)
        assert [cp["node_seq"] for cp in witnessed(server, node)][-1] == 5
    rc, clean, _ = verify(server, "--witness", str(server.data_dir / "witness"))
    assert rc == 0, clean["problems"]
    assert set(clean["registry"]["nodes"]) == {"a", "b", "c", "cli1"}

    # a: its last two records cut, with their checkpoints.
    sql(server, "DELETE FROM audit_records WHERE node = 'a' AND node_seq > 3",
        "DELETE FROM audit_checkpoints WHERE node = 'a' AND node_seq > 3")
    # b: removed entirely, its registry row too.
    sql(server, "DELETE FROM audit_records WHERE node = 'b'",
        "DELETE FROM audit_checkpoints WHERE node = 'b'",
        "DELETE FROM audit_nodes WHERE node = 'b'")
    # c: cut, then served again by a process that does not see the witness: it forks.
    sql(server, "DELETE FROM audit_records WHERE node = 'c' AND node_seq > 3",
        "DELETE FROM audit_checkpoints WHERE node = 'c' AND node_seq > 3")
    run_node(server, "c", 3, SCEAU_AUDIT_WITNESS_DIR=str(tmp_path / "elsewhere"))

    # The trail alone still verifies: that is the attack.
    rc, alone, _ = verify(server)
    assert rc == 0, alone["problems"]

    witness_dir = str(server.data_dir / "witness")
    rc, report, stderr = verify(server, "--witness", witness_dir)
    assert rc == 1
    found = kinds_by_node(report)
    assert found == {"a": {"behind_witness"}, "b": {"node_removed"}, "c": {"witness_mismatch"}}
    a_problem = next(p for p in report["problems"] if p["node"] == "a")
    assert "stops at node_seq 3" in a_problem["message"]
    assert "node_seq 5" in a_problem["message"] and "a.jsonl" in a_problem["message"]
    assert "audit verification failed" in stderr and "node " in stderr

    # The same from an export of the store, offline.
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(_jwks(server)))
    export = tmp_path / "export.jsonl"
    engines = create_engines(server.config().database_url)
    try:
        write_atomic(export, iter_export(engines, ExportFormat.JSONL))
    finally:
        engines.dispose()
    proc = run_cli("audit", "verify", "--json", "--export", str(export), "--jwks", str(jwks),
                   "--witness", witness_dir, check=False)
    assert proc.returncode == 1
    offline = json.loads(proc.stdout)
    assert kinds_by_node(offline) == found and offline["registry"] is None

    # The service refuses to continue any of the three chains.
    log = refused_start(server, "a")
    assert "audit node a: the store stops at node_seq 3" in log and "saw node_seq 5" in log
    log = refused_start(server, "b")
    assert "audit node b: the store holds no record of it" in log and "node_seq 5" in log
    log = refused_start(server, "c")
    assert "audit node c: the store's record at node_seq" in log
    assert "rewritten from an older head" in log
    # Nothing was written by the refused starts.
    assert rows(server, "SELECT count(*) FROM audit_records WHERE node = 'b'")[0][0] == 0


def _jwks(server: Server) -> dict[str, Any]:
    from hsm_support import token_env_here
    from sceau.keystore import open_keystore
    from sceau.service.runtime import keystore_settings

    with token_env_here(server.env), open_keystore(keystore_settings(server.config())) as ks:
        return ks.public_jwks()


# --- a clean trail, its windows, and the registry (shared server per backend) --------------------


def test_clean_trail_verifies_with_its_witness_and_shows_the_window(
    server: Server, tmp_path: Path
) -> None:
    app = server.register_app("window")
    with server.client(app, OWNER) as c:
        for i in range(3):
            c.encrypt(f"w {i}".encode())
    witness = str(server.data_dir / "witness")
    # Checkpoints come within SCEAU_CHECKPOINT_INTERVAL_S (2 s) of the last record.
    deadline = time.monotonic() + 20
    while True:
        rc, report, _ = verify(server, "--witness", witness)
        assert rc == 0, report["problems"]
        windows = report["witness"]["windows"]
        if windows["n1"]["unprotected_records"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    n1 = windows["n1"]
    assert n1["unprotected_records"] == 0 and n1["witnessed_node_seq"] == report["nodes"]["n1"]
    assert report["registry"]["seals_checked"] is True
    assert report["registry"]["nodes"]["n1"] == {"kind": "server", "seal": "ok"}
    assert report["registry"]["nodes"]["cli1"]["kind"] == "cli"

    # A witness taken earlier (a copy of the file now) leaves the next records unprotected.
    earlier = tmp_path / "earlier.jsonl"
    earlier.write_text((server.data_dir / "witness" / "n1.jsonl").read_text())
    with server.client(app, OWNER) as c:
        for i in range(2):
            c.encrypt(f"after {i}".encode())
    proc = run_cli("audit", "verify", "--data-dir", str(server.data_dir), "--witness",
                   str(earlier), env=server.env, check=False)
    text = proc.stdout.decode()
    assert proc.returncode == 0, text
    line = next(x for x in text.splitlines() if x.startswith("unprotected n1: "))
    assert "2 record(s) after witnessed node_seq " in line and "(seq " in line
    assert "registry: " in text and "seals verified" in text
    assert text.rstrip().endswith("OK: every hash, signature, link and checkpoint verifies, "
                                  "and the trail reaches every witnessed position")


def test_registry_rows_written_outside_sceau_fail_their_seal(server: Server) -> None:
    saved = rows(server, "SELECT node, kind, registered_at, seal FROM audit_nodes "
                         "WHERE node = 'n1'")[0]
    try:
        sql(server, "INSERT INTO audit_nodes (node, kind, registered_at, seal) "
                    "VALUES ('n99', 'server', 1, NULL)",
            "UPDATE audit_nodes SET kind = 'cli' WHERE node = 'n1'")
        rc, report, _ = verify(server)
        assert rc == 1
        found = kinds_by_node(report)
        assert found["n99"] == {"registry_seal"} and found["n1"] == {"registry_seal"}
        assert report["registry"]["nodes"]["n1"]["seal"] == "bad"
        sql(server, "DELETE FROM audit_nodes WHERE node IN ('n1', 'n99')")
        rc, report, _ = verify(server)
        assert rc == 1 and kinds_by_node(report) == {"n1": {"unregistered_node"}}
    finally:
        engines = create_engines(server.config().database_url)
        try:
            with engines.write.begin() as conn:
                conn.execute(sa.text("DELETE FROM audit_nodes WHERE node IN ('n1', 'n99')"))
                conn.execute(sa.text("INSERT INTO audit_nodes (node, kind, registered_at, seal)"
                                     " VALUES (:n, :k, :r, :s)"),
                             {"n": saved[0], "k": saved[1], "r": saved[2], "s": saved[3]})
        finally:
            engines.dispose()
    rc, report, _ = verify(server)
    assert rc == 0, report["problems"]


def test_a_registered_node_with_nothing_left_is_reported_without_a_witness(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    server = new_server(request, tmp_path, "sqlite", start=False)
    server.register_app("gone")
    run_node(server, "z", 2)
    sql(server, "DELETE FROM audit_records WHERE node = 'z'",
        "DELETE FROM audit_checkpoints WHERE node = 'z'")
    rc, report, _ = verify(server)
    assert rc == 1 and kinds_by_node(report) == {"z": {"node_removed"}}
    log = refused_start(server, "z")
    assert "audit node z is registered (it wrote records) but the store holds no record" in log


# --- the syslog stream ---------------------------------------------------------------------------


class Listener:
    """A loopback syslog collector (UDP datagrams or LF-framed TCP) keeping every message."""

    def __init__(self, transport: str) -> None:
        self.transport = transport
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.bind(("127.0.0.1", 0))
        if transport == "tcp":
            self.sock.listen()
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"{self.transport}://127.0.0.1:{self.port}"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.transport == "udp":
                    data, _peer = self.sock.recvfrom(65536)
                    self.messages.append(data.decode("utf-8"))
                else:
                    conn, _peer = self.sock.accept()
                    threading.Thread(target=self._read, args=(conn,), daemon=True).start()
            except TimeoutError:
                continue
            except OSError:
                return

    def _read(self, conn: socket.socket) -> None:
        buffer = b""
        with conn:
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                self.messages.extend(line.decode("utf-8") for line in lines)

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(5)


@pytest.fixture(params=["udp", "tcp"])
def listener(request: pytest.FixtureRequest) -> Iterator[Listener]:
    found = Listener(request.param)
    yield found
    found.close()


def test_checkpoints_reach_the_syslog_stream_and_a_capture_witnesses(
    request: pytest.FixtureRequest, tmp_path: Path, listener: Listener
) -> None:
    server = new_server(request, tmp_path, "sqlite", {
        "SCEAU_CHECKPOINT_EVERY": "2", "SCEAU_AUDIT_WITNESS_SYSLOG": listener.url,
        "SCEAU_AUDIT_WITNESS_SYSLOG_FACILITY": "local4",
    })
    app = server.register_app("soc")
    with server.client(app, OWNER) as c:
        for i in range(5):
            c.encrypt(f"soc {i}".encode())
    server.stop()
    lines = (server.data_dir / "witness" / "n1.jsonl").read_text().splitlines()
    deadline = time.monotonic() + 10
    messages: list[str] = []
    while len(messages) < len(lines) and time.monotonic() < deadline:
        time.sleep(0.1)
        messages = [m for m in listener.messages if " n1 CHECKPOINT " in m]
    assert len(messages) == len(lines) == 3
    for message, line in zip(messages, lines, strict=True):
        parsed = parse_rfc5424(message)
        assert parsed["msgid"] == "CHECKPOINT" and parsed["procid"] == "n1"
        assert int(parsed["pri"]) == 20 * 8 + 5  # local4, notice
        assert parsed["msg"] == "\ufeff" + line  # the exact witnessed line
        assert parsed["sd"]["sceau@32473"]["node_seq"] == str(json.loads(line)["node_seq"])

    # What the SOC captured is a witness of its own, with or without the BOM kept.
    capture = tmp_path / "capture.log"
    capture.write_text("some other daemon: hello\n"
                       + "\n".join(m.replace("\ufeff", "") for m in listener.messages) + "\n")
    rc, report, _ = verify(server, "--witness", str(capture))
    assert rc == 0, report["problems"]
    assert report["witness"]["positions"] >= 3 and report["witness"]["unreadable_lines"] == 1
    sql(server, "DELETE FROM audit_records WHERE node = 'n1' AND node_seq > 2",
        "DELETE FROM audit_checkpoints WHERE node = 'n1' AND node_seq > 2")
    rc, report, _ = verify(server, "--witness", str(capture))
    assert rc == 1 and kinds_by_node(report) == {"n1": {"behind_witness"}}


# --- a witness that cannot be written fails closed -----------------------------------------------


def test_an_unwritable_witness_makes_the_node_unready_and_refuse_calls(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    server = new_server(request, tmp_path, "sqlite", {"SCEAU_CHECKPOINT_EVERY": "1"})
    app = server.register_app("closed")
    target = server.data_dir / "witness" / "n1.jsonl"
    with server.client(app, OWNER) as c:
        c.encrypt(b"before")
        target.unlink()
        target.mkdir()  # root ignores modes; a directory refuses every append
        c.encrypt(b"committed, its checkpoint not witnessed")
        # 5xx answers carry the code and title only; the cause is in the node's log.
        with pytest.raises(AuditUnavailable):
            c.encrypt(b"refused")
        ready = httpx.get(f"{server.url}/readyz", verify=server.cert)
        assert ready.status_code == 503 and ready.json()["problems"] == ["audit"]
        target.rmdir()
        deadline = time.monotonic() + 15
        while httpx.get(f"{server.url}/readyz", verify=server.cert).status_code != 200:
            assert time.monotonic() < deadline, "the node did not recover"
            time.sleep(0.2)
        c.encrypt(b"after")
    assert "not witnessed" in server.log()
    server.stop()
    rc, report, _ = verify(server, "--witness", str(server.data_dir / "witness"))
    assert rc == 0, report["problems"]


# --- a second Sceau as countersigning witness -----------------------------------------------------


def test_a_second_sceau_keeps_and_countersigns_every_checkpoint(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    from jwcrypto import jwk, jws

    peer = new_server(request, tmp_path / "payroll", "sqlite", {"SCEAU_CHECKPOINT_EVERY": "2"},
                      start=False)
    peers_dir = tmp_path / "peers"
    peers_dir.mkdir()
    (peers_dir / "payroll.json").write_text(json.dumps(_jwks(peer)))
    witness = new_server(request, tmp_path / "witness", "sqlite",
                         {"SCEAU_AUDIT_WITNESS_PEERS_DIR": str(peers_dir)})
    url = f"{witness.url}/witness/v1/checkpoint"
    peer.env.update(SCEAU_AUDIT_WITNESS_URL=url, SCEAU_AUDIT_WITNESS_URL_CA=witness.cert)
    app = peer.register_app("countersigned")
    peer.start()
    with peer.client(app, OWNER) as c:
        for i in range(5):
            c.encrypt(f"p {i}".encode())
    peer.stop()

    kept_dir = witness.data_dir / "witness" / "peers" / "payroll"
    local = [json.loads(x) for x in (peer.data_dir / "witness" / "n1.jsonl").read_text().split()]
    checkpoints = [o for o in local if o["type"] == "checkpoint"]
    countersigned = [o for o in local if o["type"] == "countersignature"]
    kept = [json.loads(x) for x in (kept_dir / "n1.jsonl").read_text().split()]
    assert kept == checkpoints and len(checkpoints) == 3
    witness_jwks = httpx.get(f"{witness.url}/.well-known/jwks.json", verify=witness.cert).json()
    keys = {k["kid"]: k for k in witness_jwks["keys"]}
    assert [c["node_seq"] for c in countersigned] == [c["node_seq"] for c in checkpoints]
    for receipt, checkpoint in zip(countersigned, checkpoints, strict=True):
        token = jws.JWS()
        token.deserialize(receipt["jws"])
        header = token.jose_header
        assert header["typ"] == "sceau-countersign+jwt"
        token.verify(jwk.JWK(**keys[header["kid"]]))  # raises unless the witness signed it
        claims = json.loads(token.payload)
        line = json.dumps(checkpoint, sort_keys=True, separators=(",", ":"))
        assert claims["iss"] == witness.url and claims["peer"] == "payroll"
        assert (claims["node"], claims["node_seq"], claims["hash"]) == (
            "n1", checkpoint["node_seq"], checkpoint["hash"])
        assert claims["checkpoint"] == hashlib.sha256(line.encode()).hexdigest()

    rc, report, _ = verify(peer, "--witness", str(peer.data_dir / "witness"))
    assert rc == 0 and report["witness"]["countersignatures"] >= 3
    # The peer's host is compromised too: its tail cut and its local witness wiped. The
    # copy the other service keeps still shows the cut.
    sql(peer, "DELETE FROM audit_records WHERE node = 'n1' AND node_seq > 2",
        "DELETE FROM audit_checkpoints WHERE node = 'n1' AND node_seq > 2")
    shutil.rmtree(peer.data_dir / "witness")
    rc, report, _ = verify(peer, "--witness", str(kept_dir))
    assert rc == 1 and kinds_by_node(report) == {"n1": {"behind_witness"}}

    # Only a peer's signed checkpoint is kept and countersigned: not the witness's own.
    witness.register_app("own")  # the witness's cli1 writes and checkpoints
    with witness.http() as http:
        forged = dict(checkpoints[-1], node_seq=99)
        own = (witness.data_dir / "witness").glob("*.jsonl")
        own_line = next(x for f in own for x in f.read_text().split())
        for body in (json.dumps(forged), own_line, "{}", json.dumps(local[0])[:-5]):
            answer = http.post(url, content=body, headers={"Content-Type": "application/json"})
            assert answer.status_code == 400, body
            assert answer.json()["error"] == "invalid_request"
        too_big = http.post(url, content=b"{" + b" " * 10_000 + b"}")
        assert too_big.status_code == 413
    assert [json.loads(x) for x in (kept_dir / "n1.jsonl").read_text().split()] == kept
    witness.stop()


def test_an_unreachable_remote_witness_is_logged_and_does_not_stop_calls(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = new_server(request, tmp_path, "sqlite", {
        "SCEAU_CHECKPOINT_EVERY": "1", "SCEAU_AUDIT_WITNESS_SYSLOG": f"tcp://127.0.0.1:{port}",
    })
    app = server.register_app("open")
    with server.client(app, OWNER) as c:
        for i in range(3):
            c.encrypt(f"o {i}".encode())
    assert httpx.get(f"{server.url}/readyz", verify=server.cert).status_code == 200
    server.stop()
    log = server.log()
    assert f"audit witness tcp://127.0.0.1:{port} unreachable (ConnectionRefusedError)" in log
    assert "not delivered at shutdown" in log
    # The local witness took every checkpoint all along.
    rc, report, _ = verify(server, "--witness", str(server.data_dir / "witness"))
    assert rc == 0 and report["witness"]["windows"]["n1"]["unprotected_records"] == 0


def test_db_upgrade_registers_the_nodes_that_wrote_before_the_registry(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    server = new_server(request, tmp_path, "sqlite", start=False)
    server.register_app("legacy")  # cli1 writes, and registers
    run_node(server, "n1", 2)
    sql(server, "DELETE FROM audit_nodes")  # as a store from before schema 0003 has it
    rc, report, _ = verify(server)
    assert rc == 1 and kinds_by_node(report) == {"cli1": {"unregistered_node"},
                                                 "n1": {"unregistered_node"}}
    out = run_cli("db", "upgrade", "--data-dir", str(server.data_dir), env=server.env)
    assert "audit_nodes 2" in out.stdout.decode()
    rc, report, _ = verify(server, "--witness", str(server.data_dir / "witness"))
    assert rc == 0, report["problems"]
    assert report["registry"]["nodes"] == {"cli1": {"kind": "cli", "seal": "ok"},
                                           "n1": {"kind": "server", "seal": "ok"}}
    upgrade = [r for r in rows(server, "SELECT line FROM audit_records")
               if '"ROWS_SEALED"' in r[0]]
    assert json.loads(upgrade[-1][0])["details"] == {
        "trust_on_upgrade": {"audit_nodes": ["cli1", "n1"]}}
    again = run_cli("db", "upgrade", "--data-dir", str(server.data_dir), env=server.env)
    assert "audit_nodes" not in again.stdout.decode()
