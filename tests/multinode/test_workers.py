"""`sceau serve --workers 2`: two worker processes on one port, one store, one keystore.

Each worker leases its own audit node and keeps its own chain; the kernel gives each new
connection to either worker, so every property below is exercised over fresh connections
and the audit trail shows that both nodes served. On SQLite and PostgreSQL.
SECURITY-CASES 9 (replay), 19 (max_decryptions), 16/17 (a change seen at once), 28 (SIGKILL
loses no acknowledged record), across the workers of one service.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from audit_support import records
from sceau.core.b64 import b64u_encode
from sceau.errors import AccessDenied, ReplayedRequest
from sceau.vocab import Op, Reason
from support import STORES, Server, TestApp, backend_server, make_server, run_cli

OWNER = "alice@example.com"
NODES = {"n1", "n2"}
# A burst this wide reaches both workers in practice; a round that does not is run again.
BURST = 16
ROUNDS = 6


@pytest.fixture(scope="module", params=STORES)
def pool(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One `sceau serve --workers 2` (through server.workers) per store."""
    base = tmp_path_factory.mktemp(f"workers-{request.param}")
    with backend_server(request, base, str(request.param), workers=2) as srv:
        yield srv


@pytest.fixture(scope="module")
def app(pool: Server) -> TestApp:
    return pool.register_app("workers-app")


# --- helpers ---------------------------------------------------------------------------------


def log_entries(server: Server, msg: str) -> list[dict[str, Any]]:
    found = []
    for line in server.log().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("msg") == msg:
            found.append(entry)
    return found


def live_workers(server: Server) -> dict[int, str]:
    """pid -> audit node of the workers that reported ready and still run."""
    assert server.proc is not None
    children = set(child_pids(server.proc.pid))
    return {e["pid"]: e["node"] for e in log_entries(server, "worker ready")
            if e["pid"] in children}


