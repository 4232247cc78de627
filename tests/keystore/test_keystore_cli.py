"""`sceau init --keystore pkcs11` and `sceau keystore ...` (issue 5), in-process for speed.

The commands run through Typer's runner against real data dirs, real stores and the
session's SoftHSM2 (tests/keystore/conftest.py); the end-to-end file
(tests/service/test_e2e_pkcs11.py) runs them as processes beside a running server.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from sceau.cli.main import cli
from sceau.config import load_config
from sceau.core.model import Rules
from sceau.core.verify import verify_lines
from sceau.errors import ConfigError, InvalidRequest, KeystoreUnavailable
from sceau.keystore import open_keystore
from sceau.service import keyops
from sceau.service.runtime import keystore_settings, open_store
from sceau.store import schema
from sceau.store.audit import iter_audit_lines
from sceau.store.keys import insert_keys
from sceau.store.leases import acquire_lease, release_lease

PIN_ENV = "SCEAU_TEST_PKCS11_PIN"  # set by the softhsm fixture (tests/keystore/conftest.py)
OWNER = "alice@example.com"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def hsm(softhsm: Any) -> Any:
    return softhsm


def invoke(runner: CliRunner, *args: str) -> Any:
    """Run `sceau ARGS`; a SceauError comes back as ``result.exception``."""
    return runner.invoke(cli, list(args))


def ok(runner: CliRunner, *args: str) -> str:
    result = invoke(runner, *args)
    assert result.exit_code == 0, (result.output, result.exception)
    return str(result.stdout)


def pkcs11_args(hsm: Any, token: str) -> tuple[str, ...]:
    return ("--module", hsm.module, "--token", token)


def status(runner: CliRunner, data_dir: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(
        ok(runner, "keystore", "status", "--json", "--data-dir", str(data_dir))
    )
    return report


def masters(report: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {o["version"]: o for o in report["objects"] if o["kind"] == "master"}


def add_key(data_dir: Path) -> bytes:
    """One key record on the current master version, as the service would create it."""
    config = load_config(data_dir)
    engines = open_store(config)
    now = int(time.time())
    try:
        with open_keystore(keystore_settings(config)) as ks:
            record = keyops.new_key(ks, owner=OWNER, application="app_test", now=now,
                                    expires_at=now + 86400, name=None, tag=None,
                                    not_before=None, not_after=None, recipients=(),
                                    rules=Rules())
        with engines.write.begin() as conn:
            insert_keys(conn, [record])
    finally:
        engines.dispose()
    return record.key_id


def mark_destroyed(data_dir: Path, key_id: bytes) -> None:
    engines = open_store(load_config(data_dir))
    try:
        with engines.write.begin() as conn:
            conn.execute(schema.keys.update().where(schema.keys.c.key_id == key_id)
                         .values(status="destroyed"))
    finally:
        engines.dispose()


def trail(data_dir: Path) -> list[dict[str, Any]]:
    """Every audit record, after checking the whole trail against the keystore's JWKS."""
    config = load_config(data_dir)
    engines = open_store(config)
    try:
        with engines.read.connect() as conn:
            lines = [line for _seq, _kind, line in iter_audit_lines(conn)]
    finally:
        engines.dispose()
    with open_keystore(keystore_settings(config)) as ks:
        report = verify_lines(lines, ks.public_jwks())
    assert report.ok, report.first_problem
    return [r for r in map(json.loads, lines) if r["type"] == "record"]


