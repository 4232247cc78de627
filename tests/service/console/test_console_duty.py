"""Separation of duties (issue 14, attack 2; SECURITY-CASES 21, 46) over real HTTPS.

Attack 2: a console admin creates a ``user`` account named like a key's owner, signs in with
the one-time password and opens the owner's files on the Protect page; or registers an
application whose users are ``*``; or adds a signing key, or an authorization through the
admin's management of every key. Each of these paths must wait for a second admin, and the
audit trail must name both.

Each module-scoped server runs once per backend: ``lone`` (every backend, a PKCS#11 token
included) has a single admin (the console offers no gated action; the host operator uses
the CLI), ``pair`` has two (both stores). The gated actions are one table, run against both.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from audit_support import last_record, records
from console_support import ADMIN_PASSWORD, PASSWORD, Console, put_account
from sceau import admin
from sceau.core.b64 import b64u_decode
from sceau.errors import BadCredentials
from sceau.jose.client import generate_app_keys
from sceau.keystore import open_keystore
from sceau.service.accounts import verify_password
from sceau.service.console import security
from sceau.service.runtime import keystore_settings
from sceau.store import accounts, applications, approvals, workspace
from sceau.store.accounts import AccountRow
from sceau.store.approvals import ApprovalRow, encode_payload
from sceau.store.db import create_engines
from sceau.store.keys import load_key
from sceau.store.schema import approvals as approvals_table
from sceau.store.signin import get_throttle
from sceau.vocab import Role
from support import (
    BACKENDS,
    STORES,
    Server,
    TestApp,
    backend_server,
    make_server,
    run_cli,
)

OWNER = "alice@example.com"
ADMIN2 = "admin2"
ADMIN2_PASSWORD = "granite-orchard-velvet-63"
APPROVED = re.compile(r"/console/approvals\?done=requested&request=(apr_[A-Za-z0-9_-]+)$")


# --- what "widening" means (no server) ------------------------------------------------------


def _password_matches(stored: str | None, password: str) -> bool:
    try:
        verify_password(stored, password)
    except BadCredentials:
        return False
    return True


@pytest.mark.parametrize(("before", "after", "widens"), [
    (["*"], ["*"], False),
    (["*"], ["bob@example.com", "*@example.org"], False),
    (["*@example.com"], ["bob@example.com"], False),
    (["*@example.com"], ["*@example.com"], False),
    (["a@example.com", "b@example.com"], ["a@example.com"], False),
    (["a@example.com"], ["a@example.com", "b@example.com"], True),
    (["*@example.com"], ["*"], True),
    (["*@example.com"], ["*@sub.example.com"], True),  # whole domains only
    (["*@example.com"], ["bob@sub.example.com"], True),
    (["*@example.com"], ["bob@example.com.evil.org"], True),
    (["bob@example.com"], ["*@example.com"], True),
    (["a@example.com"], [], False),
])
def test_widening_is_judged_by_meaning(before: list[str], after: list[str],
                                       widens: bool) -> None:
    assert admin.widens(before, after) is widens


# --- servers ----------------------------------------------------------------------------------


@dataclass
class World:
    """A server, the application the host operator registered, and the owner's key."""

    server: Server
    app: TestApp
    key_id: str
    ciphertext: bytes


def _world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
           name: str, admins: tuple[tuple[str, str], ...]) -> Iterator[World]:
    backend = str(request.param)
    with backend_server(request, tmp_path_factory.mktemp(f"{name}-{backend}"),
                        backend) as server:
        for username, password in admins:
            put_account(server, username, password, Role.ADMIN)
        app = server.register_app("payroll", users=("*@example.com", "*@example.org"))
        with server.client(app, OWNER) as alice:
            key_id, ciphertext = alice.encrypt(b"alice's payslip", name="payslip")
        yield World(server, app, key_id, ciphertext)