def child_pids(parent: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after its ')'.
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == parent and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def post_fresh(server: Server, token: str, op: Op) -> httpx.Response:
    """One call on a connection of its own (so on whichever worker accepts it)."""
    return httpx.post(f"{server.url}/v1/{op.value}", content=token, verify=server.cert,
                      headers={"Content-Type": "application/jose"}, timeout=60)


def at_once(count: int, fn: Callable[[int], Any]) -> list[Any]:
    """``fn(0..count-1)`` in ``count`` threads released together."""
    start = threading.Barrier(count)

    def run(i: int) -> Any:
        start.wait(60)
        return fn(i)

    with concurrent.futures.ThreadPoolExecutor(count) as threads:
        return list(threads.map(run, range(count)))


def nodes_of(server: Server, **match: Any) -> set[str]:
    return {r["node"] for r in records(server) if all(r.get(k) == v for k, v in match.items())}


def verify_names_both(server: Server) -> str:
    out = run_cli("audit", "verify", "--data-dir", str(server.data_dir),
                  env=server.env).stdout.decode()
    for node in NODES:
        assert f"node {node}: last node_seq" in out, out
    return out


# --- the properties ----------------------------------------------------------------------------


def test_each_worker_leases_its_own_node(pool: Server) -> None:
    workers = live_workers(pool)
    assert len(workers) == 2 and set(workers.values()) == NODES
    assert len(log_entries(pool, "serving")) == 2
    assert httpx.get(f"{pool.url}/readyz", verify=pool.cert).json() == {"status": "ready"}


def test_a_replay_is_refused_across_workers(pool: Server, app: TestApp) -> None:
    """SECURITY-CASES 9: the same signed request on BURST connections at once: one answer."""
    seen: set[str] = set()
    with pool.client(app, OWNER) as c:
        c.discover()
        for _ in range(ROUNDS):
            token, jti = c._request(Op.ENCRYPT, {"plaintext": b64u_encode(b"once")}, None, None)
            answers = at_once(BURST, lambda _i, t=token: post_fresh(pool, t, Op.ENCRYPT))
            codes = sorted(r.status_code for r in answers)
            assert codes == [200] + [401] * (BURST - 1)
            granted = next(r for r in answers if r.status_code == 200)
            c._result(Op.ENCRYPT, jti, granted)
            assert {r.json()["code"] for r in answers if r.status_code == 401} == {
                ReplayedRequest.code}
            trail = [r for r in records(pool) if r["req"] == jti]
            assert sorted((r["outcome"], r["reason"]) for r in trail) == (
                [("DENIED", "replayed_request")] * (BURST - 1) + [("GRANTED", None)])
            seen |= {r["node"] for r in trail}
            if seen == NODES:
                break
    assert seen == NODES


def test_max_decryptions_holds_across_workers(pool: Server, app: TestApp) -> None:
    """SECURITY-CASES 19: max_decryptions=5, 20 decrypts at once on fresh connections."""
    seen: set[str] = set()
    for _ in range(ROUNDS):
        with pool.client(app, OWNER) as c:
            key_id, envelope = c.encrypt(b"five times", rules={"max_decryptions": 5})

        def decrypt(_i: int, envelope: bytes = envelope) -> str:
            with pool.client(app, OWNER) as fresh:
                try:
                    assert fresh.decrypt(envelope) == b"five times"
                    return "granted"
                except AccessDenied as refused:
                    return str(refused.reason)

        outcomes = at_once(20, decrypt)
        assert sorted(outcomes) == ["granted"] * 5 + [str(Reason.MAX_DECRYPTIONS_REACHED)] * 15
        with pool.client(app, OWNER) as c:
            assert c.describe_key(key_id)["decryptions"] == 5
        trail = [r for r in records(pool) if r["key"] == key_id and r["action"] == "DECRYPT"]
        assert sorted(r["outcome"] for r in trail) == ["DENIED"] * 15 + ["GRANTED"] * 5
        seen |= {r["node"] for r in trail}
        if seen == NODES:
            break
    assert seen == NODES


def test_a_disable_is_seen_at_once_by_every_worker(pool: Server, app: TestApp) -> None:
    """SECURITY-CASES 16/17: once the disable is answered, no worker grants the key."""
    with pool.client(app, OWNER) as c:
        key_id, envelope = c.encrypt(b"soon disabled")

    def decrypt(_i: int) -> str:
        with pool.client(app, OWNER) as fresh:
            try:
                fresh.decrypt(envelope)
                return "granted"
            except AccessDenied as refused:
                return str(refused.reason)

    # Both workers use the key first (whatever either caches, it has seen it enabled).
    assert at_once(BURST, decrypt) == ["granted"] * BURST
    with pool.client(app, OWNER) as c:
        c.disable_key(key_id)
    after = at_once(BURST, decrypt)
    assert after == [str(Reason.KEY_DISABLED)] * BURST
    trail = [r for r in records(pool) if r["key"] == key_id]
    disable = next(r for r in trail if r["action"] == "DISABLE_KEY")
    later = [r for r in trail if r["action"] == "DECRYPT" and r["seq"] > disable["seq"]]
    assert len(later) == BURST and {r["outcome"] for r in later} == {"DENIED"}
    assert nodes_of(pool, key=key_id, action="DECRYPT") == NODES


def test_every_chain_verifies(pool: Server, app: TestApp) -> None:
    with pool.client(app, OWNER) as c:
        c.encrypt(b"one more")
    verify_names_both(pool)


def test_sigkill_of_a_worker_loses_no_acknowledged_record(pool: Server, app: TestApp) -> None:
    """SECURITY-CASES 28 for workers: one is SIGKILLed under load; every answered call has
    its record; the other serves on; a replacement continues the dead one's chain; then a
    SIGTERM to the parent stops everything cleanly."""
    assert pool.proc is not None
    before = live_workers(pool)
    assert len(before) == 2
    victim, victim_node = next(iter(before.items()))
    survivor_node = (NODES - {victim_node}).pop()
    acknowledged: list[tuple[str, bool]] = []  # (jti, sent after the kill)
    failures: list[str] = []
    stop = threading.Event()
    killed = threading.Event()

    def load() -> None:
        with pool.client(app, OWNER) as c:
            c.discover()
            while not stop.is_set():
                after_kill = killed.is_set()
                token, jti = c._request(Op.ENCRYPT, {"plaintext": b64u_encode(b"x")}, None, None)
                try:
                    response = post_fresh(pool, token, Op.ENCRYPT)
                except httpx.HTTPError as exc:  # a connection the killed worker held
                    failures.append(type(exc).__name__)
                    continue
                if response.status_code == 200:
                    c._result(Op.ENCRYPT, jti, response)
                    acknowledged.append((jti, after_kill))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        _wait(lambda: len(acknowledged) >= 40, "40 calls answered before the kill")
        os.kill(victim, signal.SIGKILL)
        killed.set()
        _wait(lambda: _replaced(live_workers(pool), victim), "a replacement worker ready")
        count = len(acknowledged)
        _wait(lambda: len(acknowledged) >= count + 20, "calls answered after the replacement")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    exits = [e for e in log_entries(pool, "worker exited unexpectedly") if e["pid"] == victim]
    assert [(e["node"], e["status"]) for e in exits] == [(victim_node, -signal.SIGKILL)]
    replaced = live_workers(pool)
    assert sorted(replaced.values()) == sorted(NODES)  # the dead node's chain goes on
    stored = {r["req"]: r["node"] for r in records(pool)}
    assert [jti for jti, _ in acknowledged if jti not in stored] == []
    after = [stored[jti] for jti, late in acknowledged if late]
    assert survivor_node in after and victim_node in after  # the survivor, then both
    verify_names_both(pool)

    workers = list(replaced)
    assert pool.stop(signal.SIGTERM, timeout=60) == 0
    assert [pid for pid in workers if alive(pid)] == []
    assert log_entries(pool, "worker failed to stop cleanly") == []
    pool.start()  # the fixture stops it again
    assert len(live_workers(pool)) == 2


def _replaced(workers: dict[int, str], victim: int) -> bool:
    return len(workers) == 2 and victim not in workers


def _wait(done: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


# --- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "env"), [
    (("--workers", "0"), {}),
    (("--workers", "-1"), {}),
    ((), {"SCEAU_WORKERS": "0"}),
    ((), {"SCEAU_WORKERS": "many"}),
])
def test_a_worker_count_below_one_is_refused(tmp_path: Path, args: tuple[str, ...],
                                            env: dict[str, str]) -> None:
    data = tmp_path / "d"
    run_cli("init", "--data-dir", str(data), env={"SCEAU_DATABASE_URL": ""})
    proc = run_cli("serve", "--data-dir", str(data), *args, env={"SCEAU_DATABASE_URL": "", **env},
                   check=False, timeout=60)
    err = proc.stderr.decode()
    assert proc.returncode != 0
    assert err.startswith("sceau: error: configuration: server.workers"), err
    assert 'expected an integer of at least 1, or "auto"' in err and "Traceback" not in err


def test_a_pinned_node_id_goes_on_in_worker_one(tmp_path: Path) -> None:
    """audit.node_id with 2 workers: worker 1 writes the pinned chain, worker 2 ``ID.2``."""
    server = make_server(tmp_path, env={"SCEAU_DATABASE_URL": "", "SCEAU_NODE_ID": "eu-1"},
                         workers=2)
    try:
        assert sorted(live_workers(server).values()) == ["eu-1", "eu-1.2"]
        app = server.register_app()
        for _ in range(4):
            with server.client(app, OWNER) as c:
                c.encrypt(b"pinned")
    finally:
        assert server.stop() == 0
    too_long = {"SCEAU_DATABASE_URL": "", "SCEAU_NODE_ID": "x" * 63}
    proc = run_cli("serve", "--data-dir", str(server.data_dir), "--workers", "2",
                   env={**server.env, **too_long}, check=False, timeout=60)
    assert proc.returncode != 0
    assert "audit.node_id: with 2 workers" in proc.stderr.decode()