@pytest.fixture
def pkcs11_dir(runner: CliRunner, hsm: Any, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    token = hsm.new_token()
    data_dir = tmp_path / "data"
    ok(runner, "init", "--data-dir", str(data_dir), "--keystore", "pkcs11",
       *pkcs11_args(hsm, token), "--pin-env", PIN_ENV)
    yield data_dir, token


# --- init ----------------------------------------------------------------------------------


@pytest.mark.pkcs11
@pytest.mark.parametrize("source", ["env", "file"])
def test_init_records_where_the_pin_is_never_the_pin(
    runner: CliRunner, hsm: Any, tmp_path: Path, source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = hsm.new_token()
    data_dir = tmp_path / "data"
    if source == "file":
        pin_file = tmp_path / "pin"
        pin_file.write_text(hsm.pin + "\n")
        pin_file.chmod(0o600)
        monkeypatch.delenv(PIN_ENV)  # only the file can unlock the token now
        pin_args: tuple[str, ...] = ("--pin-file", str(pin_file))
    else:
        pin_args = ("--pin-env", PIN_ENV)
    out = ok(runner, "init", "--data-dir", str(data_dir), "--keystore", "pkcs11",
             *pkcs11_args(hsm, token), *pin_args)
    assert "keystore: pkcs11" in out
    config = load_config(data_dir)
    assert config.keystore.backend == "pkcs11"
    assert config.keystore.pkcs11_token == token
    assert config.keystore.pkcs11_module == hsm.module
    if source == "file":
        assert config.keystore.pin_file == str(pin_file)
    else:
        assert config.keystore.pin_env == PIN_ENV
    for path in data_dir.rglob("*"):
        if path.is_file():
            assert hsm.pin.encode() not in path.read_bytes(), path
    report = status(runner, data_dir)
    assert report["backend"] == "pkcs11" and report["token"] == token
    assert masters(report) == {1: {"label": "sceau-master-v1", "kind": "master", "version": 1,
                                   "kid": None, "current": True, "retired": False,
                                   "live_keys": 0}}
    assert {o["kind"] for o in report["objects"]} == {"master", "seal", "response", "audit",
                                                      "jwe"}
    assert hsm.pin not in json.dumps(report)
    assert "sceau-master-v1" in ok(runner, "keystore", "status", "--data-dir", str(data_dir))


@pytest.mark.parametrize("command", [["init"], ["keystore", "init", "--pkcs11"],
                                     ["keystore", "migrate", "--to", "pkcs11"]])
def test_a_pin_is_not_an_option(runner: CliRunner, tmp_path: Path, command: list[str]) -> None:
    result = invoke(runner, *command, "--data-dir", str(tmp_path / "d"), "--pin", "1234")
    assert result.exit_code == 2 and "No such option" in result.output
    assert not (tmp_path / "d").exists()


@pytest.mark.pkcs11
@pytest.mark.parametrize("problem", ["unknown token", "env disagrees", "pin twice", "no token"])
def test_failed_init_leaves_nothing_behind(
    runner: CliRunner, hsm: Any, tmp_path: Path, problem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = hsm.new_token()
    data_dir = tmp_path / "data"
    good = (*pkcs11_args(hsm, token), "--pin-env", PIN_ENV)
    args: tuple[str, ...] = good
    expected: type[Exception] = ConfigError
    if problem == "unknown token":
        args, expected = (*pkcs11_args(hsm, "no-such-token"), "--pin-env", PIN_ENV), \
            KeystoreUnavailable
    elif problem == "env disagrees":
        monkeypatch.setenv("SCEAU_PKCS11_TOKEN", "another-token")
    elif problem == "pin twice":
        args += ("--pin-file", str(tmp_path / "pin"))
    else:
        args = ("--module", hsm.module, "--pin-env", PIN_ENV)
    result = invoke(runner, "init", "--data-dir", str(data_dir), "--keystore", "pkcs11", *args)
    assert isinstance(result.exception, expected), result.exception
    assert not data_dir.exists()
    if problem == "unknown token":
        # Nothing was created anywhere: the same command works once fixed.
        ok(runner, "init", "--data-dir", str(data_dir), "--keystore", "pkcs11", *good)


@pytest.mark.pkcs11
def test_es256_when_asked_and_rotations_keep_it(
    runner: CliRunner, hsm: Any, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    ok(runner, "init", "--data-dir", str(data_dir), "--keystore", "pkcs11",
       *pkcs11_args(hsm, hsm.new_token()), "--pin-env", PIN_ENV, "--signing-alg", "ES256")
    ok(runner, "keystore", "rotate", "--response", "--data-dir", str(data_dir))
    signers = [o for o in status(runner, data_dir)["objects"]
               if o["kind"] in ("response", "audit")]
    assert [(o["kind"], o["version"], o["alg"]) for o in signers] == [
        ("response", 1, "ES256"), ("response", 2, "ES256"), ("audit", 1, "ES256")]


# --- rotate and retire ------------------------------------------------------------------------


@pytest.fixture
def data_dir(runner: CliRunner, backend: str, request: pytest.FixtureRequest,
             tmp_path: Path) -> Path:
    """An initialized data dir on the current backend."""
    target = tmp_path / "data"
    extra: tuple[str, ...] = ()
    if backend == "pkcs11":
        hsm = request.getfixturevalue("softhsm")
        extra = ("--keystore", "pkcs11", *pkcs11_args(hsm, hsm.new_token()), "--pin-env", PIN_ENV)
    ok(runner, "init", "--data-dir", str(target), *extra)
    return target


def test_rotate_and_retire_master(runner: CliRunner, data_dir: Path) -> None:
    where = ("--data-dir", str(data_dir))
    key_id = add_key(data_dir)
    out = ok(runner, "keystore", "rotate", "--master", "--audit", *where)
    assert "version 2 is now current" in out
    newer = add_key(data_dir)
    report = status(runner, data_dir)
    assert {v: (m["current"], m["live_keys"]) for v, m in masters(report).items()} == {
        1: (False, 1), 2: (True, 1)}
    assert report["live_keys_by_master_version"] == {"1": 1, "2": 1}

    in_use = invoke(runner, "keystore", "retire", "--master", "1", *where)
    assert isinstance(in_use.exception, InvalidRequest)
    assert "still used by 1 live key" in str(in_use.exception)
    current = invoke(runner, "keystore", "retire", "--master", "2", *where)
    assert isinstance(current.exception, InvalidRequest) and "current" in str(current.exception)
    assert invoke(runner, "keystore", "rotate", *where).exit_code == 1  # nothing named

    mark_destroyed(data_dir, key_id)
    assert "destroyed" in ok(runner, "keystore", "retire", "--master", "1", *where)
    after = masters(status(runner, data_dir))
    assert after[1]["retired"] and not after[2]["retired"] and after[2]["live_keys"] == 1
    with open_keystore(keystore_settings(load_config(data_dir))) as ks:
        assert ks.master_versions() == [2]
    assert newer

    rotations = [r for r in trail(data_dir) if r["action"] == "KEYSTORE_ROTATE"]
    assert [(r["outcome"], r["details"]["what"]) for r in rotations] == [
        ("GRANTED", "master"), ("GRANTED", "audit"), ("DENIED", "retire_master"),
        ("DENIED", "retire_master"), ("GRANTED", "retire_master")]
    assert rotations[0]["details"]["new_version"] == 2
    assert rotations[1]["kid"] == rotations[1]["details"]["new_kid"]  # signed by the new key


def test_status_warns_about_keys_on_a_missing_version(runner: CliRunner, data_dir: Path) -> None:
    add_key(data_dir)
    engines = open_store(load_config(data_dir))
    try:
        with engines.write.begin() as conn:
            conn.execute(schema.keys.update().values(master_version=7))
    finally:
        engines.dispose()
    report = status(runner, data_dir)
    assert report["unavailable_master_versions"] == [7]
    result = invoke(runner, "keystore", "status", "--data-dir", str(data_dir))
    assert "master version 7" in result.stderr and "cannot be decrypted" in result.stderr


# --- keystore init --------------------------------------------------------------------------


@pytest.mark.pkcs11
def test_keystore_init_completes_a_data_dir_without_keystore(
    runner: CliRunner, hsm: Any, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    where = ("--data-dir", str(data_dir))
    # A data dir assembled without a keystore: sceau.toml and a migrated, empty store.
    data_dir.mkdir(mode=0o700)
    (data_dir / "sceau.toml").write_text('[store]\npool_size = 2\n')
    ok(runner, "db", "upgrade", *where)
    token = hsm.new_token()
    out = ok(runner, "keystore", "init", "--pkcs11", *pkcs11_args(hsm, token),
             "--pin-env", PIN_ENV, *where)
    assert token in out
    text = (data_dir / "sceau.toml").read_text()
    assert 'backend = "pkcs11"' in text and "pool_size = 2" in text
    assert status(runner, data_dir)["token"] == token
    [record] = trail(data_dir)
    assert record["action"] == "SERVICE_INIT"
    assert record["details"] == {"what": "keystore_init", "backend": "pkcs11", "token": token}

    again = invoke(runner, "keystore", "init", "--pkcs11", *pkcs11_args(hsm, token), *where)
    assert again.exit_code == 1 and "already holds a keystore" in again.stderr
    # Keys made under the lost keystore: a new keystore could never open them.
    add_key(data_dir)
    (data_dir / "keystore" / "jwe.json").unlink()
    refused = invoke(runner, "keystore", "init", "--pkcs11",
                     *pkcs11_args(hsm, hsm.new_token()), "--pin-env", PIN_ENV, *where)
    assert refused.exit_code == 1 and "1 key record(s)" in refused.stderr


# --- migrate ----------------------------------------------------------------------------------


@pytest.mark.pkcs11
def test_migrate_file_to_pkcs11(runner: CliRunner, hsm: Any, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    where = ("--data-dir", str(data_dir))
    ok(runner, "init", *where)
    key_id = add_key(data_dir)
    ok(runner, "keystore", "rotate", "--master", "--audit", *where)
    config = load_config(data_dir)
    with open_keystore(keystore_settings(config)) as ks:
        data_key = ks.derive(1, key_id, bytes(32))
        kids = [o["kid"] for o in ks.status() if o["kid"]]
    token = hsm.new_token()
    migrate = ("keystore", "migrate", "--to", "pkcs11", *pkcs11_args(hsm, token),
               "--pin-env", PIN_ENV, *where)

    # A running service node (a live lease) blocks the migration; nothing changes.
    engines = open_store(config)
    with engines.write.begin() as conn:
        acquire_lease(conn, "n1", "somewhere:1", int(time.time()), 60)
    running = invoke(runner, *migrate)
    assert running.exit_code == 1 and "stop every node" in running.stderr
    assert load_config(data_dir).keystore.backend == "file"
    with engines.write.begin() as conn:
        release_lease(conn, "n1", "somewhere:1")
    engines.dispose()

    out = ok(runner, *migrate)
    assert "destroy it" in out
    config = load_config(data_dir)
    assert config.keystore.backend == "pkcs11"
    assert config.keystore.pkcs11_token == token
    [backup] = data_dir.glob("keystore.file-*")
    assert (backup / "keystore.json").exists()
    assert sorted(p.name for p in (data_dir / "keystore").iterdir()) == ["jwe.json"]
    report = status(runner, data_dir)
    assert [o["kid"] for o in report["objects"] if o["kid"]] == kids
    assert {v: m["live_keys"] for v, m in masters(report).items()} == {1: 1, 2: 0}
    with open_keystore(keystore_settings(config)) as ks:
        assert ks.backend == "pkcs11"
        assert ks.derive(1, key_id, bytes(32)) == data_key  # old keys still derive
    records = trail(data_dir)  # records signed in the file era verify with the token's JWKS
    assert records[-1]["details"]["what"] == "migrate"
    assert records[-1]["details"]["master_versions"] == [1, 2]

    not_file = invoke(runner, *migrate)
    assert not_file.exit_code == 1 and "not file" in not_file.stderr
