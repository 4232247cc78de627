"""`sceau init`, `sceau db upgrade` and the start-up schema check, on both stores.

SECURITY-CASES 33: the service refuses to serve on a schema version older or newer than
the code; `sceau db upgrade` brings an older one up to date.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from sceau.client import Client
from sceau.jose.client import ClientIdentity, generate_app_keys
from sceau.store.db import _alembic_config, create_engines, current_revision, head_revision
from support import Server, make_server, run_cli


def serve_refusal(server: Server) -> str:
    """Start `sceau serve`, expect it to exit non-zero, return what it printed."""
    server.start(wait=False)
    assert server.proc is not None
    code = server.proc.wait(60)
    server.proc = None
    assert code != 0
    return server.log()


@pytest.fixture()
def installed(tmp_path: Path, server_env: dict[str, str]) -> Server:
    return make_server(tmp_path, env=server_env, start=False)


def test_init_migrates_and_upgrade_is_idempotent(installed: Server) -> None:
    url = installed.config().database_url
    assert url.startswith("postgres" if installed.store == "postgres" else "sqlite")
    engines = create_engines(url)
    try:
        assert current_revision(engines.read) == head_revision()
    finally:
        engines.dispose()
    out = run_cli("db", "upgrade", "--data-dir", str(installed.data_dir), env=installed.env)
    assert f"{head_revision()} -> {head_revision()}" in out.stdout.decode()


def test_serve_refuses_an_older_schema_until_upgraded(installed: Server) -> None:
    engines = create_engines(installed.config().database_url)
    try:
        with engines.write.begin() as conn:
            command.downgrade(_alembic_config(conn), "-1")
        older = current_revision(engines.read)
    finally:
        engines.dispose()
    assert older != head_revision()
    log = serve_refusal(installed)
    assert f"schema is at revision {older}, older than this code" in log
    assert "sceau db upgrade" in log and "Traceback" not in log
    out = run_cli("db", "upgrade", "--data-dir", str(installed.data_dir), env=installed.env)
    assert f"{older} -> {head_revision()}" in out.stdout.decode()
    installed.start()  # serves now
    installed.stop()


def test_serve_refuses_a_schema_newer_than_the_code(installed: Server) -> None:
    engines = create_engines(installed.config().database_url)
    try:
        with engines.write.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = 'f00d_next'"))
    finally:
        engines.dispose()
    log = serve_refusal(installed)
    assert "revision f00d_next, which this code does not know" in log
    assert "Traceback" not in log


def test_upgrade_seals_rows_written_before_seals_existed(installed: Server) -> None:
    """Trust on upgrade: rows of a version without seals are sealed once by `db upgrade`.

    The application is written as revision 0002 wrote it (no seal column); after the
    upgrade it verifies and is served, and a second upgrade seals nothing more.
    """
    sign_priv, sign_pub, enc_priv, enc_pub = generate_app_keys("ES256")
    engines = create_engines(installed.config().database_url)
    try:
        with engines.write.begin() as conn:
            command.downgrade(_alembic_config(conn), "0002")
            conn.execute(sa.text(
                "INSERT INTO applications (app_id, name, users, status, enc_jwk, created_at)"
                " VALUES ('app_legacy', 'legacy', '[\"*@example.com\"]', 'enabled', :enc, 1)"),
                {"enc": json.dumps(enc_pub)})
            conn.execute(sa.text(
                "INSERT INTO app_keys (kid, app_id, alg, jwk, thumbprint, status, added_at)"
                " VALUES (:kid, 'app_legacy', 'ES256', :jwk, :kid, 'active', 1)"),
                {"kid": sign_pub["kid"], "jwk": json.dumps(sign_pub)})
    finally:
        engines.dispose()
    out = run_cli("db", "upgrade", "--data-dir", str(installed.data_dir), env=installed.env)
    text = out.stdout.decode()
    assert "0002 -> " in text
    assert "sealed existing rows (trust on upgrade): applications 1, app_keys 1, accounts 1" \
        in text
    again = run_cli("db", "upgrade", "--data-dir", str(installed.data_dir), env=installed.env)
    assert "sealed" not in again.stdout.decode()
    installed.start()
    try:
        identity = ClientIdentity(app_id="app_legacy", kid=sign_pub["kid"], alg="ES256",
                                  private_jwk=sign_priv, enc_private_jwk=enc_priv)
        with Client(service_url=installed.url, identity=identity, user="bob@example.com",
                    verify=installed.cert) as client:
            _key_id, envelope = client.encrypt(b"still served")
            assert client.decrypt(envelope) == b"still served"
    finally:
        installed.stop()
