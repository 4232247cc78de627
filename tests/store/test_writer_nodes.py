"""The group-commit writer on both engines: leases, lost commits, deadlock retries.

Writers here are real :class:`Writer` objects over real databases and a file keystore; each
one plays a node. Chains are checked with the offline verifier at the end of every test.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import fcntl
import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from sceau.auditlog.witness import Witness, WitnessSettings
from sceau.core.model import KeyRecord, Rules
from sceau.core.verify import verify_lines
from sceau.errors import (
    AccessDenied,
    AuditUnavailable,
    ConcurrentUpdate,
    ConfigError,
    IntegrityFailure,
    ReplayedRequest,
)
from sceau.keystore import Keystore
from sceau.service import keyops
from sceau.store import driver, nodes
from sceau.store.applications import purge_replay, remember_jti
from sceau.store.audit import chain_head, insert_audit_records, iter_audit_lines
from sceau.store.db import Engines
from sceau.store.keys import insert_keys, load_key, save_key
from sceau.store.leases import acquire_lease
from sceau.store.writer import MAX_JOB_RETRIES, AuditContext, Job, Tx, Writer
from sceau.vocab import Action, KeyStatus

NOW = 1_800_000_000


@pytest.fixture()
def writers(engines: Engines, keystore: Keystore) -> Iterator[list[Writer]]:
    """Writers to close after the test (their leases released)."""
    opened: list[Writer] = []
    yield opened
    for writer in opened:
        writer.stop()


def new_writer(engines: Engines, keystore: Keystore, opened: list[Writer], node: str = "",
               ) -> Writer:
    writer = Writer(engines, keystore, witness=None, node_id=node, checkpoint_interval_s=3600)
    writer.open()
    opened.append(writer)
    return writer


def job(fn: Any = None, *, jti: str | None = None) -> Job:
    ctx = AuditContext(action=Action.DECRYPT, app="app-1", user="u@example.com", ip=None,
                       req=jti)
    return Job(fn=fn, ctx=ctx, jti=("app-1", jti, NOW + 600) if jti else None)


def verify_store(engines: Engines, keystore: Keystore) -> Any:
    with engines.read.connect() as conn:
        lines = [line for _s, _k, line in iter_audit_lines(conn)]
    return verify_lines(lines, keystore.public_jwks())


def test_a_node_id_is_held_by_one_writer(engines: Engines, keystore: Keystore,
                                         writers: list[Writer]) -> None:
    first = new_writer(engines, keystore, writers, "n5")
    with pytest.raises(ConfigError, match="'n5' is held by another running process"):
        new_writer(engines, keystore, writers, "n5")
    automatic = new_writer(engines, keystore, writers)
    assert (first.node, automatic.node) == ("n5", "n1")
    assert new_writer(engines, keystore, writers).node == "n2"


def test_lost_commit_acknowledgement_does_not_fork_the_chain(
    engines: Engines, keystore: Keystore, writers: list[Writer]
) -> None:
    """The COMMIT is applied but raises (connection cut at that instant): the callers get
    ``audit_unavailable``; the next batch re-reads the head instead of reusing its position."""
    writer = new_writer(engines, keystore, writers, "n1")
    writer.run_now(job(jti="j-1"))
    armed = {"on": True}

    @sa.event.listens_for(engines.write, "commit")
    def commit_then_fail(conn: sa.Connection) -> None:
        if armed["on"]:
            armed["on"] = False
            conn.connection.dbapi_connection.commit()  # type: ignore[union-attr]
            raise sa.exc.OperationalError("COMMIT", {}, Exception("connection lost"))

    try:
        with pytest.raises(AuditUnavailable):
            writer.run_now(job(jti="j-2"))
        assert writer.healthy is False
        after = writer.run_now(job(jti="j-3"))
    finally:
        sa.event.remove(engines.write, "commit", commit_then_fail)
    assert writer.healthy is True
    report = verify_store(engines, keystore)
    assert report.ok, report.first_problem
    assert report.records == 3 and report.nodes == {"n1": 3}
    assert len(after.records) == 1
    with engines.read.connect() as conn:
        # The lost batch did commit: its jti is remembered, its record is in the chain.
        assert remember_jti(conn, "app-1", "j-2", NOW) is False


def test_failed_batch_fails_every_job_and_keeps_the_head(
    engines: Engines, keystore: Keystore, writers: list[Writer]
) -> None:
    writer = new_writer(engines, keystore, writers, "n1")
    writer.run_now(job())
    head = writer._head
    # Another process forges the next position of this chain: the batch cannot commit.
    with engines.write.begin() as conn:
        insert_audit_records(conn, [{"seq": 10_000, "node": "n1", "node_seq": 2,
                                          "key": None, "hash": "f" * 64, "line": "{}"}])
    jobs = [job(jti=f"x-{i}") for i in range(3)]
    writer._run_batch(jobs)
    for j in jobs:
        with pytest.raises(AuditUnavailable):
            j.future.result(0)
    assert writer._head == head
    with engines.read.connect() as conn:  # nothing of the batch persisted
        assert remember_jti(conn, "app-1", "x-0", NOW) is True


def sample_key(key_id: bytes) -> KeyRecord:
    return KeyRecord(
        key_id=key_id, seed=os.urandom(32), master_version=1, owner="o@example.com",
        application="app-1", name=None, tag=None, created_at=NOW, expires_at=NOW + 10,
        not_before=None, not_after=None, status=KeyStatus.ACTIVE, destroy_at=None,
        destroyed_at=None, authorizations=(), rules=Rules(None, None), decryptions=0,
        revision=1, seal=b"s" * 32,
    )


def test_deadlocked_batch_is_retried_from_a_clean_state(
    engines: Engines, keystore: Keystore, writers: list[Writer]
) -> None:
    """Two nodes lock two keys in opposite orders: PostgreSQL kills one transaction (40P01);
    that writer re-runs its batch, whose jti and audit context start afresh."""
    if engines.is_sqlite:
        pytest.skip("SQLite has one writer at a time: no deadlock between nodes")
    k1, k2 = os.urandom(16), os.urandom(16)
    with engines.write.begin() as conn:
        insert_keys(conn, [sample_key(k1), sample_key(k2)])
    node_a = new_writer(engines, keystore, writers, "na")
    node_b = new_writer(engines, keystore, writers, "nb")
    barrier = threading.Barrier(2, timeout=20)
    runs = {"a": 0, "b": 0}

    def locker(name: str, first: bytes, second: bytes) -> Any:
        def fn(tx: Tx) -> Any:
            runs[name] += 1
            tx.ctx.details["runs"] = tx.ctx.details.get("runs", 0) + 1
            if runs[name] == 1:
                tx.ctx.key = f"{name}-first-attempt"  # must not survive into a retry
            for i, key_id in enumerate((first, second)):
                record = load_key(tx.conn, key_id, for_update=True)
                assert record is not None
                if i == 0 and runs[name] == 1:
                    barrier.wait()  # both hold their first lock: a cycle is certain
            return name
        return fn

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        fa = pool.submit(node_a.run_now, job(locker("a", k1, k2), jti="dl-a"))
        fb = pool.submit(node_b.run_now, job(locker("b", k2, k1), jti="dl-b"))
        values = {fa.result(60).value, fb.result(60).value}
    assert values == {"a", "b"}
    # At least one victim, run again. Sometimes both: when the first victim's retry takes
    # its first row lock again before the survivor, woken up, re-locks that row (PostgreSQL
    # row locks wait on the holder's transaction, then re-check), the retry closes a new
    # cycle and the other writer becomes the victim. Each retry must start afresh.
    assert min(runs.values()) >= 1 and max(runs.values()) >= 2
    report = verify_store(engines, keystore)
    assert report.ok, report.first_problem
    with engines.read.connect() as conn:
        lines = [line for _s, _k, line in iter_audit_lines(conn)]
    records = [json.loads(line) for line in lines]
    assert sorted(r["node"] for r in records) == ["na", "nb"]
    assert all(r["outcome"] == "GRANTED" and r["details"] == {"runs": 1} for r in records)
    keys = {r["node"]: r["key"] for r in records}
    # The key set by a first attempt survives only where that attempt committed.
    assert keys == {f"n{name}": f"{name}-first-attempt" if count == 1 else None
                    for name, count in runs.items()}


def _count_elsewhere(engines: Engines, keystore: Keystore, key_id: bytes) -> None:
    """Another node counts one use of the key and commits (its own transaction)."""
    with engines.write.begin() as conn:
        record = load_key(conn, key_id)
        assert record is not None
        save_key(conn, record, keyops.reseal(keystore, record, bump=False,
                                              decryptions=record.decryptions + 1))


def _sealed_key_and_writer(engines: Engines, keystore: Keystore,
                           writers: list[Writer]) -> tuple[bytes, Writer]:
    if engines.is_sqlite:
        pytest.skip("SQLite has one writer at a time: no other node writes meanwhile")
    key_id = os.urandom(16)
    with engines.write.begin() as conn:
        insert_keys(conn, [keyops.reseal(keystore, sample_key(key_id), bump=False)])
    return key_id, new_writer(engines, keystore, writers, "n1")


def _counting_job(engines: Engines, keystore: Keystore, key_id: bytes, runs: list[int],
                  conflicts: int) -> Any:
    """A job that counts a use of the key; on its first ``conflicts`` runs another node
    counts one between the job's read (no lock) and its write."""
    def fn(tx: Tx) -> int:
        runs.append(len(runs) + 1)
        tx.ctx.details["runs"] = tx.ctx.details.get("runs", 0) + 1
        record = load_key(tx.conn, key_id)
        assert record is not None
        if len(runs) <= conflicts:
            _count_elsewhere(engines, keystore, key_id)
        after = keyops.reseal(keystore, record, bump=False, decryptions=record.decryptions + 1)
        save_key(tx.conn, record, after)
        return after.decryptions
    return fn


