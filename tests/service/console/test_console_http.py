"""The console over real HTTPS without a browser: cookies, CSRF, roles, escaping (SC 35-40)."""

from __future__ import annotations

import json
import re
import time

import pytest

from console_support import ADMIN_PASSWORD, PASSWORD, Console, put_account
from sceau.service.console import security
from sceau.store.db import create_engines
from sceau.store.keys import load_key
from sceau.vocab import Role
from support import Server, run_cli

XSS = '<script>alert("x")</script>'


@pytest.fixture(scope="module")
def keys(server: Server) -> dict[str, str]:
    """Keys of alice (one shared with *@example.org) and of carol, made through the API."""
    app = server.register_app(f"app {XSS}")
    with server.client(app, "alice@example.com") as alice:
        shared, _ = alice.encrypt(b"a", name=f"doc {XSS}", tag=XSS,
                                  recipients=["*@example.org", f"x{XSS}@example.org"[:0] or
                                              "bob@example.org"])
        own, _ = alice.encrypt(b"b", name="alice only")
    with server.client(app, "carol@example.com") as carol:
        other, _ = carol.encrypt(b"c", name="carol's")
    put_account(server, "alice@example.com", PASSWORD, Role.USER)
    put_account(server, "dave@example.org", PASSWORD, Role.USER)
    put_account(server, "audrey@example.com", PASSWORD, Role.AUDITOR)
    return {"shared": shared, "own": own, "other": other}


def _key_status(server: Server, key_id: str) -> str:
    engines = create_engines(server.config().database_url)
    try:
        from sceau.core.b64 import b64u_decode

        with engines.read.connect() as conn:
            record = load_key(conn, b64u_decode(key_id))
        assert record is not None
        return str(record.status)
    finally:
        engines.dispose()


def test_cookie_flags_and_new_session_id_at_login(server: Server, console: Console) -> None:
    console.http.cookies.set(security_cookie(), "attacker-chosen", domain="127.0.0.1")
    r = console.login("admin", ADMIN_PASSWORD)
    assert r.status_code == 303
    header = next(v for k, v in r.headers.multi_items()
                  if k == "set-cookie" and v.startswith("__Host-sceau_session="))
    value = header.split(";")[0].split("=", 1)[1]
    assert value != "attacker-chosen" and len(value) >= 43
    flags = {p.strip().lower() for p in header.split(";")[1:]}
    assert {"secure", "httponly", "path=/", "samesite=strict"} <= flags
    assert not any(f.startswith("domain") for f in flags)


def security_cookie() -> str:
    return "__Host-sceau_session"


def test_security_headers_on_pages_and_errors(console: Console) -> None:
    for path in ("/console/login", "/console/keys/not-a-key", "/console/static/console.css"):
        r = console.http.get(path)
        csp = r.headers["content-security-policy"]
        assert csp.startswith("default-src 'self'; script-src 'self'")
        assert "object-src 'none'" in r.headers["content-security-policy"]
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert "max-age" in r.headers["strict-transport-security"]


def test_unknown_user_and_wrong_password_look_the_same(console: Console) -> None:
    a = console.login("nobody@example.com", "whatever-password-1")
    b = console.login("admin", "wrong-password-123", code="")
    assert a.status_code == b.status_code == 401
    msg = re.compile(r'<p class="error" role="alert">([^<]*)</p>')
    assert msg.search(a.text).group(1) == msg.search(b.text).group(1)  # type: ignore[union-attr]


def test_login_without_its_token_is_refused(console: Console) -> None:
    r = console.http.post("/console/login", data={"username": "admin",
                                                   "password": ADMIN_PASSWORD})
    assert r.status_code == 403
    assert "__Host-sceau_session" not in r.headers.get("set-cookie", "")


@pytest.mark.parametrize(
    ("headers", "with_token"),
    [
        ({}, False),
        ({"Origin": "https://evil.example"}, True),
        ({"Origin": "null"}, True),
        ({"Origin": "null", "Sec-Fetch-Site": "cross-site"}, True),
        ({"Origin": "https://evil.example", "Sec-Fetch-Site": "same-origin"}, True),
        ({"Sec-Fetch-Site": "cross-site"}, True),
        ({"Sec-Fetch-Site": "same-site"}, True),
    ],
)
def test_csrf_refused_and_nothing_changed(server: Server, admin: Console, keys: dict[str, str],
                                          headers: dict[str, str], with_token: bool) -> None:
    before = _key_status(server, keys["own"])
    data = {"action": "disable"}
    if with_token:
        data["csrf"] = admin.csrf()
    r = admin.http.post(f"/console/keys/{keys['own']}/status", data=data, headers=headers)
    assert r.status_code == 403
    r = admin.http.post(f"/console/keys/{keys['own']}/status",
                        data={"action": "disable", "csrf": "wrong-token"})
    assert r.status_code == 403
    assert _key_status(server, keys["own"]) == before == "active"


