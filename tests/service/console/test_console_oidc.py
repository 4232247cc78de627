"""OpenID Connect sign-in to the console, end to end against a real provider (issue 14).

A real `sceau serve` over HTTPS and a real OpenID provider (oidc-provider from npm, started
by tests/oidc_support.py) on both stores. People sign in through the provider's own pages
(httpx, and Chromium for the Protect page); the refusals are driven through the same
endpoints with the answers an attacker could produce (a replayed callback, another browser,
another issuer, another client's code), and each must leave an audit record that names who
acted, or nobody while nobody was proven.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pytest
import sqlalchemy as sa
from joserfc import jws
from joserfc.jwk import OctKey

from audit_support import audit_lines, count_rows, last_record, records, verify_store
from console_support import ADMIN_PASSWORD, PASSWORD, Console, put_account, shots_dir
from oidc_support import (
    CLIENT_ID,
    OTHER_CLIENT_ID,
    OTHER_REDIRECT,
    Person,
    TestProvider,
    running_provider,
)
from sceau.config import load_config
from sceau.connectors.files import open_file
from sceau.core.b64 import b64u_encode
from sceau.errors import ConfigError
from sceau.service.console.oidc import (
    CALLBACK_PATH,
    NO_PASSWORD,
    Expected,
    IssuerMismatch,
    OAuth2Client,
    OidcReason,
    OidcRefused,
    ProviderMetadata,
    load_settings,
    verify_id_token,
)
from sceau.store import accounts
from sceau.store.db import create_engines
from sceau.vocab import Role
from support import (
    STORES,
    Server,
    TestApp,
    databases_for,
    free_port,
    make_server,
    run_cli,
    store_env,
)

CHROMIUM = "/usr/bin/chromium"


@dataclass
class Site:
    server: Server
    provider: TestProvider
    app: TestApp


@pytest.fixture(scope="module", params=STORES)
def site(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A Sceau server and the provider it trusts, each configured with the other's address."""
    store = str(request.param)
    databases = databases_for(request, store)
    env = store_env(store, databases)
    base = tmp_path_factory.mktemp(f"oidc-{store}")
    server = make_server(base / "sceau", env=env, start=False)
    with running_provider(base / "provider", f"{server.url}{CALLBACK_PATH}") as provider:
        server.env.update(provider.sceau_env())
        server.start()
        try:
            put_account(server, "admin", ADMIN_PASSWORD, Role.ADMIN)
            # An account an admin made with a password, under a name the provider also has.
            put_account(server, "pat@example.com", PASSWORD, Role.USER)
            yield Site(server, provider, server.register_app("oidc-tests"))
        finally:
            server.stop()
    if databases is not None:
        databases.drop(env["SCEAU_DATABASE_URL"])


@pytest.fixture()
def console(site: Site) -> Iterator[Console]:
    c = Console(site.server)
    yield c
    c.close()


def begin(console: Console) -> str:
    """Click "Sign in with ...": the authorization URL Sceau redirects to."""
    page = console.http.get("/console/login")
    assert 'href="/console/oidc/start">Sign in with Example ID' in page.text
    response = console.http.get("/console/oidc/start")
    assert response.status_code == 303, response.text
    return response.headers["location"]


def provider_answer(site: Site, console: Console, login: str) -> str:
    """The callback URL the provider sends ``login`` back with (not yet followed)."""
    person = Person(site.provider, login)
    try:
        return person.authorize(begin(console))
    finally:
        person.close()


def sign_in(site: Site, console: Console, login: str) -> httpx.Response:
    return console.http.get(provider_answer(site, console, login))


def signed_in_as(console: Console) -> str | None:
    page = console.http.get("/console/dashboard")
    if page.status_code != 200:
        return None
    found = re.search(r'class="account">([^<]+?) <span class="role">([a-z]+)<', page.text)
    return f"{found.group(1)}/{found.group(2)}" if found else None