def test_a_job_that_loses_a_key_to_another_node_runs_again(
    engines: Engines, keystore: Keystore, writers: list[Writer]
) -> None:
    """A key record changed by another node between a job's read and its write: the save
    refuses (``ConcurrentUpdate``, no lost update) and the writer runs the job again on the
    record as the other node left it. The first conflict makes the batch run again with a
    savepoint per job (the losing UPDATE counts as a write), a second one is retried inside
    the job's savepoint; each run starts from the job's audit context as submitted."""
    key_id, writer = _sealed_key_and_writer(engines, keystore, writers)
    runs: list[int] = []
    outcome = writer.run_now(job(_counting_job(engines, keystore, key_id, runs, conflicts=2)))
    assert runs == [1, 2, 3]
    assert outcome.value == 3  # two uses counted elsewhere, then this job's own: none lost
    with engines.read.connect() as conn:
        final = load_key(conn, key_id)
    assert final is not None and final.decryptions == 3
    keystore.verify_seal(final.seal_payload(), final.seal)
    report = verify_store(engines, keystore)
    assert report.ok, report.first_problem
    with engines.read.connect() as conn:
        (record,) = [json.loads(line) for _s, _k, line in iter_audit_lines(conn)]
    assert record["outcome"] == "GRANTED" and record["details"] == {"runs": 1}


