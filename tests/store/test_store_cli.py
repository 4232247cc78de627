"""`sceau init`, `sceau db upgrade` and the start-up schema check, on both stores.

SECURITY-CASES 33: the service refuses to serve on a schema version older or newer than
the code; `sceau db upgrade` brings an older one up to date.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

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
