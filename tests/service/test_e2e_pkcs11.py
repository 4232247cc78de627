"""End to end on a PKCS#11 token (SoftHSM2): the service, rotation and failure (issue 5).

One `sceau serve` per module whose keystore is a fresh SoftHSM2 token. Rotation runs
through the `sceau keystore` command line while the server runs, as an operator would.
The self-test case restarts the server, so it comes last.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest

from audit_support import count_rows, last_record, verify_store
from hsm_support import SoftHsmToken, new_softhsm_token, register_app_via_cli, token_env_here
from sceau.core.b64 import b64u_encode
from sceau.errors import AccessDenied, KeystoreUnavailable, NotFound
from sceau.vocab import Reason
from support import Server, TestApp, make_server, run_cli

pytestmark = pytest.mark.pkcs11

OWNER = "alice@example.com"
RECIPIENT = "bob@example.com"
STRANGER = "mallory@example.org"
# A pkcs11 server re-reads the token's inventory every 10 s (Pkcs11Keystore.inventory_ttl).
FOLLOW_TIMEOUT = 15.0

T = TypeVar("T")


@pytest.fixture(scope="module")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> SoftHsmToken:
    return new_softhsm_token(tmp_path_factory.mktemp("hsm"))


@pytest.fixture(scope="module")
def hsm_server(hsm: SoftHsmToken, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {**hsm.env(), "SCEAU_DATABASE_URL": ""}
    srv = make_server(tmp_path_factory.mktemp("server-pkcs11"), env=env,
                      init_args=hsm.init_args())
    yield srv
    if srv.proc is not None:
        srv.stop()


@pytest.fixture(scope="module")
def hsm_app(hsm_server: Server) -> TestApp:
    return register_app_via_cli(hsm_server, "on-a-token")


def keystore_cli(server: Server, *args: str, check: bool = True) -> Any:
    return run_cli("keystore", *args, "--data-dir", str(server.data_dir), env=server.env,
                   check=check)


def keystore_status(server: Server) -> dict[str, Any]:
    status: dict[str, Any] = json.loads(keystore_cli(server, "status", "--json").stdout)
    return status


def eventually(probe: Callable[[], T | None], what: str, timeout: float = FOLLOW_TIMEOUT) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def readyz(server: Server) -> httpx.Response:
    return httpx.get(f"{server.url}/readyz", verify=server.cert, timeout=10)


def test_keys_are_the_tokens(hsm_server: Server, hsm: SoftHsmToken) -> None:
    status = keystore_status(hsm_server)
    assert status["backend"] == "pkcs11" and status["token"] == hsm.label
    signers = {(o["kind"], o["kid"]): o["alg"] for o in status["objects"]
               if o["kind"] in ("response", "audit")}
    jwks = httpx.get(f"{hsm_server.url}/.well-known/jwks.json", verify=hsm_server.cert).json()
    published = {k["kid"]: k["alg"] for k in jwks["keys"] if k["use"] == "sig"}
    assert published == {kid: alg for (_kind, kid), alg in signers.items()}
    # SoftHSM2 2.6 offers EdDSA; a token without it gets ES256 keys, and the JWKS follows.
    algs = set(published.values())
    assert len(algs) == 1 and algs <= {"EdDSA", "ES256"}
    crv = {"EdDSA": "Ed25519", "ES256": "P-256"}[algs.pop()]
    assert {k["crv"] for k in jwks["keys"] if k["use"] == "sig"} == {crv}
    token_audit_kids = [kid for (kind, kid) in signers if kind == "audit"]
    assert discovery(hsm_server)["audit_kids"] == token_audit_kids
    # The PIN is in no file of the data dir (sceau.toml names only its variable).
    toml = (hsm_server.data_dir / "sceau.toml").read_text()
    assert f'pin_env = "{hsm.pin_env}"' in toml and f'pkcs11_token = "{hsm.label}"' in toml
    for path in hsm_server.data_dir.rglob("*"):
        if path.is_file():
            assert hsm.pin.encode() not in path.read_bytes(), path


def test_core_flows_on_the_token(hsm_server: Server, hsm_app: TestApp) -> None:
    with hsm_server.client(hsm_app, OWNER) as c:
        key_id, envelope = c.encrypt(b"in the token", aad=b"doc", recipients=[RECIPIENT])
        assert c.decrypt(envelope, aad=b"doc") == b"in the token"
        dk = c.generate_data_key(name="local")
        assert c.get_data_key(dk.key_id) == dk.key
        assert c.open_local(c.seal_local(b"client side")) == b"client side"
        assert c.describe_key(key_id)["master_version"] == 1
    with hsm_server.client(hsm_app, RECIPIENT) as c:
        assert c.decrypt(envelope, aad=b"doc") == b"in the token"
    with hsm_server.client(hsm_app, STRANGER) as c:
        with pytest.raises(AccessDenied) as denied:
            c.decrypt(envelope, aad=b"doc")
        assert denied.value.reason == Reason.NOT_AUTHORIZED
        with pytest.raises(NotFound):
            c.describe_key(key_id)
    report = verify_store(hsm_server)
    assert report.ok, report.first_problem


def test_in_process_admin_reaches_the_token(hsm_server: Server) -> None:
    """What a backend-parametrized `server` fixture needs: `register_app` in this process."""
    with token_env_here(hsm_server.env):
        other = hsm_server.register_app("registered-in-process")
    with hsm_server.client(other, OWNER) as c:
        _, envelope = c.encrypt(b"hello")
        assert c.decrypt(envelope) == b"hello"


def discovery(server: Server) -> dict[str, Any]:
    config: dict[str, Any] = httpx.get(f"{server.url}/.well-known/sceau-configuration",
                                       verify=server.cert).json()
    return config


def test_rotation_while_serving(hsm_server: Server, hsm_app: TestApp) -> None:
    with hsm_server.client(hsm_app, OWNER) as c:
        old_key, old_envelope = c.encrypt(b"before the rotation")
    old_audit = discovery(hsm_server)["audit_kids"]
    keystore_cli(hsm_server, "rotate", "--master", "--audit")

    def new_key_version() -> int | None:
        with hsm_server.client(hsm_app, OWNER) as c:
            key_id, _ = c.encrypt(b"after")
            version: int = c.describe_key(key_id)["master_version"]
        return version if version == 2 else None

    # No restart: the running server picks up the token's new master version by itself.
    eventually(new_key_version, "new keys on master version 2")
    with hsm_server.client(hsm_app, OWNER) as c:
        assert c.describe_key(old_key)["master_version"] == 1
        assert c.decrypt(old_envelope) == b"before the rotation"

    status = keystore_status(hsm_server)
    masters = {o["version"]: o for o in status["objects"] if o["kind"] == "master"}
    assert masters[2]["current"] and not masters[1]["current"]
    assert masters[1]["live_keys"] >= 1 and masters[2]["live_keys"] >= 1
    new_audit = next(o["kid"] for o in status["objects"] if o["kind"] == "audit" and o["current"])
    assert new_audit not in old_audit

    def audit_kids() -> list[str] | None:
        kids: list[str] = discovery(hsm_server)["audit_kids"]
        return kids if kids[0] == new_audit else None

    assert eventually(audit_kids, "the new audit kid")[1:] == old_audit
    with hsm_server.client(hsm_app, OWNER) as c:
        c.encrypt(b"signed by the new audit key")
    assert last_record(hsm_server, action="ENCRYPT")["kid"] == new_audit
    rotated = last_record(hsm_server, action="KEYSTORE_ROTATE")
    assert rotated["details"] == {"what": "audit", "new_version": 2, "new_kid": new_audit,
                                  "alg": rotated["details"]["alg"]}
    report = verify_store(hsm_server)  # old and new kids both in the JWKS
    assert report.ok, report.first_problem

    refused = keystore_cli(hsm_server, "retire", "--master", "1", check=False)
    assert refused.returncode == 1 and b"still used by" in refused.stderr
    denied = last_record(hsm_server, action="KEYSTORE_ROTATE")
    assert denied["outcome"] == "DENIED" and denied["details"]["what"] == "retire_master"
    with hsm_server.client(hsm_app, OWNER) as c:
        assert c.decrypt(old_envelope) == b"before the rotation"


def test_token_gone_then_back(hsm_server: Server, hsm_app: TestApp, hsm: SoftHsmToken) -> None:
    """SECURITY-CASES 31: no token → /readyz 503 naming the keystore, calls 503, no commit."""
    with hsm_server.client(hsm_app, OWNER) as c:
        _, envelope = c.encrypt(b"survives the outage")
    audit_before, keys_before = count_rows(hsm_server, "audit_records"), count_rows(
        hsm_server, "keys")
    with hsm.store_removed():

        def not_ready() -> list[str] | None:
            r = readyz(hsm_server)
            problems: list[str] = r.json().get("problems", [])
            return problems if r.status_code == 503 else None

        problems = eventually(not_ready, "/readyz to fail")
        assert "keystore" in problems, problems
        with hsm_server.client(hsm_app, OWNER) as c:
            for call in (lambda: c.encrypt(b"x"), lambda: c.decrypt(envelope),
                         lambda: c.describe_key(b64u_encode(os.urandom(16)))):
                with pytest.raises(KeystoreUnavailable):
                    call()
        # The writer could not sign the batch's audit records: it failed as a whole.
        assert count_rows(hsm_server, "audit_records") == audit_before
        assert count_rows(hsm_server, "keys") == keys_before
    hsm_server.wait_ready(timeout=FOLLOW_TIMEOUT)  # back without a restart
    with hsm_server.client(hsm_app, OWNER) as c:
        assert c.decrypt(envelope) == b"survives the outage"
    report = verify_store(hsm_server)
    assert report.ok, report.first_problem


def test_data_dir_unchanged_paths(hsm_server: Server) -> None:
    """The token installation keeps only the JWE key on disk (docs/hsm.md)."""
    files = sorted(p.name for p in (hsm_server.data_dir / "keystore").iterdir())
    assert files == ["jwe.json"]
    assert oct((hsm_server.data_dir / "keystore" / "jwe.json").stat().st_mode & 0o777) == "0o600"


def test_failed_self_test_refuses_crypto(hsm_server: Server, hsm_app: TestApp) -> None:
    """SECURITY-CASES 22: a start-up known-answer test fails → no crypto, /readyz says why."""
    hsm_server.stop()
    hsm_server.env["SCEAU_SELFTEST_FAIL"] = "hmac_sha256_keystore"
    try:
        hsm_server.start(wait=False)
        hsm_server.wait_ready(expect_ready=False)
        r = readyz(hsm_server)
        assert r.status_code == 503
        assert r.json()["problems"] == ["selftest"]  # the class; the test's name is logged
        assert "keystore self-test failed: hmac_sha256_keystore" in hsm_server.log()
        with hsm_server.client(hsm_app, OWNER) as c:
            with pytest.raises(KeystoreUnavailable):
                c.encrypt(b"refused")
        refused = httpx.post(f"{hsm_server.url}/v1/decrypt", content=b"x",
                             headers={"Content-Type": "application/jose"},
                             verify=hsm_server.cert)
        assert refused.status_code == 503
        assert refused.json()["type"] == "urn:sceau:error:keystore_unavailable"
    finally:
        # Last test of the module: the fixture's teardown needs no running server.
        hsm_server.stop()
        del hsm_server.env["SCEAU_SELFTEST_FAIL"]