def test_a_job_that_keeps_losing_a_key_fails_as_an_internal_error(
    engines: Engines, keystore: Keystore, writers: list[Writer]
) -> None:
    """Retries are bounded: a job that loses every run fails (500 ``internal_error``, as
    any unexpected failure) and leaves nothing of its own behind."""
    key_id, writer = _sealed_key_and_writer(engines, keystore, writers)
    runs: list[int] = []
    with pytest.raises(ConcurrentUpdate) as failed:
        writer.run_now(job(_counting_job(engines, keystore, key_id, runs, conflicts=99)))
    assert (failed.value.code, failed.value.status) == ("internal_error", 500)
    assert failed.value.public_detail == "Internal error"
    assert len(runs) == 1 + MAX_JOB_RETRIES  # one run, then the batch again: every retry
    with engines.read.connect() as conn:
        final = load_key(conn, key_id)
    with engines.read.connect() as conn:
        (record,) = [json.loads(line) for _s, _k, line in iter_audit_lines(conn)]
    assert final is not None and final.decryptions == len(runs)  # only the other node's
    assert (record["outcome"], record["reason"]) == ("ERROR", "internal_error")


def test_node_whose_records_were_all_archived_continues_from_its_checkpoint(
    tmp_path: Path,
) -> None:
    """After an archive removed every record of a node, its chain goes on from the signed
    checkpoint at the boundary instead of restarting at node_seq 1."""
    import json as _json

    from sceau.config import load_config
    from sceau.core.verify import checkpoint_anchor, verify_lines
    from sceau.service.runtime import open_runtime
    from sceau.store.writer import AuditContext, Job
    from sceau.vocab import Action
    from support import run_cli

    data = tmp_path / "d"
    run_cli("init", "--data-dir", str(data))
    config = load_config(data, env={"SCEAU_NODE_ID": "solo"})
    rt = open_runtime(config, start_writer=False)
    try:
        def noop(_tx: object) -> None:
            return None

        for _ in range(3):
            rt.writer.run_now(Job(fn=noop, ctx=AuditContext(Action.SERVICE_START, None, None,
                                                            None, None)))
        rt.writer._run_batch([], force_checkpoint=True)
        with rt.engines.write.begin() as conn:
            cp_line = conn.exec_driver_sql(
                "SELECT line FROM audit_checkpoints WHERE node = 'solo'").scalar_one()
            conn.exec_driver_sql("DELETE FROM audit_records WHERE node = 'solo'")
        with rt.engines.read.connect() as conn:
            rt.writer._load_head(conn)
        rt.writer.run_now(Job(fn=noop, ctx=AuditContext(Action.SERVICE_START, None, None,
                                                        None, None)))
        with rt.engines.read.connect() as conn:
            lines = [r[0] for r in conn.exec_driver_sql(
                "SELECT line FROM audit_records WHERE node = 'solo' ORDER BY seq")]
        assert [_json.loads(x)["node_seq"] for x in lines] == [4]
        jwks = rt.keystore.public_jwks()
        anchor = checkpoint_anchor(cp_line, jwks)
        report = verify_lines(lines, jwks, start={"solo": anchor})
        assert report.ok, report.first_problem
    finally:
        rt.writer.stop()
        rt.keystore.close()
        rt.engines.dispose()


