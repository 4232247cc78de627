"""The storage contract: every query of the store modules behaves the same on both engines.

Each test runs on SQLite and on a fresh PostgreSQL database (``make_engines``), against the
schema the migrations create.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from sceau.core.model import KEY_FIELDS, Authorization, KeyRecord, Rules
from sceau.errors import ConcurrentUpdate, ConfigError
from sceau.store import applications
from sceau.store.applications import purge_replay, remember_jti, remember_jtis
from sceau.store.audit import (
    chain_head,
    insert_audit_records,
    insert_checkpoint,
    iter_audit_lines,
    last_checkpoint,
    max_seq,
    newest_audit_lines,
    next_seqs,
)
from sceau.store.db import (
    Engines,
    check_durability,
    check_schema,
    current_revision,
    head_revision,
    upgrade,
)
from sceau.store.keys import (
    KEY_COLUMNS,
    KeyFilter,
    count_keys_by_master_version,
    count_keys_by_status,
    insert_keys,
    keys_due_for_destruction,
    keys_expired_before,
    list_keys,
    load_key,
    overwrite_seed,
    save_key,
)
from sceau.store.leases import acquire_lease, force_lease, list_leases, release_lease
from sceau.store.schema import keys as schema_keys
from sceau.store.schema import metadata
from sceau.store.signin import (
    charge_throttle,
    clear_throttle,
    get_throttle,
    purge_throttle,
    refund_throttle,
    set_totp_last_step,
    totp_last_step,
)
from sceau.vocab import AuthorizationStatus, KeyStatus, Right

NOW = 1_800_000_000


def auth(principal: str, *rights: Right, status: AuthorizationStatus = AuthorizationStatus.ACTIVE,
         ) -> Authorization:
    return Authorization(principal=principal, rights=frozenset(rights or (Right.DECRYPT,)),
                         status=status, not_before=None, not_after=NOW + 10,
                         added_by="owner@example.com", added_at=NOW)


def key(**changes: Any) -> KeyRecord:
    record = KeyRecord(
        key_id=os.urandom(16), seed=os.urandom(32), master_version=1,
        owner="owner@example.com", application="app-1", name="Payroll Q3.xlsx", tag="hr",
        created_at=NOW, expires_at=NOW + 86_400, not_before=None, not_after=None,
        status=KeyStatus.ACTIVE, destroy_at=None, destroyed_at=None,
        authorizations=(auth("bob@example.com"),), rules=Rules(None, 5), decryptions=0,
        revision=1, seal=os.urandom(32),
    )
    return dataclasses.replace(record, **changes)


# --- schema -------------------------------------------------------------------------------------


def test_migrations_create_exactly_the_schema(engines: Engines) -> None:
    with engines.write.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []
    assert current_revision(engines.read) == head_revision()


def test_upgrade_twice_is_a_no_op(engines: Engines) -> None:
    upgrade(engines)
    check_schema(engines)


def test_durability_settings_pass_here(engines: Engines) -> None:
    """SECURITY-CASES 29: WAL + synchronous=FULL, or fsync/synchronous_commit/full_page_writes."""
    check_durability(engines)


@pytest.mark.parametrize(
    ("stamp", "message"),
    [(None, "older than this code"), ("9999_from_the_future", "does not know")],
    ids=["older", "newer"],
)
def test_schema_check_refuses_other_revisions(engines: Engines, stamp: str | None,
                                              message: str) -> None:
    with engines.write.begin() as conn:
        if stamp is None:
            conn.execute(sa.text("DELETE FROM alembic_version"))
        else:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = :v"), {"v": stamp})
    with pytest.raises(ConfigError, match=message):
        check_schema(engines)


# --- keys ---------------------------------------------------------------------------------------


def test_key_rows_hold_exactly_the_record_fields() -> None:
    """The columns the store writes are derived from the record model; they must be the
    table's: a field added to the model without a migration fails here."""
    assert set(KEY_COLUMNS) == {column.name for column in schema_keys.columns}
    assert set(KEY_COLUMNS) == set(KEY_FIELDS) - {"authorizations"} | {"name_lower"}


def test_insert_load_round_trip(engines: Engines) -> None:
    records = [key(), key(authorizations=(), rules=Rules(("10.0.0.0/8",), None), name=None)]
    with engines.write.begin() as conn:
        insert_keys(conn, records)
    with engines.read.connect() as conn:
        loaded = [load_key(conn, r.key_id) for r in records]
        assert load_key(conn, os.urandom(16)) is None
    assert loaded == records
    assert all(type(r.key_id) is bytes and type(r.seal) is bytes for r in loaded if r)