def login_records(server: Server) -> list[dict[str, Any]]:
    return [r for r in records(server) if r["action"] == "CONSOLE_LOGIN"]


def account_row(server: Server, name: str) -> accounts.AccountRow | None:
    engines = create_engines(server.config().database_url)
    try:
        with engines.read.connect() as conn:
            return accounts.get_account(conn, name)
    finally:
        engines.dispose()


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


# --- signing in ----------------------------------------------------------------------------------


def test_alice_signs_in_through_the_provider(site: Site, console: Console) -> None:
    server = site.server
    with server.client(site.app, "alice@example.com") as alice:
        alice.encrypt(b"alice's", name="alice-payroll.xlsx")
    with server.client(site.app, "bob@example.com") as bob:
        bob.encrypt(b"bob's", name="bob-diary.txt")
    assert account_row(server, "alice@example.com") is None

    answer = provider_answer(site, console, "alice")
    assert answer.startswith(f"{server.url}{CALLBACK_PATH}?")
    assert console.http.cookies.get("__Host-sceau_oidc")
    done = console.http.get(answer)
    assert done.status_code == 200, done.text
    assert 'http-equiv="refresh" content="0; url=/console/"' in done.text
    cookie = done.headers.get_list("set-cookie")
    assert any(c.startswith("__Host-sceau_session=") and "SameSite=strict" in c
               and "Secure" in c and "HttpOnly" in c for c in cookie)

    # A `user` account under the identity the API uses, provisioned at first sign-in.
    assert signed_in_as(console) == "alice@example.com/user"
    row = account_row(server, "alice@example.com")
    assert row is not None
    assert (row.auth, row.role, row.password_hash, row.must_change_password) == (
        accounts.AUTH_OIDC, "user", NO_PASSWORD, False)
    keys = console.http.get("/console/keys").text
    assert "alice-payroll.xlsx" in keys and "bob-diary.txt" not in keys

    granted = last_record(server, action="CONSOLE_LOGIN", outcome="GRANTED")
    assert granted["user"] == "alice@example.com" and granted["app"] == "console"
    assert granted["details"]["method"] == "oidc"
    assert granted["details"]["issuer"] == site.provider.issuer
    assert granted["details"]["subject"] == "alice"
    assert granted["details"]["provisioned"] is True

    # The second sign-in finds the account; nothing is created again.
    second = Console(server)
    try:
        assert sign_in(site, second, "alice").status_code == 200
        assert signed_in_as(second) == "alice@example.com/user"
    finally:
        second.close()
    assert last_record(server, action="CONSOLE_LOGIN", outcome="GRANTED")[
        "details"]["provisioned"] is False
    # Secrets stay out of the trail and the log: the client secret, the code, the state.
    code = parse_qs(urlsplit(answer).query)["code"][0]
    state = parse_qs(urlsplit(answer).query)["state"][0]
    trail = "\n".join(audit_lines(server))
    for secret in (site.provider.client_secret, code, state):
        assert secret not in trail and secret not in server.log()
    assert verify_store(server).ok


def test_identity_is_normalized_like_every_identity(site: Site, console: Console) -> None:
    assert sign_in(site, console, "mixed").status_code == 200
    assert signed_in_as(console) == "Mixed@example.com/user"