def test_async_submissions_are_settled_in_their_loop_and_cancellation_is_harmless(
    engines: Engines, keystore: Keystore, writers: list[Writer]
) -> None:
    """Jobs submitted from an event loop: each waiter gets its own outcome (value, refusal or
    replay), a waiter cancelled before the commit is skipped, and every job is audited."""
    writer = new_writer(engines, keystore, writers, "n1")
    writer.start()

    def refuse(_tx: Tx) -> None:
        raise AccessDenied("no")

    async def main() -> list[Any]:
        waiters = [
            writer.submit_async(job(lambda _tx: "a", jti="a-1")),
            writer.submit_async(job(refuse, jti="a-2")),
            writer.submit_async(job(lambda _tx: "c", jti="a-1")),  # replay of the first
            writer.submit_async(job(lambda _tx: "d", jti="a-4")),
        ]
        waiters[3].cancel()
        return await asyncio.gather(*waiters[:3], return_exceptions=True)

    first, second, third = asyncio.run(main())
    assert first.value == "a" and len(first.records) == 1
    assert isinstance(second, AccessDenied)
    assert isinstance(third, ReplayedRequest)
    writer.stop()
    writers.clear()
    report = verify_store(engines, keystore)
    assert report.records == 4


def test_a_job_that_fails_after_writing_leaves_nothing_behind(
    engines: Engines, keystore: Keystore, writers: list[Writer]
) -> None:
    """A job writes a key then refuses: its write is undone (SQLite: the batch runs again
    with a savepoint per job; PostgreSQL: its savepoint), the jobs around it commit, each
    job keeps one audit record and the chain verifies."""
    writer = new_writer(engines, keystore, writers, "n1")
    calls: list[str] = []

    def write(key_id: bytes, fail: bool) -> Any:
        def fn(tx: Tx) -> str:
            calls.append(key_id.hex())
            insert_keys(tx.conn, [sample_key(key_id)])
            tx.ctx.key = key_id.hex()
            if fail:
                raise AccessDenied("refused after writing")
            return "ok"
        return fn

    ids = [os.urandom(16) for _ in range(3)]
    jobs = [job(write(ids[0], False), jti="w-0"), job(write(ids[1], True), jti="w-1"),
            job(write(ids[2], False), jti="w-2")]
    writer._run_batch(jobs)
    assert jobs[0].future.result(0).value == "ok"
    with pytest.raises(AccessDenied):
        jobs[1].future.result(0)
    assert jobs[2].future.result(0).value == "ok"
    with engines.read.connect() as conn:
        assert [load_key(conn, k) is not None for k in ids] == [True, False, True]
        assert remember_jti(conn, "app-1", "w-1", NOW) is False  # refused, still used
    report = verify_store(engines, keystore)
    assert report.ok and report.records == 3
    # The batch ran twice: without savepoints up to the failing job, then isolated.
    assert calls == [i.hex() for i in ids[:2]] + [i.hex() for i in ids]


