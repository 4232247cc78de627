"""Two `sceau serve` processes on one PostgreSQL database, as behind a load balancer.

Both nodes share the data dir (keystore, TLS certificate, configuration) and one service id,
so a token is valid on either; each leases its own audit node id and keeps its own chain.
SECURITY-CASES 9 (replay across nodes), 16, 17 and 19 (concurrent policy and counters across
nodes), 28 (SIGKILL loses no acknowledged record).
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from sceau.core.b64 import b64u_encode
from sceau.core.verify import verify_lines
from sceau.errors import AccessDenied, ReplayedRequest, SceauError
from sceau.store.audit import iter_audit_lines
from sceau.store.db import create_engines
from sceau.vocab import AppStatus, Op, Reason
from support import PostgresDatabases, Server, TestApp, free_port, make_server, run_cli

SERVICE_ID = "https://sceau.cluster.test"
OWNER = "alice@example.com"
RECIPIENT = "bob@example.com"


@dataclass
class Cluster:
    a: Server
    b: Server
    app: TestApp
    database_url: str

    @property
    def nodes(self) -> tuple[Server, Server]:
        return self.a, self.b


@pytest.fixture(scope="module")
def cluster(postgres_databases: PostgresDatabases,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("cluster")
    url = postgres_databases.create()
    env = {"SCEAU_DATABASE_URL": url, "SCEAU_SERVICE_ID": SERVICE_ID}
    a = make_server(base, env=env, start=False)
    b = Server(data_dir=a.data_dir, port=free_port(), env={**a.env, "SCEAU_PORT": ""},
               log_path=base / "server-b.log")
    b.env["SCEAU_PORT"] = str(b.port)
    # One after the other, so that A leases n1 and B n2 (the tests name the chains).
    a.start()
    b.start()
    app = a.register_app("cluster-app")
    yield Cluster(a=a, b=b, app=app, database_url=url)
    for node in (a, b):
        if node.proc is not None:
            node.stop()
    postgres_databases.drop(url)


def client(node: Server, app: TestApp, user: str = OWNER) -> Any:
    return node.client(app, user, service_id=SERVICE_ID)


def stored_lines(url: str) -> list[str]:
    engines = create_engines(url)
    try:
        with engines.read.connect() as conn:
            return [line for _seq, _kind, line in iter_audit_lines(conn)]
    finally:
        engines.dispose()


def stored_records(url: str) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in stored_lines(url)]
    return [r for r in records if r["type"] == "record"]


def verify_cluster(cluster: Cluster) -> Any:
    """Both chains verify offline: `sceau audit verify` on the store, and verify_lines."""
    jwks = httpx.get(f"{cluster.b.url}/.well-known/jwks.json", verify=cluster.b.cert).json()
    report = verify_lines(stored_lines(cluster.database_url), jwks)
    assert report.ok, report.first_problem
    run_cli("audit", "verify", "--data-dir", str(cluster.a.data_dir), env=cluster.a.env)
    return report


def post_raw(node: Server, token: str, op: Op) -> httpx.Response:
    return httpx.post(f"{node.url}/v1/{op.value}", content=token, verify=node.cert,
                      headers={"Content-Type": "application/jose"}, timeout=30)


def test_each_node_leases_its_own_chain(cluster: Cluster) -> None:
    ready = [httpx.get(f"{n.url}/readyz", verify=n.cert).json() for n in cluster.nodes]
    assert ready == [{"status": "ready"}] * 2
    assert sorted(n.node_id() for n in cluster.nodes) == ["n1", "n2"]
    discovered = {httpx.get(f"{n.url}/.well-known/sceau-configuration", verify=n.cert)
                  .json()["service_id"] for n in cluster.nodes}
    assert discovered == {SERVICE_ID}


def test_work_started_on_one_node_continues_on_the_other(cluster: Cluster) -> None:
    with client(cluster.a, cluster.app) as on_a, client(cluster.b, cluster.app) as on_b:
        key_id, envelope = on_a.encrypt(b"shared state", recipients=[RECIPIENT])
        assert on_b.decrypt(envelope) == b"shared state"
        on_b.disable_key(key_id)
        with pytest.raises(AccessDenied) as denied:
            on_a.decrypt(envelope)
        assert denied.value.reason == Reason.KEY_DISABLED
    records = [r for r in stored_records(cluster.database_url) if r["key"] == key_id]
    assert [(r["action"], r["node"]) for r in records] == [
        ("ENCRYPT", "n1"), ("DECRYPT", "n2"), ("DISABLE_KEY", "n2"), ("DECRYPT", "n1"),
    ]
    seqs = [r["seq"] for r in records]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4


def test_a_jti_used_on_one_node_is_refused_on_the_other(cluster: Cluster) -> None:
    """SECURITY-CASES 9: the replay table is shared."""
    with client(cluster.a, cluster.app) as c:
        c.discover()
        token, jti = c._request(Op.ENCRYPT, {"plaintext": b64u_encode(b"once")}, None, None)
        first = post_raw(cluster.a, token, Op.ENCRYPT)
        assert first.status_code == 200
        c._result(Op.ENCRYPT, jti, first)
    again = post_raw(cluster.b, token, Op.ENCRYPT)
    assert again.status_code == 401 and again.json()["code"] == ReplayedRequest.code
    refused = [r for r in stored_records(cluster.database_url) if r["req"] == jti]
    assert [(r["node"], r["outcome"], r["reason"]) for r in refused] == [
        ("n1", "GRANTED", None), ("n2", "DENIED", "replayed_request"),
    ]


@pytest.mark.parametrize("callers", [10, 20])
def test_max_decryptions_holds_across_nodes(cluster: Cluster, callers: int) -> None:
    """SECURITY-CASES 19: concurrent decrypts over both nodes, max 5: exactly 5 grants."""
    with client(cluster.a, cluster.app) as c:
        key_id, envelope = c.encrypt(b"five times", rules={"max_decryptions": 5})

    def decrypt(i: int) -> str:
        with client(cluster.nodes[i % 2], cluster.app) as c:
            try:
                assert c.decrypt(envelope) == b"five times"
                return "granted"
            except AccessDenied as exc:
                return str(exc.reason)

    start = threading.Barrier(callers)

    def at_once(i: int) -> str:
        start.wait(30)
        return decrypt(i)

    with concurrent.futures.ThreadPoolExecutor(callers) as pool:
        outcomes = list(pool.map(at_once, range(callers)))
    refused = [str(Reason.MAX_DECRYPTIONS_REACHED)] * (callers - 5)
    assert sorted(outcomes) == ["granted"] * 5 + refused
    with client(cluster.b, cluster.app) as c:
        assert c.describe_key(key_id)["decryptions"] == 5
    grants = [r for r in stored_records(cluster.database_url)
              if r["key"] == key_id and r["action"] == "DECRYPT"]
    assert sorted(r["outcome"] for r in grants) == ["DENIED"] * (callers - 5) + ["GRANTED"] * 5
    assert {r["node"] for r in grants} == {"n1", "n2"}


def test_authorization_disabled_on_one_node_stops_grants_on_both(cluster: Cluster) -> None:
    """SECURITY-CASES 16: once the change commits, no node grants again."""
    with client(cluster.a, cluster.app) as owner:
        key_id, envelope = owner.encrypt(b"revocable", recipients=[RECIPIENT])
    stop = threading.Event()
    granted: list[str] = []

    def hammer(node: Server) -> None:
        with client(node, cluster.app, RECIPIENT) as bob:
            while not stop.is_set():
                try:
                    bob.decrypt(envelope)
                    granted.append(node.url)
                except AccessDenied:
                    pass

    threads = [threading.Thread(target=hammer, args=(n,)) for n in cluster.nodes]
    for t in threads:
        t.start()
    time.sleep(0.5)
    with client(cluster.b, cluster.app) as owner:
        owner.disable_authorization(key_id, RECIPIENT)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(30)
    assert set(granted) == {n.url for n in cluster.nodes}  # both nodes granted before
    # The order that counts is the commit order: a grant holds the key's row lock until it
    # commits, so the disable's seq is drawn after every grant it waited for, and any
    # decrypt that runs after it sees the disabled authorization. (A grant's answer may
    # still reach its client after the owner's answer: it committed first.)
    records = [r for r in stored_records(cluster.database_url) if r["key"] == key_id]
    disable = next(r for r in records if r["action"] == "DISABLE_AUTHORIZATION")
    after = [r for r in records if r["action"] == "DECRYPT" and r["seq"] > disable["seq"]]
    assert after and all(r["outcome"] == "DENIED" for r in after)
    assert {r["reason"] for r in after} == {"authorization_disabled"}


def test_app_disabled_on_one_node_is_refused_by_both(cluster: Cluster) -> None:
    """SECURITY-CASES 17 (through the shared store, whichever node serves the next call)."""
    from sceau import admin

    other = cluster.a.register_app("short-lived")
    with client(cluster.b, other) as c:
        c.encrypt(b"before")
    with admin.admin_session(cluster.a.config()) as session:
        admin.set_application_status(session, other.app_id, AppStatus.DISABLED)
    for node in cluster.nodes:
        with client(node, other) as c, pytest.raises(SceauError) as refused:
            c.encrypt(b"after")
        assert refused.value.code == "application_disabled"


def test_trail_of_both_nodes_verifies(cluster: Cluster) -> None:
    report = verify_cluster(cluster)
    assert set(report.nodes) >= {"n1", "n2"}


def test_sigkill_of_one_node_loses_no_acknowledged_record(cluster: Cluster,
                                                          tmp_path: Path) -> None:
    """SECURITY-CASES 28 across nodes: node A is killed under load; every call A answered
    has its record; B keeps serving throughout; A restarts on its own chain."""
    acknowledged: list[str] = []
    errors: list[str] = []
    stop = threading.Event()

    def load_a() -> None:
        with client(cluster.a, cluster.app) as c:
            c.discover()
            while not stop.is_set():
                token, jti = c._request(Op.ENCRYPT, {"plaintext": b64u_encode(b"x")}, None, None)
                try:
                    response = post_raw(cluster.a, token, Op.ENCRYPT)
                except httpx.HTTPError as exc:
                    errors.append(type(exc).__name__)
                    return
                if response.status_code == 200:
                    c._result(Op.ENCRYPT, jti, response)
                    acknowledged.append(jti)

    workers = [threading.Thread(target=load_a) for _ in range(4)]
    for w in workers:
        w.start()
    deadline = time.monotonic() + 20
    while len(acknowledged) < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    cluster.a.kill()
    stop.set()
    for w in workers:
        w.join(30)
    assert len(acknowledged) >= 40
    with client(cluster.b, cluster.app) as c:  # the other node keeps serving
        _, envelope = c.encrypt(b"still here")
        assert c.decrypt(envelope) == b"still here"
    stored = {r["req"] for r in stored_records(cluster.database_url)}
    missing = [jti for jti in acknowledged if jti not in stored]
    assert missing == []
    verify_cluster(cluster)
    # Restarted on the same host, A takes its lease back at once and continues chain n1.
    cluster.a.start()
    assert cluster.a.node_id() == "n1"
    with client(cluster.a, cluster.app) as c:
        c.encrypt(b"after the restart")
    report = verify_cluster(cluster)
    assert report.nodes["n1"] > 0


def test_a_second_process_cannot_take_a_live_node_id(cluster: Cluster, tmp_path: Path) -> None:
    """Two processes must never write one chain: the same SCEAU_NODE_ID is refused."""
    node_of_b = cluster.b.node_id()
    intruder = Server(data_dir=cluster.a.data_dir, port=free_port(),
                      env={**cluster.a.env, "SCEAU_NODE_ID": node_of_b},
                      log_path=tmp_path / "intruder.log")
    intruder.env["SCEAU_PORT"] = str(intruder.port)
    intruder.start(wait=False)
    assert intruder.proc is not None
    code = intruder.proc.wait(60)
    intruder.proc = None
    assert code != 0
    log = intruder.log()
    assert f"audit node id {node_of_b!r} is held by another running process" in log
    assert "Traceback" not in log
    # The rightful holder is untouched.
    with client(cluster.b, cluster.app) as c:
        c.encrypt(b"b still owns its chain")
    verify_cluster(cluster)
