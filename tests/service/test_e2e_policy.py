"""End to end over HTTPS: every reason of SPEC §6, the max_decryptions race, tampered records.

Each reason is produced through the API alone (update-key, add-authorization, ...), checked
on ``decrypt`` and ``get-data-key``, and found in the audit trail as a DENIED record.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from audit_support import count_rows, records, verify_store
from sceau.client import Client
from sceau.core.b64 import b64u_decode, b64u_encode
from sceau.errors import AccessDenied, IntegrityFailure, NotFound, SceauError
from sceau.store.db import create_engines
from sceau.vocab import Reason
from support import Server, TestApp

OWNER = "pat@example.com"
BOB = "bob@example.com"
STRANGER = "mallory@example.net"

Setup = Callable[[Client, str], str]  # (owner client, key_id) -> user who will be refused


def owner_after(change: Callable[[Client, str], Any]) -> Setup:
    def setup(c: Client, key_id: str) -> str:
        change(c, key_id)
        return OWNER
    return setup


def bob_after(change: Callable[[Client, str], Any]) -> Setup:
    def setup(c: Client, key_id: str) -> str:
        change(c, key_id)
        return BOB
    return setup


def _now() -> int:
    return int(time.time())


REASONS: list[tuple[str, Setup, Reason]] = [
    ("stranger", lambda c, k: STRANGER, Reason.NOT_AUTHORIZED),
    ("not_before in the future",
     owner_after(lambda c, k: c.update_key(k, not_before=_now() + 3600)), Reason.NOT_YET_VALID),
    ("not_after in the past",
     owner_after(lambda c, k: c.update_key(k, not_after=_now() - 60)), Reason.DATA_EXPIRED),
    ("grant disabled",
     bob_after(lambda c, k: (c.add_authorization(k, BOB), c.disable_authorization(k, BOB))),
     Reason.AUTHORIZATION_DISABLED),
    ("grant without decrypt",
     bob_after(lambda c, k: c.add_authorization(k, BOB, ["manage"])), Reason.NOT_AUTHORIZED),
    ("grant window not started",
     bob_after(lambda c, k: c.add_authorization(k, BOB, not_before=_now() + 3600)),
     Reason.NOT_YET_VALID),
    ("grant window over",
     bob_after(lambda c, k: c.add_authorization(k, BOB, not_before=_now() - 7200,
                                                not_after=_now() - 3600)),
     Reason.DATA_EXPIRED),
    ("network rule excludes 127.0.0.1",
     owner_after(lambda c, k: c.update_key(k, rules={"allowed_networks": ["10.0.0.0/8",
                                                                           "::1/128"]})),
     Reason.NETWORK_NOT_ALLOWED),
    ("budget spent", owner_after(lambda c, k: c.update_key(k, rules={"max_decryptions": 0})),
     Reason.MAX_DECRYPTIONS_REACHED),
    ("key disabled", owner_after(lambda c, k: c.disable_key(k)), Reason.KEY_DISABLED),
    ("key disabled, seen by a recipient",
     bob_after(lambda c, k: (c.add_authorization(k, BOB), c.disable_key(k))),
     Reason.KEY_DISABLED),
    ("key pending destruction",
     owner_after(lambda c, k: c.destroy_key(k, pending_days=30)), Reason.KEY_PENDING_DESTRUCTION),
    ("key destroyed", owner_after(lambda c, k: c.destroy_key(k)), Reason.KEY_DESTROYED),
    ("stranger on a destroyed key", lambda c, k: (c.destroy_key(k), STRANGER)[1],
     Reason.NOT_AUTHORIZED),
]


@pytest.fixture(scope="module")
def owner(server: Server, app: TestApp) -> Iterator[Client]:
    with server.client(app, OWNER) as c:
        yield c


@pytest.mark.parametrize(("case", "setup", "reason"), REASONS, ids=[r[0] for r in REASONS])
def test_each_reason_end_to_end(server: Server, app: TestApp, owner: Client, case: str,
                                setup: Setup, reason: Reason) -> None:
    key_id, envelope = owner.encrypt(b"guarded", aad=b"ctx")
    user = setup(owner, key_id)
    with server.client(app, user) as c:
        with pytest.raises(AccessDenied) as on_decrypt:
            c.decrypt(envelope, aad=b"ctx")
        with pytest.raises(AccessDenied) as on_data_key:
            c.get_data_key(key_id)
    assert on_decrypt.value.reason == reason
    assert on_data_key.value.reason == reason
    mine = [r for r in records(server) if r["key"] == key_id and r["user"] == user]
    assert [(r["action"], r["outcome"], r["reason"]) for r in mine[-2:]] == [
        ("DECRYPT", "DENIED", str(reason)), ("GET_DATA_KEY", "DENIED", str(reason))]


def test_key_expired(server: Server, app: TestApp, owner: Client) -> None:
    expires = _now() + 2
    key_id, envelope = owner.encrypt(b"short", expires_at=expires)
    with server.client(app, BOB) as bob:  # a stranger still learns nothing
        with pytest.raises(AccessDenied) as stranger:
            bob.decrypt(envelope)
    assert stranger.value.reason == Reason.NOT_AUTHORIZED
    assert owner.decrypt(envelope) == b"short"
    time.sleep(max(0.0, expires - time.time() + 0.2))
    with pytest.raises(AccessDenied) as exc:
        owner.decrypt(envelope)
    assert exc.value.reason == Reason.KEY_EXPIRED
    assert owner.describe_key(key_id)["status"] == "expired"
    # extending the lifetime brings it back
    owner.update_key(key_id, expires_at=_now() + 3600)
    assert owner.decrypt(envelope) == b"short"


def test_network_rule_that_includes_the_client(server: Server, owner: Client) -> None:
    key_id, envelope = owner.encrypt(b"local only",
                                     rules={"allowed_networks": ["127.0.0.0/8"]})
    assert owner.decrypt(envelope) == b"local only"


def test_pattern_grant_and_exact_carve_out(server: Server, app: TestApp, owner: Client) -> None:
    key_id, envelope = owner.encrypt(b"for partners")
    owner.add_authorization(key_id, "*@Partner.Example")
    owner.add_authorization(key_id, "bad@partner.example")
    owner.disable_authorization(key_id, "bad@partner.example")
    expected: list[tuple[str, Reason | None]] = [
        ("ann@PARTNER.example", None),
        ("bad@partner.example", Reason.AUTHORIZATION_DISABLED),
        ("ann@sub.partner.example", Reason.NOT_AUTHORIZED),
        ("ann@evil-partner.example", Reason.NOT_AUTHORIZED),
    ]
    for user, reason in expected:
        with server.client(app, user) as c:
            if reason is None:
                assert c.decrypt(envelope) == b"for partners"
            else:
                with pytest.raises(AccessDenied) as exc:
                    c.decrypt(envelope)
                assert exc.value.reason == reason, user


def test_max_decryptions_under_concurrency(server: Server, app: TestApp, owner: Client) -> None:
    key_id, envelope = owner.encrypt(b"five times", rules={"max_decryptions": 5})
    threads = 12
    barrier = threading.Barrier(threads)
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        with server.client(app, OWNER) as c:
            c.discover()
            barrier.wait()
            try:
                c.decrypt(envelope)
                result = "granted"
            except AccessDenied as exc:
                result = str(exc.reason)
            except SceauError as exc:  # pragma: no cover - reported by the assertion
                result = exc.code
        with lock:
            outcomes.append(result)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(60)
    assert sorted(outcomes) == ["granted"] * 5 + ["max_decryptions_reached"] * (threads - 5)
    assert owner.describe_key(key_id)["decryptions"] == 5
    trail = [r for r in records(server) if r["key"] == key_id and r["action"] == "DECRYPT"]
    assert sum(r["outcome"] == "GRANTED" for r in trail) == 5
    assert [r["reason"] for r in trail if r["outcome"] == "DENIED"] == (
        ["max_decryptions_reached"] * (threads - 5))


# --- records changed behind the service's back ------------------------------------------------


def _edit(server: Server, sql: str, **params: Any) -> None:
    """Change the store directly, as an attacker with database access would."""
    engines = create_engines(server.config().database_url)
    try:
        with engines.write.begin() as conn:
            assert conn.execute(sa.text(sql), params).rowcount == 1
    finally:
        engines.dispose()


TAMPERING: list[tuple[str, str, str]] = [
    ("add a recipient",
     "INSERT INTO authorizations (key_id, principal, rights, status, not_before, not_after, "
     "added_by, added_at) VALUES (:kid, :who, 'decrypt', 'active', NULL, NULL, :owner, 0)",
     STRANGER),
    ("re-enable a disabled key", "UPDATE keys SET status = 'active' WHERE key_id = :kid", OWNER),
    ("reset the decryption counter", "UPDATE keys SET decryptions = 0 WHERE key_id = :kid",
     OWNER),
]


@pytest.mark.parametrize(("case", "sql", "user"), TAMPERING, ids=[t[0] for t in TAMPERING])
def test_database_edit_is_integrity_failure(server: Server, app: TestApp, owner: Client,
                                            case: str, sql: str, user: str) -> None:
    key_id, envelope = owner.encrypt(b"sealed policy", rules={"max_decryptions": 1})
    owner.decrypt(envelope)
    owner.disable_key(key_id)
    _edit(server, sql, kid=b64u_decode(key_id), who=STRANGER, owner=OWNER)
    with server.client(app, user) as c:
        with pytest.raises(IntegrityFailure) as exc:
            c.decrypt(envelope)
    assert exc.value.code == "integrity_failure"
    with pytest.raises(IntegrityFailure):  # management refuses it too
        owner.enable_key(key_id)
    denied = [r for r in records(server) if r["key"] == key_id and r["outcome"] == "DENIED"]
    assert [(r["action"], r["reason"]) for r in denied[-2:]] == [
        ("DECRYPT", "integrity_failure"), ("ENABLE_KEY", "integrity_failure")]


def test_unknown_key_on_decrypt_paths(server: Server, owner: Client) -> None:
    with pytest.raises(NotFound):
        owner.get_data_key("A" * 21 + "A")
    with pytest.raises(NotFound):
        owner.describe_key(b64u_encode(os.urandom(16)))
    report = verify_store(server)
    assert report.ok, report.first_problem


def test_batch_decrypt_counts_each_use_of_a_shared_key(server: Server, app: TestApp,
                                                       owner: Client) -> None:
    """One batch using the same key three times with max_decryptions = 2: two grants, then
    the budget refusal; the counter is stored once at 2; a tampered and an unknown key in
    the same batch get their own errors; every item has its audit record."""
    key_id, envelope = owner.encrypt(b"twice", rules={"max_decryptions": 2})
    tampered_id, tampered = owner.encrypt(b"edited")
    _edit(server, "UPDATE keys SET owner = :who WHERE key_id = :kid",
          kid=b64u_decode(tampered_id), who=STRANGER)
    _other_id, other = owner.encrypt(b"other")
    unknown = bytearray(other)
    unknown[5:21] = os.urandom(16)  # a well-formed envelope naming no key
    items = [{"ciphertext": b64u_encode(bytes(e))}
             for e in (envelope, tampered, envelope, unknown, other, envelope)]
    out = owner.call("decrypt", {"items": items})["items"]
    assert out[0]["plaintext"] == b64u_encode(b"twice")
    assert out[1]["error"]["code"] == "integrity_failure"
    assert out[2]["plaintext"] == b64u_encode(b"twice")
    assert out[3]["error"]["code"] == "not_found"
    assert out[4]["plaintext"] == b64u_encode(b"other")
    assert out[5]["error"]["reason"] == "max_decryptions_reached"
    assert owner.describe_key(key_id)["decryptions"] == 2
    decrypts = [r for r in records(server) if r["action"] == "DECRYPT"][-6:]
    assert [r["outcome"] for r in decrypts] == [
        "GRANTED", "DENIED", "GRANTED", "DENIED", "GRANTED", "DENIED"]
    assert [r["details"]["item"] for r in decrypts] == list(range(6))
    report = verify_store(server)
    assert report.ok, report.first_problem


def test_batch_encrypt_writes_keys_only_for_its_good_items(server: Server,
                                                           owner: Client) -> None:
    before = count_rows(server, "keys")
    out = owner.call("encrypt", {"items": [
        {"plaintext": b64u_encode(b"a")}, {"plaintext": "not base64!"},
        {"plaintext": b64u_encode(b"c")}, {"plaintext": b64u_encode(b"x" * 10), "bogus": 1},
    ]})["items"]
    assert ["key_id" in r for r in out] == [True, False, True, False]
    assert count_rows(server, "keys") == before + 2
    for good in (out[0], out[2]):
        assert owner.describe_key(good["key_id"])["owner"] == OWNER