def test_a_job_refused_before_writing_does_not_rerun_the_batch(
    engines: Engines, keystore: Keystore, writers: list[Writer]
) -> None:
    """Reads, then a refusal: no write was counted, so the batch runs once and commits."""
    writer = new_writer(engines, keystore, writers, "n1")
    calls: list[int] = []

    def read_then(index: int, fail: bool) -> Any:
        def fn(tx: Tx) -> int:
            calls.append(index)
            load_key(tx.conn, os.urandom(16))
            tx.conn.execute(sa.select(sa.literal(1))).scalar_one()  # SQLAlchemy read
            if fail:
                raise AccessDenied("refused")
            return index
        return fn

    jobs = [job(read_then(i, i == 1), jti=f"r-{i}") for i in range(3)]
    writer._run_batch(jobs)
    assert calls == [0, 1, 2]
    assert [jobs[0].future.result(0).value, jobs[2].future.result(0).value] == [0, 2]
    with pytest.raises(AccessDenied):
        jobs[1].future.result(0)


def test_a_jti_twice_in_one_batch_is_refused_for_the_later_job_only(
    engines: Engines, keystore: Keystore, writers: list[Writer]
) -> None:
    """One group commit with a jti seen before, and one used twice: the earlier use wins,
    each later job is refused as a replay without running, and every job has one record
    that says what happened to it."""
    writer = new_writer(engines, keystore, writers, "n1")
    writer.run_now(job(jti="seen"))
    ran: list[str] = []

    def mark(name: str) -> Any:
        def fn(tx: Tx) -> str:
            ran.append(name)
            return name
        return fn

    jobs = [job(mark("first"), jti="twice"), job(mark("replayed"), jti="seen"),
            job(mark("second"), jti="twice"), job(mark("plain")), job(mark("other"), jti="o")]
    writer._run_batch(jobs)
    assert ran == ["first", "plain", "other"]
    assert [jobs[i].future.result(0).value for i in (0, 3, 4)] == ["first", "plain", "other"]
    for refused in (jobs[1], jobs[2]):
        with pytest.raises(ReplayedRequest):
            refused.future.result(0)
    with engines.read.connect() as conn:
        lines = [json.loads(line) for _s, _k, line in iter_audit_lines(conn)]
    assert [line["outcome"] for line in lines] == [
        "GRANTED", "GRANTED", "DENIED", "DENIED", "GRANTED", "GRANTED"
    ]
    assert [line.get("reason") for line in lines[2:4]] == ["replayed_request"] * 2
    report = verify_store(engines, keystore)
    assert report.ok and report.records == 6