@pytest.mark.parametrize(("login", "reason"), [
    ("carol", OidcReason.EMAIL_UNVERIFIED),    # email_verified: false
    ("dave", OidcReason.EMAIL_UNVERIFIED),     # no email_verified claim
    ("string", OidcReason.EMAIL_UNVERIFIED),   # "true", a string: not a JSON true
    ("outsider", OidcReason.DOMAIN_NOT_ALLOWED),
])
def test_unproven_or_foreign_emails_are_refused(site: Site, console: Console, login: str,
                                               reason: OidcReason) -> None:
    before = len(login_records(site.server))
    response = sign_in(site, console, login)
    assert response.status_code == 403
    assert "__Host-sceau_session" not in response.headers.get("set-cookie", "")
    assert signed_in_as(console) is None
    new = login_records(site.server)[before:]
    assert [(r["outcome"], r["reason"]) for r in new] == [("DENIED", str(reason))]
    assert new[0]["details"]["method"] == "oidc"
    email = {"carol": "carol@example.com", "dave": "dave@example.com",
             "string": "string@example.com", "outsider": "outsider@elsewhere.org"}[login]
    assert account_row(site.server, email) is None
    if reason is OidcReason.EMAIL_UNVERIFIED:
        # Not proven: the record names nobody (the subject the provider used is kept).
        assert new[0]["user"] is None and new[0]["details"]["subject"] == login
    else:
        assert new[0]["user"] == email


# --- the state: single use, this browser, not expired ---------------------------------------------


def test_a_replayed_callback_is_refused(site: Site, console: Console) -> None:
    answer = provider_answer(site, console, "bob")
    binding = console.http.cookies.get("__Host-sceau_oidc")
    assert console.http.get(answer).status_code == 200
    assert signed_in_as(console) == "bob@example.com/user"

    replay = Console(site.server)
    try:
        replay.http.cookies.set("__Host-sceau_oidc", binding or "", domain="127.0.0.1")
        before = len(login_records(site.server))
        refused = replay.http.get(answer)
        assert refused.status_code == 403
        assert signed_in_as(replay) is None
    finally:
        replay.close()
    new = login_records(site.server)[before:]
    assert [(r["outcome"], r["reason"], r["user"]) for r in new] == [
        ("DENIED", "unknown_state", None)]


def test_an_answer_opens_nothing_in_another_browser(site: Site, console: Console) -> None:
    """Login CSRF: a victim's browser handed the attacker's callback URL stays signed out."""
    answer = provider_answer(site, console, "bob")
    victim = Console(site.server)
    try:
        before = len(login_records(site.server))
        victim.http.cookies.set("__Host-sceau_oidc", "their-own-value", domain="127.0.0.1")
        assert victim.http.get(answer).status_code == 403
        assert signed_in_as(victim) is None
        assert [r["reason"] for r in login_records(site.server)[before:]] == ["unknown_state"]
    finally:
        victim.close()
    # The state was not consumed by the failed attempt: the real browser still completes.
    assert console.http.get(answer).status_code == 200
    assert signed_in_as(console) == "bob@example.com/user"


def test_an_expired_state_is_refused(site: Site, console: Console) -> None:
    answer = provider_answer(site, console, "bob")
    engines = create_engines(site.server.config().database_url)
    try:
        with engines.write.begin() as conn:
            conn.execute(sa.text("UPDATE console_login_state SET created_at = created_at - 601"))
    finally:
        engines.dispose()
    before = len(login_records(site.server))
    assert console.http.get(answer).status_code == 403
    assert signed_in_as(console) is None
    assert [r["reason"] for r in login_records(site.server)[before:]] == ["state_expired"]


# --- another issuer, another client -------------------------------------------------------------


def test_an_answer_naming_another_issuer_is_refused(site: Site, console: Console) -> None:
    """RFC 9207: the provider names itself in its answer; a mixed-up answer is refused."""
    answer = provider_answer(site, console, "bob")
    assert parse_qs(urlsplit(answer).query)["iss"] == [site.provider.issuer]
    before = len(login_records(site.server))
    forged = with_query(answer, iss="https://attacker.example")
    assert console.http.get(forged).status_code == 403
    assert signed_in_as(console) is None
    assert [r["reason"] for r in login_records(site.server)[before:]] == ["issuer_mismatch"]


def other_client(provider: TestProvider) -> OAuth2Client:
    return OAuth2Client(client_id=OTHER_CLIENT_ID, client_secret=provider.other_secret,
                        redirect_uri=OTHER_REDIRECT, scope="openid email",
                        code_challenge_method="S256", verify=str(provider.ca.ca_file))