def test_state_change_through_get_is_refused(server: Server, admin: Console,
                                             keys: dict[str, str]) -> None:
    r = admin.http.get(f"/console/keys/{keys['own']}/status?action=disable")
    assert r.status_code == 403
    r = admin.http.get("/console/logout")
    assert r.status_code == 403
    assert _key_status(server, keys["own"]) == "active"
    assert admin.http.get("/console/dashboard").status_code == 200  # still signed in


def test_stored_xss_is_rendered_as_text(admin: Console, keys: dict[str, str]) -> None:
    pages = [f"/console/keys/{keys['shared']}", "/console/keys", "/console/apps",
             "/console/audit"]
    for path in pages:
        html = admin.http.get(path).text
        assert "<script>alert" not in html, path
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in admin.http.get(
        f"/console/keys/{keys['shared']}").text


@pytest.mark.parametrize(
    ("who", "key", "status"),
    [
        ("alice@example.com", "own", 200),
        ("alice@example.com", "other", 404),
        ("dave@example.org", "shared", 200),  # *@example.org entry: sees, cannot manage
        ("dave@example.org", "own", 404),
        ("audrey@example.com", "other", 200),
    ],
)
def test_key_visibility_by_role(console: Console, keys: dict[str, str], who: str, key: str,
                                status: int) -> None:
    console.as_account(who, PASSWORD)  # a live session of this account, or a new sign-in
    assert console.http.get(f"/console/keys/{keys[key]}").status_code == status


@pytest.mark.parametrize(
    ("who", "path", "status"),
    [
        ("alice@example.com", "/console/accounts", 403),
        ("alice@example.com", "/console/apps", 403),
        ("alice@example.com", "/console/audit", 403),
        ("alice@example.com", "/console/audit/export", 403),
        ("audrey@example.com", "/console/audit", 200),
        ("audrey@example.com", "/console/accounts", 403),
        ("alice@example.com", "/console/workspace", 403),
        ("audrey@example.com", "/console/workspace", 403),
    ],
)
def test_pages_by_role(console: Console, keys: dict[str, str], who: str, path: str,
                       status: int) -> None:
    console.as_account(who, PASSWORD)
    assert console.http.get(path).status_code == status


def test_only_an_admin_manages_workspace_keys(console: Console) -> None:
    """A user or an auditor who crafts the Workspace page's POSTs changes nothing."""
    for who in ("alice@example.com", "audrey@example.com"):
        console.as_account(who, PASSWORD)
        made = console.post("/console/workspace/dke", {"name": f"by-{who[:5]}",
                                                       "allow": "*@example.com"})
        assert made.status_code == 403
        granted = console.post("/console/workspace/cse-admins",
                               {"email": who, "password": PASSWORD})
        assert granted.status_code == 403
    console.as_account("admin", ADMIN_PASSWORD)
    page = console.http.get("/console/workspace").text
    assert "by-alice" not in page and "by-audre" not in page
    assert "alice@example.com" not in page and "audrey@example.com" not in page


def test_user_key_table_shows_only_their_keys(console: Console, keys: dict[str, str]) -> None:
    console.login("alice@example.com", PASSWORD)
    html = console.http.get("/console/keys").text
    assert keys["own"] in html and keys["shared"] in html and keys["other"] not in html
    html = console.http.get("/console/keys?person=carol@example.com").text
    assert keys["other"] not in html


def test_auditor_and_stranger_cannot_change_a_key(server: Server, console: Console,
                                                  keys: dict[str, str]) -> None:
    for who, key in (("audrey@example.com", "own"), ("dave@example.org", "shared")):
        console.as_account(who, PASSWORD)
        r = console.post(f"/console/keys/{keys[key]}/status", {"action": "disable"})
        assert r.status_code == 404
        assert _key_status(server, keys[key]) == "active"


def test_logout_and_disable_end_sessions_server_side(server: Server, admin: Console,
                                                     keys: dict[str, str]) -> None:
    other = Console(server)
    try:
        other.login("alice@example.com", PASSWORD)
        stolen = other.http.cookies.get("__Host-sceau_session")
        assert other.http.get("/console/keys").status_code == 200
        r = other.post("/console/logout", {})
        assert r.status_code == 303
        other.http.cookies.set("__Host-sceau_session", stolen or "", domain="127.0.0.1")
        assert other.http.get("/console/keys").status_code == 303  # back to sign-in

        other.http.cookies.clear()
        other.login("alice@example.com", PASSWORD)
        assert other.http.get("/console/keys").status_code == 200
        r = admin.post("/console/accounts/alice@example.com", {"action": "disable"})
        assert r.status_code == 200, re.findall(r'class="error"[^>]*>([^<]*)', r.text)
        assert other.http.get("/console/keys").status_code == 303
        assert other.login("alice@example.com", PASSWORD).status_code == 401
    finally:
        admin.post("/console/accounts/alice@example.com", {"action": "enable"})
        other.close()