# Attack 2 by a lone admin runs on every backend (a PKCS#11 token included); the approval
# flows with two admins do not depend on the keystore and run on both stores.
@pytest.fixture(scope="module", params=BACKENDS)
def lone(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """An installation with a single admin."""
    yield from _world(request, tmp_path_factory, "lone", (("admin", ADMIN_PASSWORD),))


@pytest.fixture(scope="module", params=STORES)
def pair(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """An installation with two admins: ``admin`` and ``admin2``."""
    yield from _world(request, tmp_path_factory, "pair",
                      (("admin", ADMIN_PASSWORD), (ADMIN2, ADMIN2_PASSWORD)))


@pytest.fixture()
def first(request: pytest.FixtureRequest) -> Iterator[Console]:
    """The requesting admin, on whichever server the test uses."""
    world: World = request.getfixturevalue(_world_of(request))
    c = Console(world.server).as_account("admin", ADMIN_PASSWORD)
    yield c
    c.close()


@pytest.fixture()
def second(pair: World) -> Iterator[Console]:
    c = Console(pair.server).as_account(ADMIN2, ADMIN2_PASSWORD)
    yield c
    c.close()


def _world_of(request: pytest.FixtureRequest) -> str:
    return "pair" if "pair" in request.fixturenames else "lone"


# --- reading the store --------------------------------------------------------------------------


def _read(server: Server, fn: Callable[[Any], Any]) -> Any:
    engines = create_engines(server.config().database_url)
    try:
        with engines.read.connect() as conn:
            return fn(conn)
    finally:
        engines.dispose()


def account(server: Server, username: str) -> AccountRow | None:
    found: AccountRow | None = _read(server, lambda c: accounts.get_account(c, username))
    return found


def app_named(server: Server, name: str) -> applications.AppRow | None:
    apps = _read(server, applications.list_applications)
    return next((a for a in apps if a.name == name), None)


def app_kids(server: Server, app_id: str) -> set[str]:
    return {k.kid for k in _read(server, lambda c: applications.list_app_keys(c, app_id))}


def authorization(server: Server, key_id: str, principal: str) -> str | None:
    """The status of ``principal``'s entry on the key, or None."""
    record = _read(server, lambda c: load_key(c, b64u_decode(key_id)))
    entry = record.authorization_for(principal)
    return str(entry.status) if entry is not None else None


# --- the gated actions, as a table ---------------------------------------------------------------


@dataclass(frozen=True)
class Gated:
    """One gated console action: set-up, the requester's POST, and whether it happened."""

    name: str
    action: str  # the audit action of the approved record
    prepare: Callable[[World, str], dict[str, Any]]
    post: Callable[[Console, World, dict[str, Any]], httpx.Response]
    done: Callable[[World, dict[str, Any]], bool]

    def __str__(self) -> str:
        return self.name


def _jwk() -> dict[str, Any]:
    _priv, public, _enc_priv, _enc_pub = generate_app_keys("ES256")
    return dict(public)


def _host_app(world: World, tag: str, users: tuple[str, ...]) -> dict[str, Any]:
    registered = world.server.register_app(f"case-{tag}", users=users)
    return {"app_id": registered.app_id}


def _owner_entry(world: World, principal: str, *, disabled: bool) -> dict[str, Any]:
    with world.server.client(world.app, OWNER) as alice:
        key_id, _ = alice.encrypt(b"case", name=f"for {principal}")
        if disabled:
            alice.add_authorization(key_id, principal)
            alice.disable_authorization(key_id, principal)
    return {"key_id": key_id, "principal": principal}


def _account_post(**data: str) -> Callable[[Console, World, dict[str, Any]], httpx.Response]:
    return lambda c, w, ctx: c.post(f"/console/accounts/{ctx['username']}", data,
                                    page="/console/accounts")


def _existing(username: str, role: Role) -> Callable[[World, str], dict[str, Any]]:
    """Set-up: an account of ``role`` (an auditor has a second factor), written by the host."""

    def prepare(world: World, tag: str) -> dict[str, Any]:
        name = username.format(tag=tag)
        put_account(world.server, name, PASSWORD, role)
        return {"username": name}

    return prepare


GATED = [
    Gated(
        "user account named like a principal", "ACCOUNT_CREATE",
        lambda w, tag: {"username": f"{tag}@example.com"},
        lambda c, w, ctx: c.post("/console/accounts", {"username": ctx["username"],
                                                       "role": "user"}, page="/console/accounts"),
        lambda w, ctx: account(w.server, ctx["username"]) is not None,
    ),
    Gated(
        "admin account", "ACCOUNT_CREATE",
        lambda w, tag: {"username": f"{tag}-admin"},
        lambda c, w, ctx: c.post("/console/accounts", {"username": ctx["username"],
                                                       "role": "admin"}, page="/console/accounts"),
        lambda w, ctx: account(w.server, ctx["username"]) is not None,
    ),
    Gated(
        "password reset (the second factor is kept)", "ACCOUNT_UPDATE",
        _existing("{tag}-auditor", Role.AUDITOR),
        _account_post(action="reset"),
        lambda w, ctx: (row := account(w.server, ctx["username"])) is not None
        and not _password_matches(row.password_hash, PASSWORD) and row.must_change_password
        and row.totp_secret is not None,
    ),
    Gated(
        "role change to user", "ACCOUNT_UPDATE",
        _existing("{tag}@example.com", Role.AUDITOR),
        _account_post(action="role", role="user"),
        lambda w, ctx: (row := account(w.server, ctx["username"])) is not None
        and row.role == "user",
    ),
    Gated(
        "two-factor removal", "ACCOUNT_UPDATE",
        _existing("{tag}-phone", Role.AUDITOR),
        _account_post(action="clear_totp"),
        lambda w, ctx: (row := account(w.server, ctx["username"])) is not None
        and row.totp_secret is None,
    ),
    Gated(
        "application asserting every user", "APP_ADD",
        lambda w, tag: {"name": f"{tag} everyone", "jwk": _jwk()},
        lambda c, w, ctx: c.post("/console/apps", {
            "name": ctx["name"], "users": "*", "key": json.dumps(ctx["jwk"]),
            "password": c.password}, page="/console/apps"),
        lambda w, ctx: app_named(w.server, ctx["name"]) is not None,
    ),
    Gated(
        "widening an application's users", "APP_UPDATE",
        lambda w, tag: _host_app(w, tag, ("one@example.com",)),
        lambda c, w, ctx: c.post(f"/console/apps/{ctx['app_id']}/users",
                                 {"users": "*@example.com"}, page="/console/apps"),
        lambda w, ctx: _read(w.server, lambda conn: applications.get_application(
            conn, ctx["app_id"])).users == ("*@example.com",),
    ),
    Gated(
        "application signing key", "APP_KEY_ADD",
        lambda w, tag: {**_host_app(w, tag, ("one@example.com",)), "jwk": _jwk()},
        lambda c, w, ctx: c.post(f"/console/apps/{ctx['app_id']}/keys", {
            "key": json.dumps(ctx["jwk"]), "password": c.password}, page="/console/apps"),
        lambda w, ctx: ctx["jwk"]["kid"] in app_kids(w.server, ctx["app_id"]),
    ),
    Gated(
        "authorization through manage-any", "ADD_AUTHORIZATION",
        lambda w, tag: _owner_entry(w, f"{tag}@example.org", disabled=False),
        lambda c, w, ctx: c.post(f"/console/keys/{ctx['key_id']}/authorizations", {
            "principal": ctx["principal"], "rights": "decrypt"}, page="/console/dashboard"),
        lambda w, ctx: authorization(w.server, ctx["key_id"], ctx["principal"]) == "active",
    ),
    Gated(
        "enabling an authorization through manage-any", "ENABLE_AUTHORIZATION",
        lambda w, tag: _owner_entry(w, f"{tag}@example.org", disabled=True),
        lambda c, w, ctx: c.post(f"/console/keys/{ctx['key_id']}/authorizations/change", {
            "principal": ctx["principal"], "action": "enable"}, page="/console/dashboard"),
        lambda w, ctx: authorization(w.server, ctx["key_id"], ctx["principal"]) == "active",
    ),
    Gated(
        "cse_admin grant (every Workspace resource)", "CSE_ADMIN_ADD",
        lambda w, tag: {"email": f"{tag}@example.com"},
        lambda c, w, ctx: c.post("/console/workspace/cse-admins", {
            "email": ctx["email"], "password": c.password}, page="/console/workspace"),
        lambda w, ctx: _read(w.server, lambda c: workspace.get_cse_admin(
            c, ctx["email"])) is not None,
    ),
]


def _tag(case: Gated, world: World, suffix: str = "") -> str:
    return re.sub(r"[^a-z0-9]+", "-", f"{case.name[:24]}-{world.server.store}{suffix}").strip("-")


def requested_id(response: httpx.Response) -> str:
    assert response.status_code == 303, response.text[:800]
    found = APPROVED.search(response.headers["location"])
    assert found is not None, response.headers["location"]
    return found.group(1)


def approve(c: Console, approval_id: str, password: str) -> httpx.Response:
    return c.post(f"/console/approvals/{approval_id}/approve", {"password": password},
                  page="/console/approvals")


# --- a lone admin ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", GATED, ids=str)
def test_lone_admin_gets_no_gated_action(lone: World, first: Console, case: Gated) -> None:
    """With fewer admins than the quorum the console refuses every gated action, changing
    nothing and recording no request."""
    ctx = case.prepare(lone, _tag(case, lone))
    before = len(records(lone.server))
    answer = case.post(first, lone, ctx)
    assert answer.status_code == 403, answer.text[:500]
    assert "host operator" in answer.text
    assert not case.done(lone, ctx)
    assert not [r for r in records(lone.server)[before:] if r["action"] == case.action]


def test_lone_admin_pages_offer_no_gated_form(lone: World, first: Console) -> None:
    pages = {
        "/console/accounts": ['id="quorum-note"'],
        "/console/apps": ['id="quorum-note"'],
        f"/console/apps/{lone.app.app_id}": ['id="quorum-note"'],
        f"/console/keys/{lone.key_id}": ['id="quorum-note"'],
        "/console/dashboard": ['id="single-admin"'],
        "/console/workspace": ['id="quorum-note"'],
    }
    for path, expected in pages.items():
        html = first.http.get(path).text
        for needle in expected:
            assert needle in html, path
        for form in ('id="register-app"', 'id="add-app-key"', 'id="add-authorization"',
                     'value="reset"', 'value="clear_totp"', 'id="grant-cse-admin"'):
            assert form not in html, (path, form)
    accounts_page = first.http.get("/console/accounts").text
    create = re.search(r'id="create-account">(.*?)</form>', accounts_page, re.S)
    assert create is not None
    assert ">auditor</option>" in create.group(1)
    assert ">user</option>" not in create.group(1) and ">admin</option>" not in create.group(1)


def test_attack_2_by_a_lone_admin_fails(lone: World, first: Console) -> None:
    """The whole attack, step by step: no account, no sign-in, no data key, nothing to open."""
    server = lone.server
    # 1. An account named like the owner: refused, none created.
    answer = first.post("/console/accounts", {"username": OWNER, "role": "user"},
                        page="/console/accounts")
    assert answer.status_code == 403 and account(server, OWNER) is None
    # 2. So nobody signs in as the owner, whatever the password.
    intruder = Console(server)
    try:
        assert intruder.login(OWNER, "any-password-at-all").status_code == 401
    finally:
        intruder.close()
    # 3. The admin's own session reaches no data key of the owner's (SECURITY-CASES 21).
    assert first.http.get("/console/protect").status_code == 403
    got = first.http.post("/console/protect/open-key", data={
        "csrf": first.csrf(), "key_id": lone.key_id})
    assert got.status_code == 403 and '"key"' not in got.text
    # 4. Nor through an application asserting everyone, or a key the admin would hold.
    jwk = _jwk()
    assert first.post("/console/apps", {"name": "everyone", "users": "*",
                                        "key": json.dumps(jwk), "password": ADMIN_PASSWORD},
                      page="/console/apps").status_code == 403
    assert app_named(server, "everyone") is None
    assert first.post(f"/console/apps/{lone.app.app_id}/keys", {
        "key": json.dumps(jwk), "password": ADMIN_PASSWORD},
        page="/console/apps").status_code == 403
    assert jwk["kid"] not in app_kids(server, lone.app.app_id)
    # 5. Nor by naming an identity of theirs on the owner's key.
    assert first.post(f"/console/keys/{lone.key_id}/authorizations", {
        "principal": "mallory@example.org", "rights": "decrypt"}).status_code == 403
    assert authorization(server, lone.key_id, "mallory@example.org") is None
    # The trail shows no grant of any of it, under any name.
    for rec in records(server):
        assert not (rec["action"] in ("ACCOUNT_CREATE", "APP_ADD", "APP_KEY_ADD",
                                      "ADD_AUTHORIZATION", "GET_DATA_KEY", "DECRYPT")
                    and rec["app"] == "console" and rec["outcome"] == "GRANTED"), rec


def test_host_operator_does_it_with_the_cli(lone: World) -> None:
    """The CLI is trusted (data dir and keystore): it acts at once, audited as such."""
    server = lone.server
    listed = run_cli("app", "list", "--json", "--data-dir", str(server.data_dir),
                     env=server.env)
    assert "single console admin" in listed.stderr.decode()
    json.loads(listed.stdout)  # the warning leaves the JSON clean
    made = run_cli("account", "add", "carol@example.com", "--role", "user", "--json",
                   "--data-dir", str(server.data_dir), env=server.env)
    assert json.loads(made.stdout)["username"] == "carol@example.com"
    assert account(server, "carol@example.com") is not None
    rec = last_record(server, action="ACCOUNT_CREATE")
    assert (rec["app"], rec["user"], rec["outcome"]) == ("cli", getpass.getuser(), "GRANTED")
    assert rec["details"]["via"] == "host_operator"
    assert rec["details"]["account"] == "carol@example.com"
    assert json.loads(made.stdout)["one_time_password"] not in json.dumps(records(server))


# --- two admins ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", GATED, ids=str)
def test_gated_action_waits_for_a_second_admin(pair: World, first: Console, second: Console,
                                               case: Gated) -> None:
    server = pair.server
    ctx = case.prepare(pair, _tag(case, pair))
    approval_id = requested_id(case.post(first, pair, ctx))
    assert not case.done(pair, ctx)  # a request only
    asked = last_record(server, action="APPROVAL_REQUEST", user="admin")
    assert asked["details"]["approval_id"] == approval_id and asked["outcome"] == "GRANTED"
    assert asked["details"]["expires_at"] - int(time.time()) > 86_000

    # The requester cannot approve their own request.
    own = approve(first, approval_id, ADMIN_PASSWORD)
    assert own.status_code == 403 and not case.done(pair, ctx)
    refused = last_record(server, action="APPROVAL_APPROVE", user="admin")
    assert refused["outcome"] == "DENIED" and refused["details"]["refused"] == "own_request"

    # The second admin's approval runs it, and the record names both.
    done = approve(second, approval_id, ADMIN2_PASSWORD)
    assert done.status_code == 200, done.text[:800]
    assert "Approved: the action ran." in done.text
    assert case.done(pair, ctx)
    rec = last_record(server, action=case.action, user=ADMIN2)
    assert (rec["app"], rec["outcome"]) == ("console", "GRANTED")
    assert rec["details"]["approval"] == {"id": approval_id, "requested_by": "admin",
                                          "approved_by": ADMIN2, "approvers": [ADMIN2]}
    # Decided once: a second approval does nothing more.
    again = approve(second, approval_id, ADMIN2_PASSWORD)
    assert again.status_code == 403


def test_created_account_password_goes_to_the_approver(pair: World, first: Console,
                                                       second: Console) -> None:
    server = pair.server
    approval_id = requested_id(first.post("/console/accounts", {
        "username": OWNER, "role": "user"}, page="/console/accounts"))
    assert account(server, OWNER) is None
    # Until approved, nobody signs in as the owner.
    intruder = Console(server)
    try:
        assert intruder.login(OWNER, "any-password-at-all").status_code == 401
        page = approve(second, approval_id, ADMIN2_PASSWORD).text
        issued = re.search(r'id="issued">.*?<code>([^<]+)</code>', page, re.S)
        assert issued is not None
        assert intruder.login(OWNER, issued.group(1)).status_code == 303
        assert intruder.http.get("/console/keys").headers["location"].endswith("/password")
    finally:
        intruder.close()
    # The requester never saw it, and no record holds it.
    assert issued.group(1) not in first.http.get("/console/approvals").text
    assert issued.group(1) not in json.dumps(records(server))


def test_rejected_and_withdrawn_requests_do_nothing(pair: World, first: Console,
                                                    second: Console) -> None:
    server = pair.server
    for decider, who in ((second, ADMIN2), (first, "admin")):
        name = f"rejected-{who}@example.com"
        approval_id = requested_id(first.post("/console/accounts", {
            "username": name, "role": "user"}, page="/console/accounts"))
        r = decider.post(f"/console/approvals/{approval_id}/reject", {},
                         page="/console/approvals")
        assert r.status_code == 303
        rec = last_record(server, action="APPROVAL_REJECT", user=who)
        assert rec["details"]["approval_id"] == approval_id
        assert rec["details"]["withdrawn"] is (who == "admin")
        assert approve(second, approval_id, ADMIN2_PASSWORD).status_code == 403
        assert account(server, name) is None


def _host_written_request(server: Server, **changes: Any) -> str:
    """A request row sealed with the keystore, as the host operator could write one."""
    now = int(time.time())
    row = ApprovalRow(
        approval_id=f"apr_host{now}{len(changes)}", action="account-create",
        payload=encode_payload({"username": f"late{now}@example.com", "role": "user"}, []),
        summary="Create the user account", requested_by="admin", requested_at=now - 90_000,
        expires_at=now - 3_600, status="pending", decided_by=None, decided_at=None)
    row = dataclasses.replace(row, **changes)
    engines = create_engines(server.config().database_url)
    try:
        with open_keystore(keystore_settings(server.config())) as keystore, \
                engines.write.begin() as conn:
            approvals.insert_approval(conn, keystore.seal_row(row))
    finally:
        engines.dispose()
    return row.approval_id


def test_expired_request_does_nothing(pair: World, second: Console) -> None:
    approval_id = _host_written_request(pair.server)
    assert "status-expired" in second.http.get("/console/approvals").text
    answer = approve(second, approval_id, ADMIN2_PASSWORD)
    assert answer.status_code == 403 and "expired" in answer.text
    rec = last_record(pair.server, action="APPROVAL_APPROVE", user=ADMIN2)
    assert rec["outcome"] == "DENIED" and rec["details"]["refused"] == "expired"
    params = _read(pair.server, lambda c: approvals.get_approval(c, approval_id)).params
    assert account(pair.server, params["username"]) is None


def test_request_changed_in_the_database_is_refused(pair: World, first: Console,
                                                    second: Console) -> None:
    """Swapping a request's parameters with SQL after it was asked: integrity_failure."""
    server = pair.server
    approval_id = requested_id(first.post("/console/accounts", {
        "username": "meant@example.com", "role": "user"}, page="/console/accounts"))
    engines = create_engines(server.config().database_url)
    try:
        with engines.write.begin() as conn:
            conn.execute(approvals_table.update().where(
                approvals_table.c.approval_id == approval_id).values(
                payload=encode_payload({"username": OWNER, "role": "user"}, [])))
    finally:
        engines.dispose()
    answer = approve(second, approval_id, ADMIN2_PASSWORD)
    assert answer.status_code == 409
    rec = last_record(server, action="APPROVAL_APPROVE", user=ADMIN2)
    assert (rec["outcome"], rec["reason"]) == ("DENIED", "integrity_failure")
    assert account(server, "swapped@example.com") is None
    assert account(server, "meant@example.com") is None
    assert "seal fails" in second.http.get("/console/approvals").text


def test_request_refused_when_it_could_not_run(pair: World, first: Console) -> None:
    """Checked when asked (a dry run): an existing account, a registered key."""
    answer = first.post("/console/accounts", {"username": ADMIN2, "role": "admin"},
                        page="/console/accounts")
    assert answer.status_code == 400 and "exists already" in answer.text
    answer = first.post(f"/console/apps/{pair.app.app_id}/keys", {
        "key": json.dumps(pair.app.sign_public), "password": ADMIN_PASSWORD},
        page="/console/apps")
    assert answer.status_code == 400 and "already registered" in answer.text
    rec = last_record(pair.server, action="APPROVAL_REQUEST", user="admin")
    assert rec["outcome"] == "DENIED"
    # The same request twice: the second is refused while the first waits.
    ask = {"username": "twice@example.com", "role": "user"}
    waiting = requested_id(first.post("/console/accounts", ask, page="/console/accounts"))
    again = first.post("/console/accounts", ask, page="/console/accounts")
    assert again.status_code == 403 and waiting in again.text
    rec = last_record(pair.server, action="APPROVAL_REQUEST", user="admin")
    assert (rec["outcome"], rec["details"]["refused"]) == ("DENIED", "duplicate")


def test_narrowing_an_applications_users_is_not_gated(pair: World, first: Console) -> None:
    registered = pair.server.register_app("narrow", users=("*@example.com",))
    answer = first.post(f"/console/apps/{registered.app_id}/users",
                        {"users": "bob@example.com"}, page="/console/apps")
    assert answer.status_code == 303 and answer.headers["location"].endswith("done=users")
    rec = last_record(pair.server, action="APP_UPDATE", user="admin")
    assert rec["details"]["users"] == ["bob@example.com"] and "approval" not in rec["details"]


def test_an_admin_acting_on_their_own_right_is_not_gated(pair: World, first: Console) -> None:
    """manage-any is gated; an admin the owner named with ``manage`` acts as any manager."""
    with pair.server.client(pair.app, OWNER) as alice:
        key_id, _ = alice.encrypt(b"shared", name="shared with the admin")
    put_account(pair.server, "ops@example.com", PASSWORD, Role.ADMIN)
    with pair.server.client(pair.app, OWNER) as alice:
        alice.add_authorization(key_id, "ops@example.com", ["manage"])
    ops = Console(pair.server).as_account("ops@example.com", PASSWORD)
    try:
        answer = ops.post(f"/console/keys/{key_id}/authorizations", {
            "principal": "bob@example.com", "rights": "decrypt"})
        assert answer.status_code == 303 and "done=auth_added" in answer.headers["location"]
        assert authorization(pair.server, key_id, "bob@example.com") == "active"
    finally:
        ops.close()
        run_cli("account", "disable", "ops@example.com", "--data-dir",
                str(pair.server.data_dir), env=pair.server.env)


def test_dashboard_shows_pending_requests_not_the_warning(pair: World, first: Console) -> None:
    requested_id(first.post("/console/accounts", {"username": "dash@example.com",
                                                  "role": "user"}, page="/console/accounts"))
    html = first.http.get("/console/dashboard").text
    assert 'id="pending-approvals"' in html and 'id="single-admin"' not in html
    listed = run_cli("app", "list", "--data-dir", str(pair.server.data_dir),
                     env=pair.server.env)
    assert "single console admin" not in listed.stderr.decode()


# --- second factor ----------------------------------------------------------------------------


@pytest.mark.parametrize(("role", "required"), [
    (Role.ADMIN, True), (Role.AUDITOR, True), (Role.USER, False)])
def test_second_factor_required_for_admin_and_auditor(pair: World, role: Role,
                                                      required: bool) -> None:
    username = f"new-{role}@example.com"
    put_account(pair.server, username, "one-time-pass-7", role, must_change=True)
    c = Console(pair.server)
    try:
        assert c.login(username, "one-time-pass-7").status_code == 303
        r = c.post("/console/password", {"current": "one-time-pass-7", "new": PASSWORD,
                                         "confirm": PASSWORD}, page="/console/password")
        assert r.status_code == 303
        after = c.http.get("/console/keys")
        if not required:
            assert after.status_code == 200
            return
        # Nothing but the enrolment page (and sign-out) until a second factor is on.
        for path in ("/console/keys", "/console/dashboard", "/console/audit"):
            r = c.http.get(path)
            assert r.status_code == 303 and r.headers["location"] == "/console/totp", path
        page = c.http.get("/console/totp").text
        assert 'id="totp-required"' in page
        secret = re.search(r'name="secret" value="([A-Z2-7]+)"', page).group(1)  # type: ignore[union-attr]
        r = c.post("/console/totp", {"action": "enable", "secret": secret, "password": PASSWORD,
                                     "code": security.totp_code(secret, time.time())},
                   page="/console/totp")
        assert r.status_code == 303
        assert c.http.get("/console/keys").status_code == 200
        # And it cannot be turned off alone.
        r = c.post("/console/totp", {"action": "disable", "password": PASSWORD},
                   page="/console/totp")
        assert r.status_code == 403
        assert account(pair.server, username).totp_secret is not None  # type: ignore[union-attr]
    finally:
        c.close()


# --- throttle ------------------------------------------------------------------------------------


def test_concurrent_failed_sign_ins_do_not_overshoot(pair: World) -> None:
    """SECURITY-CASES 39 under concurrency: exactly the limit is judged, the rest refused."""
    username = "hammered@example.com"
    put_account(pair.server, username, PASSWORD, Role.USER)
    attempts = security.THROTTLE_LIMIT * 2
    clients = [Console(pair.server, source="127.0.0.9") for _ in range(attempts)]
    tokens = []
    for c in clients:
        page = c.http.get("/console/login")
        tokens.append(re.search(r'name="login_token" value="([^"]+)"', page.text).group(1))  # type: ignore[union-attr]
    barrier = threading.Barrier(attempts)
    statuses: list[int] = []

    def attempt(c: Console, token: str) -> None:
        barrier.wait()
        r = c.http.post("/console/login", data={"login_token": token, "username": username,
                                                "password": "wrong-password-99", "code": ""})
        statuses.append(r.status_code)

    threads = [threading.Thread(target=attempt, args=pair_) for pair_ in zip(clients, tokens,
                                                                             strict=True)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        for c in clients:
            c.close()
    assert sorted(statuses) == [401] * security.THROTTLE_LIMIT + [429] * security.THROTTLE_LIMIT
    counter = _read(pair.server, lambda conn: get_throttle(conn, "account", username))
    assert counter[0] == attempts
    # Throttled now, even with the right password.
    late = Console(pair.server, source="127.0.0.10")
    try:
        assert late.login(username, PASSWORD).status_code == 429
    finally:
        late.close()


# --- quorum of three --------------------------------------------------------------------------


def test_quorum_of_three(server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory,
                         ) -> None:
    server = make_server(tmp_path_factory.mktemp("quorum3"),
                         env={**server_env, "SCEAU_CONSOLE_APPROVAL_QUORUM": "3"})
    consoles: list[Console] = []
    try:
        put_account(server, "admin", ADMIN_PASSWORD, Role.ADMIN)
        put_account(server, ADMIN2, ADMIN2_PASSWORD, Role.ADMIN)
        a = Console(server).as_account("admin", ADMIN_PASSWORD)
        consoles.append(a)
        # Two admins, three needed: not offered.
        assert 'id="quorum-note"' in a.http.get("/console/accounts").text
        put_account(server, "admin3", PASSWORD, Role.ADMIN)
        b = Console(server).as_account(ADMIN2, ADMIN2_PASSWORD)
        c = Console(server).as_account("admin3", PASSWORD)
        consoles += [b, c]
        approval_id = requested_id(a.post("/console/accounts", {
            "username": OWNER, "role": "user"}, page="/console/accounts"))
        one = approve(b, approval_id, ADMIN2_PASSWORD)
        assert one.status_code == 200 and "Approval recorded (1 of 2)" in one.text
        assert account(server, OWNER) is None
        assert approve(b, approval_id, ADMIN2_PASSWORD).status_code == 403  # not twice
        assert approve(c, approval_id, PASSWORD).status_code == 200
        assert account(server, OWNER) is not None
        rec = last_record(server, action="ACCOUNT_CREATE")
        assert rec["user"] == "admin3" and rec["details"]["approval"]["approvers"] == [
            ADMIN2, "admin3"]
    finally:
        for console in consoles:
            console.close()
        server.stop()