def other_clients_answer(provider: TestProvider, login: str) -> tuple[str, str, str]:
    """(code, nonce, PKCE verifier) of a sign-in by ``login`` at the other client."""
    nonce, verifier = b64u_encode(os.urandom(16)), b64u_encode(os.urandom(48))
    with other_client(provider) as client:
        metadata = provider.metadata()
        url, _ = client.create_authorization_url(metadata["authorization_endpoint"],
                                                 code_verifier=verifier, nonce=nonce)
    person = Person(provider, login)
    try:
        answer = person.authorize(url)
    finally:
        person.close()
    assert answer.startswith(OTHER_REDIRECT)
    return parse_qs(urlsplit(answer).query)["code"][0], nonce, verifier


def test_a_code_issued_to_another_client_is_refused(site: Site, console: Console) -> None:
    code, _, _ = other_clients_answer(site.provider, "alice")
    answer = provider_answer(site, console, "bob")
    before = len(login_records(site.server))
    assert console.http.get(with_query(answer, code=code)).status_code == 403
    assert signed_in_as(console) is None
    new = login_records(site.server)[before:]
    assert [(r["reason"], r["details"].get("error")) for r in new] == [
        ("code_exchange_failed", "invalid_grant")]


@pytest.fixture(scope="module")
def second_provider(site: Site, tmp_path_factory: pytest.TempPathFactory,
                    ) -> Iterator[TestProvider]:
    with running_provider(tmp_path_factory.mktemp("second-provider"),
                          f"{site.server.url}{CALLBACK_PATH}") as provider:
        yield provider


def hs256_with_public_key(raw: str, jwks: dict[str, Any]) -> str:
    """The classic confusion: re-sign the payload with HMAC keyed by the public key."""
    payload = jws.extract_compact(raw.encode()).payload
    rsa = next(k for k in jwks["keys"] if k["kty"] == "RSA")
    key = OctKey.import_key(rsa["n"].encode())
    return jws.serialize_compact({"alg": "HS256", "kid": rsa["kid"]}, payload, key,
                                 algorithms=["HS256"])


def unsigned(raw: str) -> str:
    payload = raw.split(".")[1]
    return b64u_encode(b'{"alg":"none"}') + f".{payload}."


def test_id_token_checks(site: Site, second_provider: TestProvider) -> None:
    """Real ID tokens from the provider, each verified against the wrong expectation."""
    provider = site.provider
    code, nonce, verifier = other_clients_answer(provider, "alice")
    with other_client(provider) as client:
        token = client.fetch_token(provider.metadata()["token_endpoint"],
                                   grant_type="authorization_code", code=code,
                                   code_verifier=verifier)
    raw, access = token["id_token"], token["access_token"]
    jwks = provider.jwks()
    right = Expected(issuer=provider.issuer, client_id=OTHER_CLIENT_ID, nonce=nonce,
                     access_token=access)
    now = int(time.time())
    # The control: the same token passes when every expectation is right.
    assert verify_id_token(raw, jwks, right, now).email == "alice@example.com"
    cases: list[tuple[str, str, dict[str, Any], Expected, int]] = [
        ("audience: Sceau's client", raw, jwks, Expected(
            provider.issuer, CLIENT_ID, nonce, access), now),
        ("another issuer", raw, jwks, Expected(
            second_provider.issuer, OTHER_CLIENT_ID, nonce, access), now),
        ("another provider's keys", raw, second_provider.jwks(), right, now),
        ("wrong nonce", raw, jwks, Expected(
            provider.issuer, OTHER_CLIENT_ID, "other-nonce", access), now),
        ("expired", raw, jwks, right, now + 2 * 3600),
        ("issued in the future", raw, jwks, right, now - 3600),
        ("HS256 keyed with the public key", hs256_with_public_key(raw, jwks), jwks, right,
         now),
        ("alg none", unsigned(raw), jwks, right, now),
        ("signature altered", raw[:-4] + ("AAAA" if raw[-4:] != "AAAA" else "BBBB"), jwks,
         right, now),
    ]
    for label, candidate, keys, expected, at in cases:
        try:
            verify_id_token(candidate, keys, expected, at)
        except OidcRefused as refused:
            assert refused.reason is OidcReason.ID_TOKEN_INVALID, label
        else:
            raise AssertionError(f"{label}: accepted")