def test_sqlalchemy_writes_are_counted(engines: Engines) -> None:
    """Both write paths move the counter the writer relies on; reads do not."""
    with engines.write.begin() as conn:
        start = driver.writes(conn)
        conn.execute(sa.select(sa.literal(1)))
        load_key(conn, os.urandom(16))
        assert driver.writes(conn) == start
        insert_keys(conn, [sample_key(os.urandom(16))])  # driver executemany x1 (no auths)
        assert driver.writes(conn) == start + 1
        purge_replay(conn, 0)  # SQLAlchemy Core DELETE
        assert driver.writes(conn) == start + 2
        conn.exec_driver_sql("UPDATE keys SET tag = tag WHERE 0 = 1")
        assert driver.writes(conn) == start + 3


# --- registry and witness (SECURITY-CASES 48) ---------------------------------------------------


def witnessed_writer(engines: Engines, keystore: Keystore, opened: list[Writer], directory: Path,
                     node: str = "n1", **options: Any) -> Writer:
    writer = Writer(engines, keystore, witness=Witness(WitnessSettings(directory=directory)),
                    node_id=node, checkpoint_interval_s=3600, **options)
    writer.open()
    opened.append(writer)
    return writer


def stored_checkpoint_lines(engines: Engines, node: str = "n1") -> list[str]:
    with engines.read.connect() as conn:
        rows = conn.execute(sa.text("SELECT line FROM audit_checkpoints WHERE node = :node "
                                    "ORDER BY node_seq"), {"node": node})
        return [str(r[0]) for r in rows]


def witness_lines(directory: Path, node: str = "n1") -> list[str]:
    path = directory / f"{node}.jsonl"
    return path.read_text().splitlines() if path.exists() else []


def sql(engines: Engines, *statements: str) -> None:
    with engines.write.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)


def test_a_node_registers_in_a_sealed_row_with_its_first_record(
    engines: Engines, keystore: Keystore, writers: list[Writer]
) -> None:
    idle = new_writer(engines, keystore, writers, "n7")
    server = new_writer(engines, keystore, writers, "n8")
    cli = Writer(engines, keystore, witness=None, node_prefix="cli")
    cli.open()
    writers.append(cli)
    with engines.read.connect() as conn:
        assert nodes.list_nodes(conn) == []  # leasing alone registers nothing
    server.run_now(job())
    cli.run_now(job())
    with engines.read.connect() as conn:
        rows = {row.node: row for row in nodes.list_nodes(conn)}
    assert set(rows) == {"n8", "cli1"} and idle.node not in rows
    assert (rows["n8"].kind, rows["cli1"].kind) == ("server", "cli")
    for row in rows.values():
        keystore.verify_row(row)  # sealed by the keystore, not just stored
    forged = dataclasses.replace(rows["n8"], kind="cli")
    with pytest.raises(IntegrityFailure):
        keystore.verify_row(forged)