def test_save_key_is_an_optimistic_update(engines: Engines) -> None:
    before = key()
    with engines.write.begin() as conn:
        insert_keys(conn, [before])
    after = dataclasses.replace(
        before, revision=2, status=KeyStatus.DISABLED,
        authorizations=(auth("*@example.org", Right.MANAGE), auth("bob@example.com")),
    )
    with engines.write.begin() as conn:
        save_key(conn, before, after)
    with engines.read.connect() as conn:
        assert load_key(conn, before.key_id) == after
    # ``before`` is stale now (revision 1): the write is refused, nothing changes.
    with pytest.raises(ConcurrentUpdate), engines.write.begin() as conn:
        save_key(conn, before, dataclasses.replace(before, revision=2))
    counted = dataclasses.replace(after, decryptions=1)
    with engines.write.begin() as conn:
        save_key(conn, after, counted)
    with pytest.raises(ConcurrentUpdate), engines.write.begin() as conn:
        save_key(conn, after, counted)  # the counter is part of the check too
    with engines.read.connect() as conn:
        assert load_key(conn, before.key_id) == counted


def test_overwrite_seed_zeroes_it(engines: Engines) -> None:
    record = key()
    with engines.write.begin() as conn:
        insert_keys(conn, [record])
        overwrite_seed(conn, record.key_id)
    with engines.read.connect() as conn:
        loaded = load_key(conn, record.key_id)
    assert loaded is not None and loaded.seed == bytes(32)


OWNER, BOB = "owner@example.com", "bob@example.com"


@pytest.fixture()
def listed(engines: Engines) -> dict[str, KeyRecord]:
    """Seven keys with distinct owners, times, names, tags, statuses and applications."""
    records = {
        "mine-old": key(created_at=NOW - 500, name="Old report", tag="a", authorizations=()),
        "mine-new": key(created_at=NOW - 100, name="New_report 100%", tag="b"),
        "mine-expired": key(created_at=NOW - 300, expires_at=NOW - 1, authorizations=()),
        "mine-disabled": key(created_at=NOW - 200, status=KeyStatus.DISABLED,
                             application="app-2"),
        "bobs": key(owner=BOB, created_at=NOW - 50, authorizations=(), name="bob's"),
        "for-bob-domain": key(owner="carol@example.net", created_at=NOW - 40,
                              authorizations=(auth("*@example.com"),)),
        "stranger": key(owner="zed@example.net", created_at=NOW - 30, authorizations=()),
    }
    with engines.write.begin() as conn:
        insert_keys(conn, list(records.values()))
    return records


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        (KeyFilter(now=NOW), ["stranger", "for-bob-domain", "bobs", "mine-new",
                                   "mine-disabled", "mine-expired", "mine-old"]),
        (KeyFilter(user=OWNER, now=NOW), ["mine-new", "mine-disabled", "mine-expired",
                                               "mine-old"]),
        (KeyFilter(user=BOB, user_domain_pattern="*@example.com", now=NOW),
         ["for-bob-domain", "bobs", "mine-new", "mine-disabled"]),
        (KeyFilter(user=BOB, role="owner", now=NOW), ["bobs"]),
        (KeyFilter(user=BOB, user_domain_pattern="*@example.com", role="recipient",
                        now=NOW), ["for-bob-domain", "mine-new", "mine-disabled"]),
        (KeyFilter(user=OWNER, status="active", now=NOW), ["mine-new", "mine-old"]),
        (KeyFilter(user=OWNER, status="expired", now=NOW), ["mine-expired"]),
        (KeyFilter(status="disabled", now=NOW), ["mine-disabled"]),
        (KeyFilter(created_from=NOW - 200, created_to=NOW - 50, now=NOW),
         ["bobs", "mine-new", "mine-disabled"]),
        (KeyFilter(name="REPORT", now=NOW), ["mine-new", "mine-old"]),
        (KeyFilter(name="_report 100%", now=NOW), ["mine-new"]),  # LIKE chars literal
        (KeyFilter(name="%", now=NOW), ["mine-new"]),
        (KeyFilter(application="app-2", now=NOW), ["mine-disabled"]),
        (KeyFilter(tag="a", now=NOW), ["mine-old"]),
    ],
    ids=["all", "owner-any", "recipient-pattern", "role-owner", "role-recipient", "active",
         "expired", "disabled", "created-window", "name-ci", "name-like-escapes",
         "name-percent", "application", "tag"],
)
def test_list_keys_filters(engines: Engines, listed: dict[str, KeyRecord],
                           flt: KeyFilter, expected: list[str]) -> None:
    names = {r.key_id: n for n, r in listed.items()}
    with engines.read.connect() as conn:
        found = list_keys(conn, flt, limit=100, after=None)
    assert [names[r.key_id] for r in found] == expected