def test_discovery_must_name_the_configured_issuer(site: Site) -> None:
    document = site.provider.metadata()
    assert ProviderMetadata.from_discovery(document, site.provider.issuer).token_endpoint
    for configured in (site.provider.issuer + "/", "https://127.0.0.1:" +
                       str(site.provider.port)):
        with pytest.raises(IssuerMismatch):
            ProviderMetadata.from_discovery(document, configured)


# --- password accounts and oidc accounts never cross -------------------------------------------


def test_a_password_account_is_not_reachable_through_the_provider(site: Site,
                                                                   console: Console) -> None:
    before = len(login_records(site.server))
    assert sign_in(site, console, "pat").status_code == 403
    assert signed_in_as(console) is None
    new = login_records(site.server)[before:]
    # The provider proved who tried: the record names pat.
    assert [(r["outcome"], r["reason"], r["user"]) for r in new] == [
        ("DENIED", "password_account", "pat@example.com")]
    row = account_row(site.server, "pat@example.com")
    assert row is not None and row.auth == accounts.AUTH_PASSWORD
    # The account still signs in with its password.
    assert console.login("pat@example.com", PASSWORD).status_code == 303


def test_an_oidc_account_never_has_a_password(site: Site, console: Console) -> None:
    assert sign_in(site, console, "alice").status_code == 200
    # Not with a password typed at the sign-in form (the marker included) ...
    other = Console(site.server)
    try:
        for attempt in (NO_PASSWORD, PASSWORD, ""):
            assert other.login("alice@example.com", attempt).status_code == 401
    finally:
        other.close()
    # ... not by setting one on the password page ...
    changed = console.post("/console/password", {
        "current": NO_PASSWORD, "new": "a-brand-new-passphrase-9", "confirm":
        "a-brand-new-passphrase-9"}, page="/console/password")
    assert changed.status_code == 400
    # ... and never by an admin's reset: a lone admin is not offered resets at all (they
    # wait for a second admin), and the host operator's reset is refused for this account.
    admin = Console(site.server)
    try:
        assert admin.login("admin", ADMIN_PASSWORD).status_code == 303
        reset = admin.post("/console/accounts/alice%40example.com", {"action": "reset"},
                           page="/console/accounts")
        assert reset.status_code == 403
    finally:
        admin.close()
    by_operator = run_cli("account", "reset", "alice@example.com", "--data-dir",
                          str(site.server.data_dir), env=site.server.env, check=False)
    assert by_operator.returncode != 0
    assert b"OpenID Connect" in by_operator.stderr
    row = account_row(site.server, "alice@example.com")
    assert row is not None and (row.auth, row.password_hash) == (accounts.AUTH_OIDC,
                                                                  NO_PASSWORD)


def test_a_disabled_oidc_account_is_refused(site: Site, console: Console) -> None:
    assert sign_in(site, console, "erin").status_code == 200
    admin = Console(site.server)
    try:
        assert admin.login("admin", ADMIN_PASSWORD).status_code == 303
        disabled = admin.post("/console/accounts/erin%40example.com", {"action": "disable"},
                              page="/console/accounts")
        assert disabled.status_code == 200
    finally:
        admin.close()
    assert signed_in_as(console) is None  # the disable ended the session
    before = len(login_records(site.server))
    assert sign_in(site, console, "erin").status_code == 403
    assert signed_in_as(console) is None
    assert [(r["reason"], r["user"]) for r in login_records(site.server)[before:]] == [
        ("account_disabled", "erin@example.com")]


