"""The trust boundary seen from inside (issue 14, SECURITY-CASES 45 and 47).

A database writer holds SQL access to the store and nothing else: no keystore, no data dir.
Each test here performs one of that person's moves against a real server and shows that it
opens nothing: the row they wrote does not verify against its seal, the service refuses it
with ``integrity_failure`` and writes an audit record saying so. A control step restores
the honest row (or uses an honest one) and shows the same call then works, so the refusal
is the seal's doing and not some other failure.

Runs on every end-to-end backend (SQLite, PostgreSQL, a PKCS#11 token).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from security_support import TrailWatch, assert_problem, post

from console_support import Console, put_account
from sceau import admin
from sceau.client import Client
from sceau.core.b64 import b64u_encode
from sceau.errors import InvalidRequest, UserNotAllowed
from sceau.jose.client import ClientIdentity, generate_app_keys, sign_request
from sceau.service.console import security
from sceau.store import applications
from sceau.store.db import create_engines
from sceau.vocab import Role
from support import Server, TestApp, run_cli

OWNER = "alice@example.com"
SECRET = b"payroll of the whole company"


@pytest.fixture(scope="module")
def store(server: Server) -> Iterator[sa.Engine]:
    """The DBA's access: the database, through SQL, and nothing else."""
    engines = create_engines(server.config().database_url)
    yield engines.write
    engines.dispose()


@pytest.fixture(scope="module")
def owners_item(server: Server, app: TestApp) -> tuple[str, bytes]:
    with server.client(app, OWNER) as client:
        return client.encrypt(SECRET, name="payroll.xlsx")


def _attacker(app_id: str) -> tuple[ClientIdentity, dict[str, Any]]:
    sign_priv, sign_pub, _enc_priv, _enc_pub = generate_app_keys("ES256")
    identity = ClientIdentity(app_id=app_id, kid=sign_pub["kid"], alg="ES256",
                              private_jwk=sign_priv, enc_private_jwk=None)
    return identity, sign_pub


def _decrypt_as(server: Server, identity: ClientIdentity, user: str,
                envelope: bytes) -> httpx.Response:
    token = sign_request(identity, sub=user, aud=server.url, op="decrypt",
                         params={"ciphertext": b64u_encode(envelope)}, now=int(time.time()))
    return post(server, token, op="decrypt")


def _app_row(conn: sa.Connection, app_id: str) -> dict[str, Any]:
    row = conn.execute(sa.text("SELECT * FROM applications WHERE app_id = :a"),
                       {"a": app_id}).mappings().one()
    return dict(row)


def _key_row(conn: sa.Connection, kid: str) -> dict[str, Any]:
    row = conn.execute(sa.text("SELECT * FROM app_keys WHERE kid = :k"),
                       {"k": kid}).mappings().one()
    return dict(row)


def _denied_for_integrity(watch: TrailWatch, app_id: str) -> dict[str, Any]:
    records = [r for r in watch.new() if r["app"] == app_id]
    assert records, "the refusal was not audited"
    record = records[-1]
    assert record["outcome"] == "DENIED"
    assert record["reason"] == "integrity_failure"
    return record


def test_inserted_application_and_key_open_nothing(server: Server, store: sa.Engine,
                                                   owners_item: tuple[str, bytes]) -> None:
    """Attack 1: an `applications` row for every user and an `app_keys` row holding the
    attacker's own public key, written with SQL; then a decrypt signed as the owner."""
    app_id = "app_inserted_by_dba"
    identity, public = _attacker(app_id)
    honest = server.register_app("honest-template")
    now = int(time.time())
    with store.begin() as conn:
        template = _app_row(conn, honest.app_id)
        key_template = _key_row(conn, honest.identity.kid)
        conn.execute(sa.text(
            "INSERT INTO applications (app_id, name, users, status, enc_jwk, created_at, "
            "last_used_at, revision, seal) VALUES (:a, 'dba', '[\"*\"]', 'enabled', NULL, "
            ":t, NULL, 1, :seal)"), {"a": app_id, "t": now, "seal": template["seal"]})
        # The seal of an honest key row, copied: seals bind the id and every field.
        conn.execute(sa.text(
            "INSERT INTO app_keys (kid, app_id, alg, jwk, thumbprint, status, added_at, "
            "retired_at, revision, seal) VALUES (:k, :a, 'ES256', :jwk, :tp, 'active', :t, "
            "NULL, 1, :seal)"),
            {"k": identity.kid, "a": app_id, "jwk": json.dumps(public), "tp": identity.kid,
             "t": now, "seal": key_template["seal"]})
    watch = TrailWatch(server)
    response = _decrypt_as(server, identity, OWNER, owners_item[1])
    problem = assert_problem(response, 409, "integrity_failure",
                             never_echo=(SECRET.decode(),))
    assert "plaintext" not in problem
    _denied_for_integrity(watch, app_id)
    # Without any seal at all, the same.
    with store.begin() as conn:
        conn.execute(sa.text("UPDATE app_keys SET seal = NULL WHERE kid = :k"),
                     {"k": identity.kid})
    assert _decrypt_as(server, identity, OWNER, owners_item[1]).status_code == 409


