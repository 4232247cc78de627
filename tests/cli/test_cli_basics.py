"""The command line as a user meets it: init, config errors, serve, apps, encrypt/decrypt."""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path

import pytest

from support import Server, free_port, make_server, run_cli


def test_init_creates_private_data_dir_and_refuses_to_overwrite(tmp_path: Path) -> None:
    data = tmp_path / "d"
    out = run_cli("init", "--data-dir", str(data)).stdout.decode()
    assert "one-time password" in out
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for private in ("keystore/keystore.json", "keystore/jwe.json", "tls/key.pem", "sceau.db"):
        assert stat.S_IMODE((data / private).stat().st_mode) == 0o600, private
    again = run_cli("init", "--data-dir", str(data), check=False)
    assert again.returncode != 0
    assert b"refusing to overwrite" in again.stderr


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"SCEAU_PORT": "70000"}, "server.port"),
        ({"SCEAU_PORT": "eighty"}, "server.port"),
        ({"SCEAU_KEYSTORE": "vault"}, "keystore.backend"),
        ({"SCEAU_NODE_ID": "bad id!"}, "audit.node_id"),
        ({"SCEAU_DATABASE_URL": "mysql://x/y"}, "store.database_url"),
        # Separation of duties fails closed: a quorum of one would let one admin act alone.
        ({"SCEAU_CONSOLE_APPROVAL_QUORUM": "1"}, "console.approval_quorum"),
        ({"SCEAU_CONSOLE_APPROVAL_QUORUM": "6"}, "console.approval_quorum"),
        ({"SCEAU_CONSOLE_APPROVAL_TTL_S": "0"}, "console.approval_ttl_s"),
        ({"SCEAU_CONSOLE_TOTP_REQUIRED_ROLES": "admin,root"}, "console.totp_required_roles"),
    ],
)
def test_bad_setting_is_named(tmp_path: Path, env: dict[str, str], setting: str) -> None:
    data = tmp_path / "d"
    run_cli("init", "--data-dir", str(data))
    proc = run_cli("serve", "--data-dir", str(data), env=env, check=False, timeout=60)
    assert proc.returncode != 0
    assert setting in proc.stderr.decode()
    assert "Traceback" not in proc.stderr.decode()


def test_unknown_setting_in_file_is_named(tmp_path: Path) -> None:
    data = tmp_path / "d"
    run_cli("init", "--data-dir", str(data))
    conf = data / "sceau.toml"
    conf.write_text(conf.read_text().replace("# port = 8443", "prot = 8443"))
    proc = run_cli("serve", "--data-dir", str(data), check=False, timeout=60)
    assert proc.returncode != 0 and "server.prot" in proc.stderr.decode()
    assert proc.stderr.decode().startswith("sceau: error: configuration:")


def test_sigterm_shuts_down_cleanly_and_chain_continues(tmp_path: Path) -> None:
    server = make_server(tmp_path)
    app = server.register_app()
    with server.client(app, "a@example.com") as c:
        c.encrypt(b"before restart")
    assert server.stop(signal.SIGTERM) == 0
    log = server.log()
    assert '"level":"ERROR"' not in log
    server.start()
    with server.client(app, "a@example.com") as c:
        c.encrypt(b"after restart")
    from audit_support import records, verify_store

    report = verify_store(server)
    assert report.ok, report.first_problem
    nodes = {r["node"] for r in records(server) if r["action"] == "ENCRYPT"}
    assert len(nodes) == 1  # the restarted server continued the same chain
    server.stop()


def test_cli_app_add_and_encrypt_decrypt_round_trip(server: Server, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    env = {"SCEAU_PORT": str(server.port)}
    run_cli("app", "keygen", "--out", str(keys), "--user", "cli@example.com",
            "--service-url", server.url)
    assert stat.S_IMODE((keys / "profile.json").stat().st_mode) == 0o600
    added = run_cli("app", "add", "--name", "cli-app", "--jwk", str(keys / "sign.pub.jwk"),
                    "--enc-jwk", str(keys / "enc.pub.jwk"), "--profile", str(keys / "profile.json"),
                    "--users", "*@example.com", "--json", "--data-dir", str(server.data_dir),
                    env={**server.env, **env})
    app_id = json.loads(added.stdout)["app_id"]
    listed = json.loads(run_cli("app", "list", "--json", "--data-dir", str(server.data_dir),
                                env=server.env).stdout)
    assert app_id in [a["app_id"] for a in listed]
    profile = str(keys / "profile.json")
    armored = run_cli("encrypt", "-p", profile, input=b"from the shell\n").stdout
    assert armored.startswith(b"-----BEGIN SCEAU MESSAGE-----")
    assert run_cli("decrypt", "-p", profile, input=armored).stdout == b"from the shell\n"
    binary = run_cli("encrypt", "-p", profile, "--binary", "--local", input=b"\x00\x01").stdout
    assert binary.startswith(b"SCU")
    assert run_cli("decrypt", "-p", profile, "--local", input=binary).stdout == b"\x00\x01"
    denied = run_cli("decrypt", "-p", profile, "-u", "other@example.com", input=armored,
                     check=False)
    assert denied.returncode == 1
    assert denied.stderr.decode().startswith("sceau: error: access_denied")


def test_free_port_helper_is_free() -> None:
    assert 0 < free_port() < 65536
    assert os.environ.get("SCEAU_DATA_DIR", "") != "/"


def test_tables_in_a_pipe_keep_every_id_whole(server: Server, tmp_path: Path) -> None:
    """A table read from a pipe: one row a line, cells separated by tabs, nothing cut."""
    app = server.register_app("pipe-reader")
    user = "pipe@example.com"
    name = "a name far too long for any column of an eighty-character table " * 2
    with server.client(app, user) as c:
        key_id, _ = c.encrypt(b"x", name=name)
    profile = server.profile(app, tmp_path / "profile.json", user=user)
    keys = run_cli("key", "list", "--profile", str(profile)).stdout.decode().splitlines()
    assert keys[0].split("\t")[:4] == ["key_id", "status", "owner", "name"]
    assert [line.split("\t")[:4] for line in keys[1:]] == [[key_id, "active", user, name]]
    shown = run_cli("key", "show", key_id, "--profile", str(profile)).stdout.decode()
    assert f"key_id\t{key_id}\n" in shown and f"name\t{name}\n" in shown
    apps = run_cli("app", "list", "--data-dir", str(server.data_dir),
                   env=server.env).stdout.decode().splitlines()
    row = next(line.split("\t") for line in apps if line.startswith(f"{app.app_id}\t"))
    assert app.identity.kid in row[4]