def test_an_account_row_changed_in_the_database_opens_nothing(site: Site,
                                                             console: Console) -> None:
    assert sign_in(site, console, "frank").status_code == 200
    engines = create_engines(site.server.config().database_url)
    try:
        with engines.write.begin() as conn:
            conn.execute(sa.text("UPDATE accounts SET role = 'admin' "
                                 "WHERE username = 'frank@example.com'"))
    finally:
        engines.dispose()
    fresh = Console(site.server)
    try:
        before = len(login_records(site.server))
        assert sign_in(site, fresh, "frank").status_code == 409
        assert signed_in_as(fresh) is None
        new = login_records(site.server)[before:]
        assert [(r["outcome"], r["user"]) for r in new] == [("DENIED", "frank@example.com")]
    finally:
        fresh.close()


# --- settings -----------------------------------------------------------------------------------


GOOD = {
    "SCEAU_OIDC_ISSUER": "https://id.example.com",
    "SCEAU_OIDC_CLIENT_ID": "sceau",
    "SCEAU_OIDC_CLIENT_SECRET_ENV": "MY_SECRET",
    "MY_SECRET": "s3cr3t-value-never-printed",
    "SCEAU_OIDC_EMAIL_DOMAINS": "example.com",
}


@pytest.mark.parametrize(("changes", "message"), [
    ({"SCEAU_OIDC_ISSUER": ""}, "oidc.client_id is set but oidc.issuer is empty"),
    ({"SCEAU_OIDC_ISSUER": "http://id.example.com"}, "oidc.issuer: must be an https URL"),
    ({"SCEAU_OIDC_ISSUER": "https://id.example.com?x=1"}, "oidc.issuer: must be an https"),
    ({"SCEAU_OIDC_CLIENT_ID": ""}, "oidc.client_id: required"),
    ({"SCEAU_OIDC_CLIENT_SECRET_ENV": ""}, "exactly one of oidc.client_secret_env"),
    ({"SCEAU_OIDC_CLIENT_SECRET_FILE": "/x"}, "exactly one of oidc.client_secret_env"),
    ({"MY_SECRET": ""}, "oidc.client_secret_env: $MY_SECRET is not set or empty"),
    ({"SCEAU_OIDC_SCOPES": "openid profile"}, "oidc.scopes: must include openid and email"),
    ({"SCEAU_OIDC_CA_FILE": "/nonexistent/ca.pem"}, "oidc.ca_file: cannot load"),
    ({"SCEAU_OIDC_EMAIL_DOMAINS": ""}, "oidc.email_domains: required with oidc.provision"),
    ({"SCEAU_OIDC_EMAIL_DOMAINS": "exa mple..com"}, "is not a domain"),
    ({"SCEAU_OIDC_PROVISION": "admin"}, "oidc.provision"),
    ({"SCEAU_OIDC_TOKEN_AUTH": "none"}, "oidc.token_auth"),
])
def test_settings_are_checked_together(tmp_path: Path, changes: dict[str, str],
                                       message: str) -> None:
    env = {**GOOD, **changes}
    with pytest.raises(ConfigError) as error:
        load_settings(load_config(tmp_path, env=env), env)
    assert message in str(error.value)
    assert GOOD["MY_SECRET"] not in str(error.value)


def test_settings_read_the_secret_by_name_or_from_a_file(tmp_path: Path) -> None:
    config = load_config(tmp_path, env=GOOD)
    settings = load_settings(config, GOOD)
    assert settings is not None and settings.client_secret == GOOD["MY_SECRET"]
    assert GOOD["MY_SECRET"] not in repr(settings)
    assert settings.redirect_uri == "https://127.0.0.1:8443/console/oidc/callback"
    assert settings.display_name == "id.example.com"
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-a-file\n")
    env = {**GOOD, "SCEAU_OIDC_CLIENT_SECRET_ENV": "",
           "SCEAU_OIDC_CLIENT_SECRET_FILE": str(secret_file)}
    from_file = load_settings(load_config(tmp_path, env=env), env)
    assert from_file is not None and from_file.client_secret == "from-a-file"
    assert load_settings(load_config(tmp_path, env={}), {}) is None