def test_totp_codes_are_single_use(server: Server, console: Console) -> None:
    put_account(server, "tina@example.com", PASSWORD, Role.USER)
    assert console.login("tina@example.com", PASSWORD).status_code == 303
    page = console.http.get("/console/totp").text
    secret = re.search(r'name="secret" value="([A-Z2-7]+)"', page).group(1)  # type: ignore[union-attr]
    now = time.time()
    # Enrol with the previous step's code so that the current one is still unused.
    r = console.post("/console/totp", {"action": "enable", "secret": secret,
                                       "code": security.totp_code(secret, now - 30),
                                       "password": PASSWORD})
    assert r.status_code == 303, r.text
    console.http.cookies.clear()
    code = security.totp_code(secret, time.time())
    assert console.login("tina@example.com", PASSWORD).status_code == 401  # code needed
    assert console.login("tina@example.com", PASSWORD, code).status_code == 303
    console.http.cookies.clear()
    assert console.login("tina@example.com", PASSWORD, code).status_code == 401  # replayed


def test_new_account_must_change_its_one_time_password(server: Server) -> None:
    # A single-admin installation: the host operator creates user accounts (test_console_duty).
    made = run_cli("account", "add", "newbie@example.com", "--role", "user", "--json",
                   "--data-dir", str(server.data_dir), env=server.env)
    issued = json.loads(made.stdout)["one_time_password"]
    fresh = Console(server)
    try:
        assert fresh.login("newbie@example.com", issued).status_code == 303
        r = fresh.http.get("/console/keys")
        assert r.status_code == 303 and r.headers["location"].endswith("/console/password")
        r = fresh.post("/console/password", {"current": issued, "new": "password1234",
                                             "confirm": "password1234"}, page="/console/password")
        assert r.status_code == 400 and "too common" in r.text
        old_cookie = fresh.http.cookies.get("__Host-sceau_session")
        r = fresh.post("/console/password", {"current": issued, "new": PASSWORD,
                                             "confirm": PASSWORD}, page="/console/password")
        assert r.status_code == 303
        assert fresh.http.cookies.get("__Host-sceau_session") != old_cookie
        assert fresh.http.get("/console/keys").status_code == 200
    finally:
        fresh.close()


def test_console_actions_are_audited_as_the_account(admin: Console, keys: dict[str, str],
                                                    server: Server) -> None:
    r = admin.post(f"/console/keys/{keys['own']}/status", {"action": "disable"})
    assert r.status_code == 303
    admin.post(f"/console/keys/{keys['own']}/status", {"action": "enable"})
    html = admin.http.get(f"/console/audit?action=DISABLE_KEY&key={keys['own']}").text
    row = re.search(r"<tr class=\"outcome-granted\">(.*?)</tr>", html, re.S)
    assert row is not None
    assert "admin" in row.group(1) and "console" in row.group(1)


def test_export_and_verification(admin: Console) -> None:
    r = admin.http.get("/console/audit/export")
    assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
    lines = r.text.splitlines()
    assert lines and all(line.startswith("{") for line in lines)
    html = admin.http.get("/console/audit?verify=1").text
    assert 'class="ok" id="verify-result">Verified' in html


def test_throttling_per_account_and_per_address(server: Server) -> None:
    put_account(server, "tom@example.com", PASSWORD, Role.USER)
    put_account(server, "uma@example.com", PASSWORD, Role.USER)
    first, second = Console(server, source="127.0.0.2"), Console(server, source="127.0.0.3")
    try:
        for _ in range(security.THROTTLE_LIMIT):
            assert first.login("tom@example.com", "not-his-password").status_code == 401
        # The right password no longer helps, from this address or any other...
        r = first.login("tom@example.com", PASSWORD)
        assert r.status_code == 429 and "Too many" in r.text
        assert second.login("tom@example.com", PASSWORD).status_code == 429
        # ...and this address is throttled for every account, while others are not.
        assert first.login("uma@example.com", PASSWORD).status_code == 429
        assert second.login("uma@example.com", PASSWORD).status_code == 303
    finally:
        first.close()
        second.close()