def test_list_keys_pagination_is_stable(engines: Engines, listed: dict[str, KeyRecord]) -> None:
    # Two more keys with the same created_at: ties are broken by key_id.
    twins = [key(created_at=NOW - 100), key(created_at=NOW - 100)]
    with engines.write.begin() as conn:
        insert_keys(conn, twins)
    with engines.read.connect() as conn:
        everything = list_keys(conn, KeyFilter(now=NOW), limit=100, after=None)
        pages: list[KeyRecord] = []
        after: tuple[int, bytes] | None = None
        while True:
            page = list_keys(conn, KeyFilter(now=NOW), limit=2, after=after)
            if not page:
                break
            pages += page
            after = (page[-1].created_at, page[-1].key_id)
    assert len(everything) == 9
    assert [r.key_id for r in pages] == [r.key_id for r in everything]
    ordering = [(r.created_at, r.key_id) for r in everything]
    assert ordering == sorted(ordering, reverse=True)
    assert all(r.authorizations == listed_r.authorizations
               for r in everything for listed_r in listed.values() if r.key_id == listed_r.key_id)


def test_key_counters_and_sweeps(engines: Engines, listed: dict[str, KeyRecord]) -> None:
    pending = key(status=KeyStatus.PENDING_DESTRUCTION, destroy_at=NOW - 5, expires_at=NOW - 9)
    with engines.write.begin() as conn:
        insert_keys(conn, [pending])
    with engines.read.connect() as conn:
        by_status = count_keys_by_status(conn, NOW)
        assert keys_due_for_destruction(conn, NOW, 10) == [pending.key_id]
        expired = keys_expired_before(conn, NOW, 10)
        assert count_keys_by_master_version(conn) == {1: 8}
    assert by_status == {"active": 5, "expired": 1, "disabled": 1, "pending_destruction": 1}
    assert expired == [pending.key_id, listed["mine-expired"].key_id]


# --- replay cache -------------------------------------------------------------------------------


def test_replay_remember_duplicate_and_purge(engines: Engines) -> None:
    with engines.write.begin() as conn:
        assert remember_jti(conn, "app-1", "jti-1", NOW) is True
        assert remember_jti(conn, "app-1", "jti-1", NOW + 50) is False
        assert remember_jti(conn, "app-2", "jti-1", NOW) is True  # scoped to iss
        assert remember_jti(conn, "app-1", "jti-2", NOW + 100) is True
    with engines.write.begin() as conn:
        assert remember_jti(conn, "app-1", "jti-1", NOW) is False  # after commit too
        assert purge_replay(conn, NOW + 1) == 2
        assert remember_jti(conn, "app-1", "jti-1", NOW) is True


def test_replay_remember_many_in_one_statement(engines: Engines) -> None:
    """A group commit's ids at once: an id stored before, or repeated later in the same
    list, is refused for the later entry only; each new id is kept with its expiry."""
    with engines.write.begin() as conn:
        assert remember_jti(conn, "app-1", "old", NOW) is True
    entries = [("app-1", "a", NOW + 1), ("app-1", "old", NOW), ("app-2", "a", NOW + 2),
               ("app-1", "a", NOW + 3), ("app-1", "b", NOW + 4), ("app-1", "b", NOW + 4)]
    with engines.write.begin() as conn:
        assert remember_jtis(conn, entries) == [True, False, True, False, True, False]
        assert remember_jtis(conn, []) == []
    with engines.write.begin() as conn:
        # The first entry's expiry is the one kept: purging before NOW + 2 forgets "old"
        # and ("app-1", "a"), not ("app-2", "a") nor "b".
        assert purge_replay(conn, NOW + 2) == 2
        assert remember_jtis(conn, [("app-1", "a", NOW), ("app-2", "a", NOW)]) == [True, False]


def test_replay_remember_many_spans_statements(engines: Engines, monkeypatch: Any) -> None:
    """More ids than one statement takes: every chunk answers, duplicates across chunks too."""
    monkeypatch.setattr(applications, "JTI_CHUNK", 3)
    entries = [("app-1", f"j{i % 5}", NOW) for i in range(8)]
    with engines.write.begin() as conn:
        assert remember_jtis(conn, entries) == [True] * 5 + [False] * 3


# --- leases -------------------------------------------------------------------------------------