def test_serve_refuses_to_start_half_configured(tmp_path: Path) -> None:
    server = make_server(tmp_path, env={"SCEAU_DATABASE_URL": ""}, start=False)
    env = {**server.env, **GOOD, "MY_SECRET": ""}
    proc = run_cli("serve", "--data-dir", str(server.data_dir), env=env, check=False,
                   timeout=60)
    assert proc.returncode != 0
    assert b"oidc.client_secret_env: $MY_SECRET is not set or empty" in proc.stderr


# --- the browser ---------------------------------------------------------------------------------


@pytest.mark.skipif(not os.path.exists(CHROMIUM),
                    reason=f"{CHROMIUM} is missing: run `make system`")
def test_protect_page_works_for_a_user_signed_in_through_the_provider(
        site: Site, tmp_path: Path) -> None:
    """Chromium: the provider on another site, the callback, then a file protected."""
    sync_api = pytest.importorskip("playwright.sync_api")
    expect = sync_api.expect
    source = tmp_path / "note.txt"
    source.write_bytes(b"for alice and bob only\n")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )
        try:
            context = browser.new_context(ignore_https_errors=True, base_url=site.server.url,
                                          accept_downloads=True)
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto("/console/login")
            shots = shots_dir()
            shots.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shots / "login-oidc.png"))
            page.click("#oidc-start")
            page.wait_for_url(f"{site.provider.issuer}/**")
            page.fill("input[name=login]", "alice")
            page.fill("input[name=password]", "any password")
            page.click("button[type=submit]")
            # Back on Sceau: the callback's page moves on to the console by itself.
            expect(page.locator("h1")).to_have_text("Dashboard", timeout=15000)
            expect(page.locator(".who .account")).to_contain_text("alice@example.com")
            page.click("nav >> text=Protect a file")
            expect(page.locator("h1")).to_have_text("Protect a file")
            page.fill("#protect-recipients", "bob@example.com")
            with page.expect_download() as info:
                page.set_input_files("#protect-files", str(source))
            download = info.value
            assert download.failure() is None
            sealed = tmp_path / str(download.suggested_filename)
            download.save_as(sealed)
            expect(page.locator("#protect-results li.done")).to_have_count(1)
            assert errors == []
        finally:
            browser.close()
    # Made as alice, through the API's handlers: bob (named in the page) opens it.
    opened = tmp_path / "opened"
    opened.mkdir()
    with site.server.client(site.app, "bob@example.com") as bob:
        open_file(bob, sealed, out_dir=opened)
    assert (opened / "note.txt").read_bytes() == source.read_bytes()
    made = last_record(site.server, action="GENERATE_DATA_KEY", outcome="GRANTED")
    assert made["user"] == "alice@example.com" and made["app"] == "console"


def test_an_unreachable_provider_fails_closed(tmp_path: Path) -> None:
    """Discovery fails: no redirect, no state row; a callback opens nothing."""
    server = make_server(tmp_path, start=False, env={
        "SCEAU_DATABASE_URL": "", **GOOD,
        "SCEAU_OIDC_ISSUER": f"https://localhost:{free_port()}"})
    server.start()
    console = Console(server)
    try:
        started = console.http.get("/console/oidc/start")
        assert started.status_code == 502
        assert "cannot be reached" in started.text and "location" not in started.headers
        assert count_rows(server, "console_login_state") == 0
        answer = console.http.get(f"{CALLBACK_PATH}?code=x&state=y")
        assert answer.status_code == 403 and signed_in_as(console) is None
        assert last_record(server, action="CONSOLE_LOGIN")["reason"] == "unknown_state"
        assert GOOD["MY_SECRET"] not in server.log()
    finally:
        console.close()
        server.stop()