def test_widened_users_open_nothing(server: Server, store: sa.Engine,
                                    owners_item: tuple[str, bytes]) -> None:
    """An application allowed one user, edited by SQL to assert every user."""
    narrow = server.register_app("narrow", users=("bob@example.com",))
    with store.begin() as conn:
        before = _app_row(conn, narrow.app_id)["users"]
        conn.execute(sa.text("UPDATE applications SET users = '[\"*\"]' WHERE app_id = :a"),
                     {"a": narrow.app_id})
    watch = TrailWatch(server)
    response = _decrypt_as(server, narrow.identity, OWNER, owners_item[1])
    assert_problem(response, 409, "integrity_failure", never_echo=(SECRET.decode(),))
    _denied_for_integrity(watch, narrow.app_id)
    # Control: the honest row back, and the application is refused for alice as it should.
    with store.begin() as conn:
        conn.execute(sa.text("UPDATE applications SET users = :u WHERE app_id = :a"),
                     {"u": before, "a": narrow.app_id})
    assert_problem(_decrypt_as(server, narrow.identity, OWNER, owners_item[1]), 403,
                   "user_not_allowed")


def test_swapped_signing_key_opens_nothing(server: Server, store: sa.Engine,
                                           owners_item: tuple[str, bytes]) -> None:
    """An honest application's key row given the attacker's public key (seal kept)."""
    victim = server.register_app("victim-app")
    attacker, public = _attacker(victim.app_id)
    attacker = ClientIdentity(app_id=victim.app_id, kid=victim.identity.kid, alg="ES256",
                              private_jwk=attacker.private_jwk, enc_private_jwk=None)
    public = {**public, "kid": victim.identity.kid}
    with store.begin() as conn:
        conn.execute(sa.text("UPDATE app_keys SET jwk = :j WHERE kid = :k"),
                     {"j": json.dumps(public), "k": victim.identity.kid})
    watch = TrailWatch(server)
    response = _decrypt_as(server, attacker, OWNER, owners_item[1])
    assert_problem(response, 409, "integrity_failure", never_echo=(SECRET.decode(),))
    _denied_for_integrity(watch, victim.app_id)


def test_retired_key_reactivated_by_sql_opens_nothing(server: Server, store: sa.Engine,
                                                      owners_item: tuple[str, bytes]) -> None:
    retired = server.register_app("retired-app")
    with server.admin_session() as session:
        admin.retire_app_key(session, retired.app_id, retired.identity.kid)
    with store.begin() as conn:
        conn.execute(sa.text("UPDATE app_keys SET status = 'active', retired_at = NULL "
                             "WHERE kid = :k"), {"k": retired.identity.kid})
    response = _decrypt_as(server, retired.identity, OWNER, owners_item[1])
    assert_problem(response, 409, "integrity_failure", never_echo=(SECRET.decode(),))


def test_honest_application_still_decrypts(server: Server, app: TestApp,
                                           owners_item: tuple[str, bytes]) -> None:
    """The control of the whole module: sealed rows verify and the owner reads the item."""
    with server.client(app, OWNER) as client:
        assert client.decrypt(owners_item[1]) == SECRET


# --- console accounts and sessions ------------------------------------------------------------


def _login(server: Server, username: str, password: str) -> httpx.Response:
    with httpx.Client(base_url=server.url, verify=server.cert, timeout=30) as http:
        page = http.get("/console/login")
        token = page.text.split('name="login_token" value="', 1)[1].split('"', 1)[0]
        return http.post("/console/login", data={"login_token": token, "username": username,
                                                 "password": password, "code": ""})