def test_checkpoints_reach_the_witness_only_after_their_commit(
    engines: Engines, keystore: Keystore, writers: list[Writer], tmp_path: Path
) -> None:
    directory = tmp_path / "witness"
    writer = witnessed_writer(engines, keystore, writers, directory, checkpoint_every=2)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for i in range(4):
        writer.run_now(job(jti=f"w-{i}"))
    assert witness_lines(directory) == stored_checkpoint_lines(engines)
    assert len(witness_lines(directory)) == 2

    @sa.event.listens_for(engines.write, "commit")
    def refuse_commit(_conn: sa.Connection) -> None:
        raise sa.exc.OperationalError("COMMIT", {}, Exception("disk full"))

    jobs = [job(jti="w-4"), job(jti="w-5")]  # two more records: a checkpoint is due
    try:
        writer._run_batch(jobs)
    finally:
        sa.event.remove(engines.write, "commit", refuse_commit)
    assert all(isinstance(j.future.exception(0), AuditUnavailable) for j in jobs)
    # The batch wrote a checkpoint that never committed: the witness does not have it.
    assert witness_lines(directory) == stored_checkpoint_lines(engines)
    assert len(witness_lines(directory)) == 2


def _cut(engines: Engines, above: int) -> None:
    sql(engines, f"DELETE FROM audit_records WHERE node = 'n1' AND node_seq > {above}",
        f"DELETE FROM audit_checkpoints WHERE node = 'n1' AND node_seq > {above}")


def _remove(engines: Engines) -> None:
    sql(engines, "DELETE FROM audit_records WHERE node = 'n1'",
        "DELETE FROM audit_checkpoints WHERE node = 'n1'",
        "DELETE FROM audit_nodes WHERE node = 'n1'")


# (attack, with a witness, expected refusal)
REFUSALS = [
    ("tail-and-checkpoints-cut", True,
     r"audit node n1: the store stops at node_seq 3 but its witness \(.*n1\.jsonl.*\) saw "
     r"node_seq 5"),
    ("whole-node-removed", True,
     r"audit node n1: the store holds no record of it but its witness .* saw node_seq 5"),
    ("restarted-from-older-head", True,
     r"audit node n1: the store's record at node_seq 5 is not the one its witness .* saw"),
    ("records-cut-checkpoints-left", False,
     r"audit node n1: the store stops at node_seq 3 but its own newest stored checkpoint saw "
     r"node_seq 5"),
    ("registered-nothing-left", False,
     r"audit node n1 is registered \(it wrote records\) but the store holds no record"),
]  # fmt: skip


@pytest.mark.parametrize(("attack", "with_witness", "refusal"), REFUSALS,
                         ids=[r[0] for r in REFUSALS])
def test_a_chain_behind_what_it_reached_is_not_continued(
    engines: Engines, keystore: Keystore, writers: list[Writer], tmp_path: Path,
    attack: str, with_witness: bool, refusal: str,
) -> None:
    directory = tmp_path / "witness"
    first = witnessed_writer(engines, keystore, writers, directory, checkpoint_every=2)
    for i in range(5):
        first.run_now(job(jti=f"a-{i}"))
    first.stop()  # final checkpoint at 5, witnessed
    writers.remove(first)
    assert [json.loads(x)["node_seq"] for x in witness_lines(directory)] == [2, 4, 5]
    if attack == "tail-and-checkpoints-cut":
        _cut(engines, 3)
    elif attack == "whole-node-removed":
        _remove(engines)
    elif attack == "restarted-from-older-head":
        _cut(engines, 3)
        unaware = new_writer(engines, keystore, writers, "n1")  # no witness: it forks
        for i in range(3):
            unaware.run_now(job(jti=f"b-{i}"))
        unaware.stop()
        writers.remove(unaware)
    elif attack == "records-cut-checkpoints-left":
        sql(engines, "DELETE FROM audit_records WHERE node = 'n1' AND node_seq > 3")
    else:
        sql(engines, "DELETE FROM audit_records WHERE node = 'n1'",
            "DELETE FROM audit_checkpoints WHERE node = 'n1'")
    with pytest.raises(ConfigError, match=refusal):
        if with_witness:
            witnessed_writer(engines, keystore, writers, directory)
        else:
            new_writer(engines, keystore, writers, "n1")
    with engines.read.connect() as conn:  # refused before writing, and the lease is free
        assert acquire_lease(conn, "n1", "probe", NOW, 1) is None


