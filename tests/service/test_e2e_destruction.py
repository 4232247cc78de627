"""End to end: crypto-shredding, receipts, the pending-destruction sweep, purge-expired.

Receipts are checked with ``cryptography`` and the JWKS alone (no Sceau code). The seed of a
destroyed key is read from the SQLite file before destruction and looked for, byte for byte,
in the database files after a WAL checkpoint. The sweep runs in a dedicated server whose
"day" lasts one second (``SCEAU_DAY_SECONDS``, tests only) and which sweeps every 0.3 s.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from typer.testing import CliRunner

from audit_support import records, verify_store
from sceau.cli.main import cli
from sceau.client import Client
from sceau.errors import AccessDenied, InvalidRequest
from sceau.vocab import Reason
from support import Server, TestApp, make_server

OWNER = "dana@example.com"


def b64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jwks_of(server: Server) -> dict[str, Any]:
    jwks: dict[str, Any] = httpx.get(f"{server.url}/.well-known/jwks.json",
                                     verify=server.cert).json()
    return jwks


def verify_receipt(token: str, jwks: dict[str, Any]) -> dict[str, Any]:
    """Check a receipt JWS with the JWKS only; return its claims."""
    head_b64, claims_b64, sig_b64 = token.split(".")
    header = json.loads(b64u(head_b64))
    assert set(header) == {"alg", "kid", "typ"} and header["typ"] == "sceau-receipt+jwt"
    jwk = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    signed, sig = f"{head_b64}.{claims_b64}".encode(), b64u(sig_b64)
    if header["alg"] == "EdDSA":
        Ed25519PublicKey.from_public_bytes(b64u(jwk["x"])).verify(sig, signed)
    else:
        assert header["alg"] == "ES256" and len(sig) == 64
        public = ec.EllipticCurvePublicNumbers(
            int.from_bytes(b64u(jwk["x"])), int.from_bytes(b64u(jwk["y"])), ec.SECP256R1()
        ).public_key()
        der = encode_dss_signature(int.from_bytes(sig[:32]), int.from_bytes(sig[32:]))
        public.verify(der, signed, ec.ECDSA(hashes.SHA256()))
    claims: dict[str, Any] = json.loads(b64u(claims_b64))
    return claims


def record_at(server: Server, seq: int) -> dict[str, Any]:
    return next(r for r in records(server) if r["seq"] == seq)


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.2)


# --- immediate destruction (both stores) ------------------------------------------------------

AFTER_DESTRUCTION: list[tuple[str, Callable[[Client, str, bytes], Any]]] = [
    ("decrypt", lambda c, k, env: c.decrypt(env)),
    ("get-data-key", lambda c, k, env: c.get_data_key(k)),
    ("enable-key", lambda c, k, env: c.enable_key(k)),
    ("disable-key", lambda c, k, env: c.disable_key(k)),
    ("update-key", lambda c, k, env: c.update_key(k, name="resurrected")),
    ("add-authorization", lambda c, k, env: c.add_authorization(k, "x@example.com")),
    ("destroy-key again", lambda c, k, env: c.destroy_key(k)),
    ("destroy-key pending", lambda c, k, env: c.destroy_key(k, pending_days=3)),
    ("cancel-destruction", lambda c, k, env: c.cancel_destruction(k)),
    ("encrypt with the key", lambda c, k, env: c.encrypt(b"more", key_id=k)),
]


def test_destroy_receipt_and_irreversibility(server: Server, app: TestApp) -> None:
    with server.client(app, OWNER) as c:
        key_id, envelope = c.encrypt(b"forget me", name="gdpr")
        result = c.destroy_key(key_id)
        claims = verify_receipt(result["receipt"], jwks_of(server))
        assert set(claims) == {"iss", "key_id", "destroyed_at", "seq", "hash"}
        assert claims["iss"] == server.url and claims["key_id"] == key_id == result["key_id"]
        assert time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(claims["destroyed_at"])) == (
            result["destroyed_at"])
        rec = record_at(server, claims["seq"])
        assert rec["hash"] == claims["hash"]
        assert (rec["action"], rec["outcome"], rec["key"], rec["user"]) == (
            "DESTROY_KEY", "GRANTED", key_id, OWNER)
        refusals = {}
        for name, attempt in AFTER_DESTRUCTION:
            with pytest.raises(AccessDenied) as exc:
                attempt(c, key_id, envelope)
            refusals[name] = exc.value.reason
        assert refusals == {name: Reason.KEY_DESTROYED for name, _ in AFTER_DESTRUCTION}
        meta = c.describe_key(key_id)  # the tombstone still answers
        assert meta["status"] == "destroyed" and meta["destroyed_at"] == result["destroyed_at"]
        accesses = c.list_accesses(key_id)["accesses"]
        assert accesses[0]["action"] == "DESCRIBE_KEY"
        assert [r["key"] for r in accesses] == [key_id] * len(accesses)
        assert [k["key_id"] for k in c.list_keys(status="destroyed")["keys"]][:1] == [key_id]


def test_tampering_with_a_receipt_is_detected(server: Server, app: TestApp) -> None:
    with server.client(app, OWNER) as c:
        key_id, _ = c.encrypt(b"x")
        token = c.destroy_key(key_id)["receipt"]
    head, claims, sig = token.split(".")
    forged = json.loads(b64u(claims))
    forged["key_id"] = "A" * 22
    forged_b64 = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
    with pytest.raises(InvalidSignature):
        verify_receipt(f"{head}.{forged_b64}.{sig}", jwks_of(server))


# --- a dedicated SQLite server with one-second days ----------------------------------------------


@pytest.fixture(scope="module")
def fast(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = make_server(tmp_path_factory.mktemp("fastdays"), env={
        "SCEAU_DAY_SECONDS": "1", "SCEAU_SWEEP_INTERVAL_S": "0.3", "SCEAU_DATABASE_URL": "",
    })
    yield srv
    if srv.proc is not None:
        srv.stop()


@pytest.fixture(scope="module")
def fast_app(fast: Server) -> TestApp:
    return fast.register_app("fast")


def db_path(server: Server) -> Path:
    url = server.config().database_url
    assert url.startswith("sqlite:///")
    return Path(url.removeprefix("sqlite:///"))


def read_seed(server: Server, key_id: str) -> bytes | None:
    with sqlite3.connect(db_path(server)) as conn:
        row = conn.execute("SELECT seed FROM keys WHERE key_id = ?", (b64u(key_id),)).fetchone()
    return None if row[0] is None else bytes(row[0])


def checkpoint(server: Server) -> None:
    """Copy the WAL into the database and truncate it, from a separate connection."""
    conn = sqlite3.connect(db_path(server), timeout=10)
    try:
        for _ in range(50):
            busy, _log, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy == 0:
                return
            time.sleep(0.1)
        raise AssertionError("the WAL checkpoint stayed busy")
    finally:
        conn.close()


def database_bytes(server: Server) -> bytes:
    path = db_path(server)
    files = [path, *(path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal"))]
    return b"".join(f.read_bytes() for f in files if f.exists())


def test_seed_is_gone_from_the_database_files(fast: Server, fast_app: TestApp) -> None:
    with fast.client(fast_app, OWNER) as c:
        key_id, _ = c.encrypt(b"shred me")
        seed = read_seed(fast, key_id)
        assert seed is not None and len(seed) == 32
        checkpoint(fast)
        # the search can find a live seed: otherwise the test below would prove nothing
        assert seed in database_bytes(fast)
        c.destroy_key(key_id)
    assert read_seed(fast, key_id) is None
    # the node itself checkpoints and truncates the WAL within a sweep interval...
    wait_for(lambda: seed not in database_bytes(fast), timeout=10)
    # ...and a checkpoint from outside (as an operator before a backup) finds nothing either
    checkpoint(fast)
    assert seed not in database_bytes(fast)


def test_pending_destruction_is_swept_unless_cancelled(fast: Server, fast_app: TestApp) -> None:
    with fast.client(fast_app, OWNER) as c:
        doomed, envelope = c.encrypt(b"soon gone")
        spared, _ = c.encrypt(b"saved")
        started = int(time.time())
        meta = c.destroy_key(doomed, pending_days=2)  # two one-second days
        assert meta["status"] == "pending_destruction" and meta["destroy_at"] is not None
        c.destroy_key(spared, pending_days=2)
        # only cancel-destruction or destroy-key with 0 act on a pending key
        for attempt in (lambda: c.enable_key(doomed), lambda: c.disable_key(doomed),
                        lambda: c.update_key(doomed, tag="x"),
                        lambda: c.add_authorization(doomed, "x@example.com"),
                        lambda: c.destroy_key(doomed, pending_days=5),
                        lambda: c.decrypt(envelope)):
            with pytest.raises(AccessDenied) as exc:
                attempt()
            assert exc.value.reason == Reason.KEY_PENDING_DESTRUCTION
        back = c.cancel_destruction(spared)
        assert back["status"] == "disabled" and back["destroy_at"] is None
        with pytest.raises(InvalidRequest, match="key_id"):
            c.cancel_destruction(spared)
        assert c.describe_key(doomed)["status"] == "pending_destruction"
        wait_for(lambda: c.describe_key(doomed)["status"] == "destroyed")
        assert time.time() >= started + 2
        time.sleep(0.7)  # a couple more sweeps
        assert c.describe_key(spared)["status"] == "disabled"
        with pytest.raises(AccessDenied) as exc:
            c.decrypt(envelope)
        assert exc.value.reason == Reason.KEY_DESTROYED
    assert read_seed(fast, doomed) is None
    trail = [(r["user"], r["app"], r["outcome"], r["details"].get("sweep"))
             for r in records(fast) if r["key"] == doomed and r["action"] == "DESTROY_KEY"]
    # scheduled by the owner, refused reschedule, then exactly one destruction by the sweep
    assert trail == [(OWNER, fast_app.app_id, "GRANTED", None),
                     (OWNER, fast_app.app_id, "DENIED", None),
                     ("sceau", None, "GRANTED", True)]
    assert [r for r in records(fast) if r["key"] == spared and r["user"] == "sceau"] == []


def test_sweep_waits_while_another_node_holds_the_lease(fast: Server,
                                                       fast_app: TestApp) -> None:
    with sqlite3.connect(db_path(fast), timeout=10) as conn:
        conn.execute("INSERT INTO node_leases (node, holder, expires_at) VALUES "
                     "('sweep:global', 'otherhost|1|abc', ?)", (int(time.time()) + 3600,))
    with fast.client(fast_app, OWNER) as c:
        key_id, _ = c.encrypt(b"not yet")
        c.destroy_key(key_id, pending_days=1)
        time.sleep(2.0)  # due for a second; the other "node" has not swept it
        assert c.describe_key(key_id)["status"] == "pending_destruction"
        with sqlite3.connect(db_path(fast), timeout=10) as conn:
            conn.execute("DELETE FROM node_leases WHERE node = 'sweep:global'")
        wait_for(lambda: c.describe_key(key_id)["status"] == "destroyed")


def test_sweep_survives_a_restart(fast: Server, fast_app: TestApp) -> None:
    with fast.client(fast_app, OWNER) as c:
        key_id, _ = c.encrypt(b"across restarts")
        destroy_at = int(time.time()) + 2
        c.destroy_key(key_id, pending_days=2)
    fast.stop()
    time.sleep(max(0.0, destroy_at + 0.5 - time.time()))
    assert read_seed(fast, key_id) is not None  # nobody swept while the node was down
    fast.start()
    with fast.client(fast_app, OWNER) as c:
        wait_for(lambda: c.describe_key(key_id)["status"] == "destroyed")
    report = verify_store(fast)
    assert report.ok, report.first_problem


def test_purge_expired_destroys_in_bulk_with_receipts(fast: Server, fast_app: TestApp) -> None:
    t0 = int(time.time())
    with fast.client(fast_app, OWNER) as c:
        expired = c.encrypt(b"old", expires_at=t0 + 2)[0]
        expired_off = c.encrypt(b"old and off", expires_at=t0 + 2)[0]
        c.disable_key(expired_off)
        live = c.encrypt(b"current")[0]
    time.sleep(max(0.0, t0 + 2.3 - time.time()))
    runner = CliRunner()
    env = {**fast.env, "SCEAU_DATA_DIR": str(fast.data_dir)}
    asked = runner.invoke(cli, ["key", "purge-expired", "--older-than", "0"], env=env,
                          input="n\n")
    assert asked.exit_code != 0
    result = runner.invoke(cli, ["key", "purge-expired", "--older-than", "0", "--yes", "--json"],
                           env=env)
    assert result.exit_code == 0, (result.output, result.exception)
    out = json.loads(result.stdout)
    assert out["refused"] == []
    assert {d["key_id"] for d in out["destroyed"]} == {expired, expired_off}
    jwks = jwks_of(fast)
    for done in out["destroyed"]:
        claims = verify_receipt(done["receipt"], jwks)
        rec = record_at(fast, claims["seq"])
        assert rec["hash"] == claims["hash"] and rec["key"] == done["key_id"]
        assert (rec["action"], rec["app"], rec["details"]["purge"]) == ("DESTROY_KEY", "cli", True)
    summary = [r for r in records(fast) if r["action"] == "PURGE_EXPIRED"][-1]
    assert summary["details"]["destroyed"] == 2
    with fast.client(fast_app, OWNER) as c:
        assert c.describe_key(expired)["status"] == "destroyed"
        assert c.describe_key(live)["status"] == "active"
    again = runner.invoke(cli, ["key", "purge-expired", "--older-than", "0", "--yes"], env=env)
    assert again.exit_code == 0 and "no expired key" in again.stdout
    report = verify_store(fast)
    assert report.ok, report.first_problem