def test_inserted_console_account_opens_nothing(server: Server, store: sa.Engine) -> None:
    """An admin account with a password the DBA knows, inserted with SQL."""
    from sceau.service.accounts import hash_password

    now = int(time.time())
    password = "a-password-the-dba-chose-42"
    with store.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO accounts (username, password_hash, role, status, must_change_password,"
            " totp_secret, created_at, updated_at, auth, revision, seal) VALUES ('dba-admin',"
            " :h, 'admin', 'active', false, NULL, :t, :t, 'password', 1, NULL)"),
            {"h": hash_password(password), "t": now})
    watch = TrailWatch(server)
    response = _login(server, "dba-admin", password)
    assert response.status_code == 401, response.text
    assert "set-cookie" not in response.headers or "__Host-sceau_session" not in \
        response.headers.get("set-cookie", "")
    record = [r for r in watch.new() if r["action"] == "CONSOLE_LOGIN"][-1]
    assert (record["outcome"], record["reason"], record["user"]) == (
        "DENIED", "integrity_failure", "dba-admin")


def test_inserted_console_session_opens_nothing(server: Server, store: sa.Engine) -> None:
    """A session row for a session id the DBA chose, naming the real admin account."""
    sid = "a-session-id-the-dba-chose-0123456789"
    now = int(time.time())
    with store.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO console_sessions (sid_hash, username, csrf, created_at, last_seen_at,"
            " ip, seal) VALUES (:s, 'admin', 'csrf', :t, :t, NULL, NULL)"),
            {"s": security.session_id_hash(sid), "t": now})
    watch = TrailWatch(server)
    with httpx.Client(base_url=server.url, verify=server.cert, timeout=30,
                      cookies={"__Host-sceau_session": sid}) as http:
        response = http.get("/console/keys")
    assert response.status_code == 409, response.text
    record = [r for r in watch.new() if r["action"] == "CONSOLE_SESSION"][-1]
    assert (record["outcome"], record["reason"]) == ("DENIED", "integrity_failure")


# --- SECURITY-CASES 47: an application asserts no user unless told ------------------------------


def test_registration_without_users_is_refused(server: Server, tmp_path: Any) -> None:
    _sign_priv, sign_pub, _enc_priv, enc_pub = generate_app_keys("ES256")
    with server.admin_session() as session, pytest.raises(InvalidRequest, match="users"):
        admin.add_application(session, name="nobody", jwk=sign_pub, enc_jwk=enc_pub, users=[])
    (tmp_path / "sign.pub.jwk").write_text(json.dumps(sign_pub))
    refused = run_cli("app", "add", "--name", "nobody", "--jwk", str(tmp_path / "sign.pub.jwk"),
                      "--data-dir", str(server.data_dir), env=server.env, check=False)
    assert refused.returncode != 0
    assert b"--users" in refused.stderr


def test_application_with_an_empty_user_list_asserts_nobody(
        server: Server, owners_item: tuple[str, bytes]) -> None:
    """A row sealed with no users (as an older version could leave one): it asserts no one."""
    legacy = server.register_app("legacy", users=("bob@example.com",))
    with server.admin_session() as session, session.engines.write.begin() as conn:
        found = applications.get_application(conn, legacy.app_id)
        assert found is not None
        emptied = dataclasses.replace(found, users=(), revision=found.revision + 1)
        applications.save_application(conn, found, session.keystore.seal_row(emptied))
    with Client(service_url=server.url, identity=legacy.identity, user=OWNER,
                verify=server.cert) as client, pytest.raises(UserNotAllowed):
        client.decrypt(owners_item[1])


def test_an_application_for_every_user_is_flagged_wherever_listed(server: Server,
                                                                 app: TestApp) -> None:
    """`*` is never implied, and where it was given it stands out: the CLI's table and its
    JSON, and the console's applications page."""
    narrow = server.register_app("flag-control", users=("bob@example.com",))
    where = ("--data-dir", str(server.data_dir))
    listed = {a["app_id"]: a for a in json.loads(
        run_cli("app", "list", "--json", *where, env=server.env).stdout)}
    assert listed[app.app_id]["any_user"] is True
    assert listed[narrow.app_id]["any_user"] is False
    table = run_cli("app", "list", *where, env=server.env)
    warned = [line for line in table.stderr.decode().splitlines() if "EVERY user" in line]
    assert any(app.app_id in line for line in warned)
    assert not any(narrow.app_id in line for line in warned)
    put_account(server, "flag-admin", "flag-admin-passphrase-7", Role.ADMIN)
    console = Console(server)
    try:
        assert console.login("flag-admin", "flag-admin-passphrase-7").status_code == 303
        page = console.http.get("/console/apps").text
    finally:
        console.close()
    rows = {row.split("</tr>")[0] for row in page.split("<tr>")}
    assert any(app.app_id in row and "may assert every user" in row for row in rows)
    assert not any(narrow.app_id in row and "may assert every user" in row for row in rows)
