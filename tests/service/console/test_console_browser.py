"""The console in a real browser (Debian's chromium, headless) against a real `sceau serve`.

The tests run in file order and share one server, one browser and the state they build
(keys, an application, accounts), as an administrator's session would. Each page is saved
as a screenshot under docs/images/ for docs/console.md.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from console_support import PASSWORD, next_code, put_account, remember_totp, shots_dir
from sceau.errors import AccessDenied
from sceau.jose.client import generate_app_keys
from sceau.service.console import security
from sceau.vocab import Role
from support import Server

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"{CHROMIUM} is missing: run `make system` (installs Debian's chromium)",
)
sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect

ONE_TIME = "init-one-time-9Kq2"
ADMIN_NEW = "amber-quarry-telescope-58"
# The second admin who approves what the first requests (separation of duties).
ADMIN2 = "admin2"
ADMIN2_PASSWORD = "cobalt-meadow-sextant-31"
XSS_NAME = '<img src=x onerror="alert(1)"><script>alert(2)</script>'


@pytest.fixture(scope="module")
def world(server: Server) -> dict[str, Any]:
    """The admin as `sceau init` leaves it, a second admin, and keys made through the API."""
    put_account(server, "admin", ONE_TIME, Role.ADMIN, must_change=True)
    put_account(server, ADMIN2, ADMIN2_PASSWORD, Role.ADMIN)
    app = server.register_app("payroll")
    out: dict[str, Any] = {"app": app}
    with server.client(app, "alice@example.com") as alice:
        out["alpha"], _ = alice.encrypt(b"alpha", name="Contract Alpha", tag="legal")
        out["beta"], _ = alice.encrypt(b"beta", name="Contract Beta", tag="legal")
        out["invoice"], out["invoice_ct"] = alice.encrypt(b"invoice", name="Invoice 7",
                                                          tag="finance")
        out["xss"], _ = alice.encrypt(b"x", name=XSS_NAME, tag="<b>tag</b>")
    with server.client(app, "carol@example.com") as carol:
        out["carol"], _ = carol.encrypt(b"carol", name="Carol's notes")
    return out


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def page(browser: Any, server: Server, world: dict[str, Any]) -> Iterator[Any]:
    context = browser.new_context(ignore_https_errors=True, base_url=server.url,
                                  viewport={"width": 1360, "height": 900})
    dialogs: list[str] = []
    pg = context.new_page()
    pg.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    pg.dialogs = dialogs
    yield pg
    context.close()


@pytest.fixture(scope="module")
def approver(browser: Any, server: Server, world: dict[str, Any]) -> Iterator[Any]:
    """The second admin, signed in (with a TOTP code) in a browser context of their own."""
    context = browser.new_context(ignore_https_errors=True, base_url=server.url,
                                  viewport={"width": 1360, "height": 900})
    pg = context.new_page()
    sign_in(pg, ADMIN2, ADMIN2_PASSWORD, next_code(server, ADMIN2))
    expect(pg.locator("h1")).to_have_text("Dashboard")
    yield pg
    context.close()


def approve_pending(approver: Any) -> None:
    """The second admin approves the one pending request, with their password."""
    approver.goto("/console/approvals")
    form = approver.locator("form.approve").first
    form.locator("input[name=password]").fill(ADMIN2_PASSWORD)
    form.locator("button[type=submit]").click()
    expect(approver.locator("p.notice").first).to_have_text("Approved: the action ran.")


def shot(page: Any, name: str) -> None:
    directory = shots_dir()
    directory.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(directory / f"{name}.png"), full_page=True)


def sign_in(page: Any, username: str, password: str, code: str = "") -> None:
    page.goto("/console/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.fill("input[name=code]", code)
    page.click("button[type=submit]")


def test_first_sign_in_forces_a_password_change_then_two_factor(page: Any,
                                                                server: Server) -> None:
    page.goto("/console/")
    expect(page).to_have_url(re.compile(r"/console/login$"))
    page.fill("input[name=username]", "admin")
    shot(page, "login")
    page.fill("input[name=password]", ONE_TIME)
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Change password")
    page.goto("/console/keys")  # nothing else is reachable yet
    expect(page.locator("h1")).to_have_text("Change password")
    shot(page, "password")
    for new, outcome in (("password1234", "too common"), (ADMIN_NEW, None)):
        page.fill("input[name=current]", ONE_TIME)
        page.fill("input[name=new]", new)
        page.fill("input[name=confirm]", new)
        page.click("main button[type=submit]")
        if outcome:
            expect(page.locator("p.error")).to_contain_text(outcome)
    # An admin signs in with a second factor: nothing but its enrolment page until then.
    expect(page.locator("h1")).to_have_text("Two-factor sign-in")
    expect(page.locator("#totp-required")).to_be_visible()
    page.goto("/console/keys")
    expect(page.locator("h1")).to_have_text("Two-factor sign-in")
    shot(page, "totp")
    secret = page.locator("#totp-secret").inner_text()
    page.fill("main input[name=code]", security.totp_code(secret, time.time()))
    page.fill("main input[name=password]", ADMIN_NEW)
    page.click("main button[type=submit]")
    expect(page.locator("h1")).to_have_text("Dashboard")
    expect(page.locator("p.notice")).to_have_text("Two-factor settings saved.")
    remember_totp(server, "admin", secret)


def test_filter_keys(page: Any, world: dict[str, Any]) -> None:
    page.goto("/console/keys")
    page.fill("#key-filters input[name=name]", "contract")
    page.select_option("#key-filters select[name=status]", "active")
    page.click("#key-filters button[type=submit]")
    rows = page.locator("table.keys tbody tr")
    expect(rows).to_have_count(2)
    expect(page.locator("table.keys")).to_contain_text(world["alpha"])
    expect(page.locator("table.keys")).to_contain_text(world["beta"])
    expect(page.locator("table.keys")).not_to_contain_text(world["invoice"])
    page.goto("/console/keys?person=carol@example.com&role=owner")
    expect(page.locator("table.keys tbody tr")).to_have_count(1)
    page.goto("/console/keys")
    shot(page, "keys")


def test_bulk_disable(page: Any, world: dict[str, Any]) -> None:
    page.goto("/console/keys?name=contract")
    page.check("#select-all")  # our own script ticks every row of the page
    expect(page.locator("#selected-count")).to_have_text("Selected keys: 2")
    page.click("button[value=disable]")
    expect(page.locator("p.notice")).to_have_text("2 key(s) changed, 0 refused.")
    expect(page.locator("table.keys .status-disabled")).to_have_count(2)


def test_authorization_then_denial_in_the_access_listing(page: Any, approver: Any,
                                                         server: Server,
                                                         world: dict[str, Any]) -> None:
    page.goto(f"/console/keys/{world['invoice']}")
    page.fill("#add-authorization input[name=principal]", "bob@example.com")
    # The admin does not manage alice's key on their own right: a request for admin2.
    page.click("#add-authorization button[type=submit]")
    expect(page.locator("h1")).to_have_text("Approvals")
    expect(page.locator("table.approvals")).to_contain_text("Authorize bob@example.com")
    approve_pending(approver)
    page.goto(f"/console/keys/{world['invoice']}")
    row = page.locator("table.auths tr", has_text="bob@example.com")
    expect(row).to_contain_text("decrypt")
    row.locator("button[value=disable]").click()
    expect(page.locator("p.notice")).to_have_text("Authorization updated.")
    expect(page.locator("table.auths tr", has_text="bob@example.com")).to_contain_text(
        "disabled")
    with server.client(world["app"], "bob@example.com") as bob, \
            pytest.raises(AccessDenied) as refused:
        bob.decrypt(world["invoice_ct"])
    assert str(refused.value.reason) == "authorization_disabled"
    page.reload()
    denied = page.locator("table.accesses tr.outcome-denied", has_text="bob@example.com")
    expect(denied).to_contain_text("DECRYPT")
    expect(denied).to_contain_text("authorization_disabled")
    expect(denied).to_contain_text(world["app"].app_id)
    shot(page, "key")


def test_destroy_asks_for_the_key_id_and_password_then_shows_the_receipt(
        page: Any, world: dict[str, Any]) -> None:
    key = world["invoice"]
    page.goto(f"/console/keys/{key}")
    page.fill("#destroy-form input[name=confirm]", key[:-1])
    page.fill("#destroy-form input[name=password]", ADMIN_NEW)
    page.click("#destroy-form button[type=submit]")
    expect(page.locator("p.error")).to_contain_text("Type the key id")
    page.fill("#destroy-form input[name=confirm]", key)
    page.fill("#destroy-form input[name=password]", "not-my-password")
    page.click("#destroy-form button[type=submit]")
    expect(page.locator("p.error")).to_contain_text("Re-authentication failed")
    page.fill("#destroy-form input[name=confirm]", key)
    page.fill("#destroy-form input[name=password]", ADMIN_NEW)
    page.click("#destroy-form button[type=submit]")
    expect(page.locator("h1")).to_have_text("Key destroyed")
    body = json.loads(page.locator("#receipt").inner_text())
    header = json.loads(base64.urlsafe_b64decode(body["receipt"].split(".")[0] + "=="))
    assert body["key_id"] == key and header["typ"] == "sceau-receipt+jwt"
    shot(page, "receipt")
    page.goto(f"/console/keys/{key}")
    expect(page.locator("h1 .status")).to_have_text("destroyed")


def test_register_an_application(page: Any, approver: Any) -> None:
    _priv, public, _enc_priv, enc_public = generate_app_keys("ES256")
    page.goto("/console/apps")
    page.fill("#register-app input[name=name]", "HR portal")
    page.fill("#register-app input[name=users]", "*@example.com")
    page.fill("#register-app textarea[name=key]", json.dumps(public))
    page.fill("#register-app textarea[name=enc_key]", json.dumps(enc_public))
    page.fill("#register-app input[name=password]", ADMIN_NEW)
    page.click("#register-app button[type=submit]")
    expect(page.locator("p.notice")).to_contain_text("Request recorded")
    expect(page.locator("table.approvals")).to_contain_text("HR portal")
    page.goto("/console/apps")
    expect(page.locator("table.apps")).not_to_contain_text("HR portal")
    approver.goto("/console/approvals")
    shot(approver, "approvals")
    approve_pending(approver)
    page.goto("/console/apps")
    page.click("table.apps a:text('HR portal')")
    expect(page.locator("h1")).to_contain_text("HR portal")
    expect(page.locator("main")).to_contain_text(public["kid"])
    shot(page, "app")
    page.goto("/console/apps")
    expect(page.locator("table.apps")).to_contain_text("HR portal")
    shot(page, "apps")


def test_accounts_and_audit_pages(page: Any, approver: Any, world: dict[str, Any]) -> None:
    page.goto("/console/accounts")
    page.fill("#create-account input[name=username]", "alice@example.com")
    page.select_option("#create-account select[name=role]", "user")
    page.click("#create-account button[type=submit]")
    expect(page.locator("p.notice")).to_contain_text("Request recorded")
    approve_pending(approver)
    # The one-time password is shown once, to the admin whose approval created the account.
    issued = approver.locator("#issued code").inner_text()
    world["alice_password"] = issued
    page.goto("/console/accounts")
    expect(page.locator("table.accounts")).to_contain_text("alice@example.com")
    shot(page, "accounts")
    page.goto("/console/audit")
    page.click("#verify")
    expect(page.locator("#verify-result")).to_contain_text("Verified")
    shot(page, "audit")
    page.goto("/console/dashboard")
    expect(page.locator("svg.chart rect.denied")).to_have_count(24)
    expect(page.locator("main")).to_contain_text("authorization_disabled")
    shot(page, "dashboard")


def test_xss_payloads_stay_inert(page: Any, world: dict[str, Any]) -> None:
    for path in (f"/console/keys/{world['xss']}", "/console/keys", "/console/audit",
                 "/console/dashboard"):
        page.goto(path)
    page.goto(f"/console/keys/{world['xss']}")
    expect(page.locator("dl.meta")).to_contain_text(XSS_NAME)
    expect(page.locator("dl.meta")).to_contain_text("<b>tag</b>")
    assert page.locator("main img").count() == 0
    assert page.dialogs == []


def test_a_user_sees_only_their_keys(browser: Any, server: Server,
                                     world: dict[str, Any]) -> None:
    context = browser.new_context(ignore_https_errors=True, base_url=server.url)
    try:
        pg = context.new_page()
        sign_in(pg, "alice@example.com", world["alice_password"])
        expect(pg.locator("h1")).to_have_text("Change password")
        pg.fill("input[name=current]", world["alice_password"])
        pg.fill("input[name=new]", PASSWORD)
        pg.fill("input[name=confirm]", PASSWORD)
        pg.click("main button[type=submit]")
        expect(pg.locator("h1")).to_have_text("Dashboard")
        pg.goto("/console/keys")
        expect(pg.locator("table.keys")).to_contain_text(world["alpha"])
        expect(pg.locator("table.keys")).not_to_contain_text(world["carol"])
        response = pg.goto(f"/console/keys/{world['carol']}")
        assert response is not None and response.status == 404
        expect(pg.locator("p.error")).to_have_text("Not found.")
        assert pg.goto("/console/accounts").status == 403
        cookies = {c["name"]: c for c in context.cookies()}
        session = cookies["__Host-sceau_session"]
        assert session["secure"] and session["httpOnly"] and session["sameSite"] == "Strict"
    finally:
        context.close()


def test_screenshots_exist() -> None:
    names = {p.stem for p in Path(shots_dir()).glob("*.png")}
    assert {"login", "password", "totp", "dashboard", "keys", "key", "receipt", "apps", "app",
            "approvals", "accounts", "audit"} <= names