def test_leases(engines: Engines) -> None:
    with engines.write.begin() as conn:
        assert acquire_lease(conn, "n1", "A", NOW, 15) is None
        assert acquire_lease(conn, "n1", "B", NOW + 5, 15) == "A"  # held and fresh
        assert acquire_lease(conn, "n1", "A", NOW + 10, 15) is None  # renewal
        assert acquire_lease(conn, "n1", "B", NOW + 25, 15) == "A"  # renewed to +25
        assert acquire_lease(conn, "n1", "B", NOW + 26, 15) is None  # expired: taken
        assert acquire_lease(conn, "n1", "A", NOW + 27, 15) == "B"
        assert force_lease(conn, "n1", "C", "A", NOW, 15) is False  # A no longer holds
        assert force_lease(conn, "n1", "C", "B", NOW, 15) is True
        release_lease(conn, "n1", "B")  # not the holder: nothing
        assert list_leases(conn) == [("n1", "C", NOW + 15)]
        release_lease(conn, "n1", "C")
        assert list_leases(conn) == []


def test_lease_race_has_one_winner(make_engines: Any) -> None:
    """Two processes leasing one node id at the same moment: exactly one gets it."""
    first, second = make_engines(), make_engines()
    barrier = threading.Barrier(2)
    results: dict[str, str | None] = {}

    def take(engines: Engines, holder: str) -> None:
        barrier.wait()
        with engines.write.begin() as conn:
            results[holder] = acquire_lease(conn, "n7", holder, NOW, 15)

    threads = [threading.Thread(target=take, args=(e, h)) for e, h in ((first, "A"), (second, "B"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sorted(v is None for v in results.values()) == [False, True]
    winner = next(h for h, v in results.items() if v is None)
    assert set(results.values()) == {None, winner}


# --- audit --------------------------------------------------------------------------------------


def test_seq_allocation_is_unique_and_increasing(make_engines: Any) -> None:
    first, second = make_engines(), make_engines()
    if first.is_sqlite:
        # One writer at a time: numbers follow the stored maximum and the writer's last.
        with first.write.begin() as conn:
            insert_audit_records(conn, [audit_row(4, "n1", 1)])
            assert next_seqs(conn, 3, 0) == [5, 6, 7]
            assert next_seqs(conn, 2, 9) == [10, 11]
        return
    # PostgreSQL: one sequence for every node, drawn by concurrent open transactions.
    with first.write.begin() as a, second.write.begin() as b:
        got_a = next_seqs(a, 3, 0)
        got_b = next_seqs(b, 2, 0)
        got_a2 = next_seqs(a, 200, 0)
    everything = got_a + got_b + got_a2
    assert got_a == sorted(got_a) and got_a2 == sorted(got_a2)
    assert len(set(everything)) == len(everything) == 205 and min(everything) >= 1
    assert min(got_a2) > max(got_b) > max(got_a)


def audit_row(seq: int, node: str, node_seq: int, key: str | None = None) -> dict[str, Any]:
    line = json.dumps({"type": "record", "seq": seq, "node": node, "node_seq": node_seq})
    return {"seq": seq, "node": node, "node_seq": node_seq, "key": key,
            "hash": f"{seq:064x}", "line": line}


def test_audit_lines_heads_and_accesses(engines: Engines) -> None:
    with engines.write.begin() as conn:
        assert chain_head(conn, "n1") is None and max_seq(conn) == 0
        # Committed out of seq order, as two nodes do.
        insert_audit_records(conn, [audit_row(5, "n2", 1, "k"), audit_row(7, "n2", 2)])
        insert_audit_records(conn, [audit_row(3, "n1", 1, "k"), audit_row(6, "n1", 2, "k")])
        insert_checkpoint(conn, "n1", 2, 6, '{"type":"checkpoint","node":"n1"}')
        insert_checkpoint(conn, "n2", 1, 5, '{"type":"checkpoint","node":"n2"}')
    with engines.read.connect() as conn:
        lines = list(iter_audit_lines(conn, batch=2))
    with engines.read.connect() as conn:
        assert [s for s, _k, _l in iter_audit_lines(conn, since=5, until=6)] == [6, 6]
        assert chain_head(conn, "n1") == (2, f"{6:064x}", 6)
        assert max_seq(conn) == 7
        assert last_checkpoint(conn, "n2") == 1 and last_checkpoint(conn, "n3") == 0
        assert [s for s, _ in newest_audit_lines(conn, key="k", limit=10, before=None)] == [6, 5, 3]
        assert [s for s, _ in newest_audit_lines(conn, key="k", limit=1, before=6)] == [5]
    assert [(s, k) for s, k, _ in lines] == [
        (3, "record"), (5, "record"), (5, "checkpoint"), (6, "record"), (6, "checkpoint"),
        (7, "record"),
    ]
    assert json.loads(lines[2][2])["node"] == "n2"


def test_node_seq_is_unique_per_node(engines: Engines) -> None:
    """The last guard against a forked chain: one (node, node_seq) position, once."""
    with engines.write.begin() as conn:
        insert_audit_records(conn, [audit_row(1, "n1", 1)])
    with pytest.raises(sa.exc.IntegrityError), engines.write.begin() as conn:
        insert_audit_records(conn, [audit_row(2, "n1", 1)])


# --- concurrency (row locks) ---------------------------------------------------------------------


def test_for_update_serializes_concurrent_changes(make_engines: Any) -> None:
    """A second locked load waits for the first transaction and then sees its write."""
    first, second = make_engines(), make_engines()
    if first.is_sqlite:
        pytest.skip("SQLite serializes writers with BEGIN IMMEDIATE; no row locks")
    record = key()
    with first.write.begin() as conn:
        insert_keys(conn, [record])
    seen: list[int] = []
    started = threading.Event()

    def other() -> None:
        with second.write.begin() as conn:
            started.set()
            loaded = load_key(conn, record.key_id, for_update=True)
            assert loaded is not None
            seen.append(loaded.decryptions)
            save_key(conn, loaded, dataclasses.replace(loaded,
                                                            decryptions=loaded.decryptions + 1))

    with first.write.begin() as conn:
        loaded = load_key(conn, record.key_id, for_update=True)
        assert loaded is not None
        thread = threading.Thread(target=other)
        thread.start()
        started.wait(10)
        time.sleep(0.3)
        assert seen == []  # still waiting for our lock
        save_key(conn, loaded, dataclasses.replace(loaded, decryptions=1))
    thread.join(20)
    assert seen == [1]
    with first.read.connect() as conn:
        final = load_key(conn, record.key_id)
    assert final is not None and final.decryptions == 2


# --- console queries (appended to repo by the console; checked on both engines here) -------------


@pytest.mark.parametrize(("sort", "descending"), [("created", True), ("expires", False)])
def test_console_key_pages_are_consistent(engines: Engines, listed: dict[str, KeyRecord],
                                          sort: str, descending: bool) -> None:
    flt = KeyFilter(now=NOW)
    column = "created_at" if sort == "created" else "expires_at"
    with engines.read.connect() as conn:
        whole = list_keys(conn, flt, visible_to=None, sort=sort,
                                       descending=descending, limit=100, after=None)
        paged: list[KeyRecord] = []
        after: tuple[int, bytes] | None = None
        while page := list_keys(conn, flt, visible_to=None, sort=sort,
                                             descending=descending, limit=3, after=after):
            paged += page
            after = (getattr(page[-1], column), page[-1].key_id)
        mine = list_keys(conn, flt, visible_to=(BOB, "*@example.com"),
                                      sort=sort, descending=descending, limit=100, after=None)
    order = [(getattr(r, column), r.key_id) for r in whole]
    assert order == sorted(order, reverse=descending) and len(whole) == len(listed)
    assert [r.key_id for r in paged] == [r.key_id for r in whole]
    names = {r.key_id: n for n, r in listed.items()}
    assert {names[r.key_id] for r in mine} == {"for-bob-domain", "bobs", "mine-new",
                                               "mine-disabled"}


def test_console_throttle_and_totp_upserts(engines: Engines) -> None:
    with engines.write.begin() as conn:
        assert get_throttle(conn, "user", "a") is None
        assert charge_throttle(conn, "user", "a", NOW, 60) == (1, NOW)
        assert charge_throttle(conn, "user", "a", NOW + 10, 60) == (2, NOW)
        refund_throttle(conn, "user", "a")
        assert get_throttle(conn, "user", "a") == (1, NOW)
        assert charge_throttle(conn, "user", "a", NOW + 60, 60) == (1, NOW + 60)  # new window
        purge_throttle(conn, NOW + 60)  # windows started before NOW + 60 only
        assert get_throttle(conn, "user", "a") == (1, NOW + 60)
        clear_throttle(conn, "user", "a")
        assert get_throttle(conn, "user", "a") is None
        set_totp_last_step(conn, "a", 10)
        set_totp_last_step(conn, "a", 11)
        assert totp_last_step(conn, "a") == 11
        insert_audit_records(conn, [audit_row(s, "n1", s, "k" if s % 2 else None)
                                         for s in (1, 2, 3, 4, 5)])
        assert [s for s, _ in newest_audit_lines(conn, before=5, limit=2)] == [4, 3]
        assert [s for s, _ in newest_audit_lines(conn, before=None, limit=9, key="k")] == [
            5, 3, 1]