def test_a_registry_row_written_outside_sceau_refuses_the_node(
    engines: Engines, keystore: Keystore, writers: list[Writer]
) -> None:
    sql(engines, "INSERT INTO audit_nodes (node, kind, registered_at, seal) "
                 f"VALUES ('n1', 'server', {NOW}, NULL)")
    with pytest.raises(ConfigError, match="registry row .* does not match its seal"):
        new_writer(engines, keystore, writers, "n1")


def test_an_unwritable_witness_fails_closed_then_recovers(
    engines: Engines, keystore: Keystore, writers: list[Writer], tmp_path: Path
) -> None:
    directory = tmp_path / "witness"
    writer = witnessed_writer(engines, keystore, writers, directory, checkpoint_every=1)
    writer.run_now(job(jti="f-0"))
    # Root ignores modes: a directory in the file's place makes every append fail.
    (directory / "n1.jsonl").unlink()
    (directory / "n1.jsonl").mkdir()
    committed = writer.run_now(job(jti="f-1"))  # committed; its checkpoint is not witnessed
    assert len(committed.records) == 1
    assert writer.healthy is False and writer.last_error == "witness: WitnessUnavailable"
    with pytest.raises(AuditUnavailable, match="witness"):
        writer.run_now(job(jti="f-2"))
    with engines.read.connect() as conn:  # refused before anything was written
        assert remember_jti(conn, "app-1", "f-2", NOW) is True
    (directory / "n1.jsonl").rmdir()
    writer.run_now(job(jti="f-3"))
    assert writer.healthy is True
    # The pending checkpoint went first, then the new one; the one before the failure is in
    # the file that was replaced.
    assert witness_lines(directory) == stored_checkpoint_lines(engines)[1:]


def test_a_store_that_lost_committed_records_is_not_continued_after_a_failure(
    engines: Engines, keystore: Keystore, writers: list[Writer], tmp_path: Path
) -> None:
    writer = witnessed_writer(engines, keystore, writers, tmp_path / "witness")
    for i in range(3):
        writer.run_now(job(jti=f"r-{i}"))

    @sa.event.listens_for(engines.write, "commit")
    def refuse_commit(_conn: sa.Connection) -> None:
        raise sa.exc.OperationalError("COMMIT", {}, Exception("connection lost"))

    try:
        with pytest.raises(AuditUnavailable):
            writer.run_now(job(jti="r-3"))
    finally:
        sa.event.remove(engines.write, "commit", refuse_commit)
    _cut(engines, 1)  # while the node was failing, its last records were removed
    with pytest.raises(AuditUnavailable, match="behind this node"):
        writer.run_now(job(jti="r-4"))
    with engines.read.connect() as conn:
        assert chain_head(conn, "n1") is not None
        assert chain_head(conn, "n1")[0] == 1  # type: ignore[index]


def test_sqlite_writers_of_one_file_take_turns(engines: Engines, keystore: Keystore,
                                               writers: list[Writer]) -> None:
    """Workers of one SQLite file commit in turn through `<database>.turn` (an flock),
    so the next one wakes when the lock is free instead of sleeping in SQLite's busy
    handler; a batch waits while another process holds the turn, then commits."""
    if not engines.is_sqlite:
        pytest.skip("PostgreSQL has row locks; no turn file")
    writer = new_writer(engines, keystore, writers)
    writer.start()
    turn = Path(f"{engines.write.url.database}.turn")
    assert stat.S_IMODE(turn.stat().st_mode) == 0o600
    other = os.open(turn, os.O_RDWR)
    try:
        fcntl.flock(other, fcntl.LOCK_EX)  # another worker's commit in progress
        waiting = writer.submit(job(lambda tx: "done"))
        with pytest.raises(concurrent.futures.TimeoutError):
            waiting.result(timeout=0.5)
        fcntl.flock(other, fcntl.LOCK_UN)
        assert waiting.result(timeout=10).value == "done"
    finally:
        os.close(other)
    assert verify_store(engines, keystore).ok
