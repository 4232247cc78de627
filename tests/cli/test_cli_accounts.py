"""``sceau account ...``: the host operator manages console accounts (docs/console.md).

The CLI is trusted through the data dir and the keystore, so what the console gates behind a
second admin runs here at once; every change is audited with ``app`` cli, ``user`` the OS
user and ``details.via = "host_operator"``. The service need not run.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Iterator
from typing import Any

import pytest

from audit_support import records
from support import STORES, Server, databases_for, make_server, run_cli, store_env


@pytest.fixture(scope="module", params=STORES)
def data(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """An initialized data dir on each store; no server process."""
    databases = databases_for(request, str(request.param))
    env = store_env(str(request.param), databases)
    yield make_server(tmp_path_factory.mktemp(f"accounts-{request.param}"), env=env,
                      start=False)
    if databases is not None:
        databases.drop(env["SCEAU_DATABASE_URL"])


def sceau(data: Server, *args: str, check: bool = True) -> Any:
    return run_cli(*args, "--data-dir", str(data.data_dir), env=data.env, check=check)


def listed(data: Server) -> dict[str, dict[str, Any]]:
    return {a["username"]: a for a in json.loads(sceau(data, "account", "list", "--json").stdout)}


def test_account_lifecycle_as_host_operator(data: Server) -> None:
    added = json.loads(sceau(data, "account", "add", "Bob@Example.COM", "--role", "user",
                             "--json").stdout)
    assert added["username"] == "Bob@example.com"  # the domain is normalized, as in the API
    first_password = added["one_time_password"]
    row = listed(data)["Bob@example.com"]
    assert (row["role"], row["status"], row["sealed"], row["must_change_password"]) == (
        "user", "active", True, True)
    assert not {"password_hash", "totp_secret"} & set(row)

    reset = json.loads(sceau(data, "account", "reset", "Bob@example.com", "--json").stdout)
    assert reset["one_time_password"] != first_password
    sceau(data, "account", "disable", "Bob@example.com")
    assert listed(data)["Bob@example.com"]["status"] == "disabled"
    sceau(data, "account", "enable", "Bob@example.com")
    assert listed(data)["Bob@example.com"]["status"] == "active"

    trail = [r for r in records(data) if r["action"] in ("ACCOUNT_CREATE", "ACCOUNT_UPDATE")
             and r["details"].get("account") == "Bob@example.com"]
    assert [r["details"].get("changed") for r in trail] == [
        None, {"credentials": "reset"}, {"status": "disabled"}, {"status": "active"}]
    for rec in trail:
        assert (rec["app"], rec["user"], rec["outcome"]) == ("cli", getpass.getuser(), "GRANTED")
        assert rec["details"]["via"] == "host_operator"
    text = json.dumps(records(data))
    assert first_password not in text and reset["one_time_password"] not in text


REFUSALS = [
    (("add", "*@example.com", "--role", "user"), "not a pattern"),
    (("add", "eve@example.com", "--role", "root"), "role: admin, auditor or user"),
    (("add", "admin", "--role", "admin"), "exists already"),
    (("reset", "nobody@example.com"), "no such account"),
    (("reset", "admin", "--clear-totp"), "no second factor"),
    (("disable", "nobody@example.com"), "no such account"),
]


def test_refusals_change_nothing(data: Server) -> None:
    before = listed(data)
    for args, message in REFUSALS:
        refused = sceau(data, "account", *args, check=False)
        assert refused.returncode == 1, args
        assert message in refused.stderr.decode(), (args, refused.stderr)
        assert "Traceback" not in refused.stderr.decode()
    assert listed(data) == before


def test_single_admin_warning_in_app_list(data: Server) -> None:
    # `sceau init` made one admin: the standing warning, on stderr (the JSON stays clean).
    alone = sceau(data, "app", "list", "--json")
    assert "single console admin" in alone.stderr.decode()
    assert isinstance(json.loads(alone.stdout), list)
    sceau(data, "account", "add", "second-admin", "--role", "admin")
    assert "single console admin" not in sceau(data, "app", "list").stderr.decode()
    sceau(data, "account", "disable", "second-admin")
    assert "single console admin" in sceau(data, "app", "list").stderr.decode()
