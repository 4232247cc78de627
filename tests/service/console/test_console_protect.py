"""The console's "Protect a file": WebCrypto in Chromium, the CLI and SDK on the other side.

Browser-made ``.sceau`` files are opened with `sceau file open` and the SDK; files made by the
file connector are opened in the browser; tampered, foreign, unauthorized and destroyed
files fail with one line and no download. Over plain HTTPS (httpx): the data-key endpoints'
CSRF/origin refusals, the API's policy decision and counter, and their audit records.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from audit_support import last_record, records
from console_support import PASSWORD, Console, put_account
from sceau.connectors.files import FileInfo, encode_file_header, open_file, protect_file
from sceau.core.b64 import b64u_decode, b64u_encode
from sceau.vocab import Role
from support import Server, TestApp, run_cli

CHROMIUM = "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"{CHROMIUM} is missing: run `make system` (installs Debian's chromium)",
)
OWNER = "alice@example.com"
RECIPIENT = "bob@example.com"
STRANGER = "mallory@example.org"
KEY_URL = "/console/protect/key"
OPEN_URL = "/console/protect/open-key"
SEGMENT = 65536


@pytest.fixture(scope="module")
def app(server: Server) -> TestApp:
    """Console accounts and an application that may act for every identity of the tests."""
    for user in (OWNER, STRANGER):
        put_account(server, user, PASSWORD, Role.USER)
    return server.register_app("files")


@pytest.fixture(scope="module")
def profile(server: Server, app: TestApp, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path: Path = server.profile(app, tmp_path_factory.mktemp("profiles") / "alice.json", OWNER)
    return path


def sealed_length(plaintext: int) -> int:
    return 41 + plaintext + 16 * max(1, -(-plaintext // SEGMENT))


# --- browser ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def page(server: Server, app: TestApp) -> Iterator[Any]:
    """A Chromium page signed in as the ``user`` account alice, downloads recorded."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: run `make system`")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )
        context = browser.new_context(ignore_https_errors=True, base_url=server.url,
                                      accept_downloads=True)
        pg = context.new_page()
        pg.downloads = []
        pg.console_errors = []
        pg.on("download", lambda d: pg.downloads.append(d))
        # Uncaught script errors and CSP violations (a missing favicon is neither).
        pg.on("pageerror", lambda e: pg.console_errors.append(str(e)))
        pg.on("console", lambda m: pg.console_errors.append(m.text)
              if "Content Security Policy" in m.text else None)
        pg.goto("/console/login")
        pg.fill("input[name=username]", OWNER)
        pg.fill("input[name=password]", PASSWORD)
        pg.click("button[type=submit]")
        sync_api.expect(pg.locator("h1")).to_have_text("Dashboard")
        pg.expect = sync_api.expect
        yield pg
        context.close()
        browser.close()


def fresh(page: Any) -> None:
    page.goto("/console/protect")
    page.downloads.clear()


def protect_in_browser(page: Any, source: Path, out_dir: Path, recipients: str = "") -> Path:
    fresh(page)
    page.fill("#protect-recipients", recipients)
    with page.expect_download() as info:
        page.set_input_files("#protect-files", str(source))
    download = info.value
    assert download.failure() is None
    target = out_dir / str(download.suggested_filename)
    download.save_as(target)
    page.expect(page.locator("#protect-results li.done")).to_have_count(1)
    page.expect(page.locator("#protect-error")).to_be_hidden()
    return target


def open_in_browser(page: Any, source: Path, out_dir: Path) -> Path:
    fresh(page)
    with page.expect_download() as info:
        page.set_input_files("#open-files", str(source))
    download = info.value
    target = out_dir / str(download.suggested_filename)
    download.save_as(target)
    return target


def key_of(sealed: bytes) -> str:
    return b64u_encode(sealed[5:21])


@needs_chromium
def test_page_is_in_the_navigation_and_keeps_the_strict_policy(page: Any) -> None:
    page.goto("/console/dashboard")
    page.click("nav >> text=Protect a file")
    page.expect(page.locator("h1")).to_have_text("Protect a file")
    response = page.goto("/console/protect")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "unsafe" not in csp
    assert page.locator("script:not([src])").count() == 0
    page.expect(page.locator("#protect-unsupported")).to_be_hidden()


@needs_chromium
def test_browser_files_open_with_the_cli_and_sdk(page: Any, server: Server, app: TestApp,
                                                 profile: Path, tmp_path: Path) -> None:
    sources = tmp_path / "in"
    sources.mkdir()
    big = sources / "scan 2026.bin"
    big.write_bytes(os.urandom(200 * 1024))
    os.utime(big, (1_700_000_000, 1_700_000_000))
    empty = sources / "empty.txt"
    empty.write_bytes(b"")
    made = tmp_path / "made"
    made.mkdir()
    sealed_big = protect_in_browser(page, big, made, recipients=f"{RECIPIENT}, ")
    sealed_empty = protect_in_browser(page, empty, made)
    assert sealed_big.name == "scan 2026.bin.sceau" and sealed_empty.name == "empty.txt.sceau"
    for sealed in (sealed_big, sealed_empty):
        raw = sealed.read_bytes()
        assert raw[:5] == b"SCU\x01\x02" and raw[37:41] == SEGMENT.to_bytes(4, "big")

    # The real console script, with a profile of the same identity.
    opened = tmp_path / "opened"
    opened.mkdir()
    run_cli("file", "open", str(sealed_big), "-o", str(opened), "--profile", str(profile))
    restored = opened / big.name
    assert restored.read_bytes() == big.read_bytes()
    assert int(restored.stat().st_mtime) == 1_700_000_000
    inner = encode_file_header(FileInfo(big.name, big.stat().st_size, 1_700_000_000))
    assert len(sealed_big.read_bytes()) == sealed_length(len(inner) + big.stat().st_size)
    assert len(sealed_empty.read_bytes()) < 41 + SEGMENT  # one segment: header and name
    # The SDK path, for the owner (empty file) and for the recipient named in the page.
    with server.client(app, OWNER) as alice:
        result = open_file(alice, sealed_empty, out_dir=opened)
        assert result.output.read_bytes() == b"" and result.info.name == "empty.txt"
        described = alice.describe_key(key_of(sealed_big.read_bytes()))
    assert described["owner"] == OWNER and described["application"] == "console"
    assert described["name"] == big.name
    bob_dir = tmp_path / "bob"
    bob_dir.mkdir()
    with server.client(app, RECIPIENT) as bob:
        assert open_file(bob, sealed_big, out_dir=bob_dir).output.read_bytes() \
            == big.read_bytes()
    rec = last_record(server, action="GENERATE_DATA_KEY", key=key_of(sealed_big.read_bytes()))
    assert (rec["app"], rec["user"], rec["outcome"]) == ("console", OWNER, "GRANTED")
    assert rec["details"] is None or "key" not in json.dumps(rec["details"])
    assert page.evaluate("localStorage.length + sessionStorage.length") == 0
    assert page.console_errors == []


@needs_chromium
def test_refused_key_options_show_one_line_and_no_download(page: Any, tmp_path: Path) -> None:
    source = tmp_path / "memo.txt"
    source.write_bytes(b"memo")
    fresh(page)
    page.fill("#protect-recipients", "not-an-identity@")
    page.set_input_files("#protect-files", str(source))
    error = page.locator("#protect-error")
    page.expect(error).to_be_visible()
    page.expect(error).to_contain_text("memo.txt: principal:")
    page.expect(page.locator("#protect-results li.failed")).to_have_count(1)
    assert page.downloads == []


@needs_chromium
@pytest.mark.parametrize(("name", "size"), [
    ("relevé été.csv", 3 * SEGMENT + 123),
    ("exact.bin", SEGMENT - 40),  # inner header + content fill one segment exactly
    ("nothing", 0),
])
def test_cli_files_open_in_the_browser(page: Any, server: Server, app: TestApp,
                                       tmp_path: Path, name: str, size: int) -> None:
    source = tmp_path / name
    data = os.urandom(size)
    source.write_bytes(data)
    with server.client(app, OWNER) as alice:
        made = protect_file(alice, source, keep=True)
    out = tmp_path / "out"
    out.mkdir()
    target = open_in_browser(page, made.output, out)
    assert target.name == name and target.read_bytes() == data
    page.expect(page.locator("#open-results li.done")).to_contain_text(name)
    rec = last_record(server, action="GET_DATA_KEY", key=made.key_id)
    assert (rec["app"], rec["user"], rec["outcome"]) == ("console", OWNER, "GRANTED")


def _flip(raw: bytes, at: int) -> bytes:
    return raw[:at] + bytes([raw[at] ^ 1]) + raw[at + 1:]


TAMPERED = [
    ("flipped", lambda raw: _flip(raw, len(raw) // 2), "corrupted or truncated"),
    ("flipped header", lambda raw: _flip(raw, 30), "corrupted or truncated"),
    ("last segment dropped", lambda raw: raw[: 41 + 2 * (SEGMENT + 16)],
     "corrupted or truncated"),
    ("trailing bytes", lambda raw: raw + b"\x00", "corrupted or truncated"),
    ("segments swapped", lambda raw: raw[:41] + raw[41 + SEGMENT + 16: 41 + 2 * (SEGMENT + 16)]
     + raw[41: 41 + SEGMENT + 16] + raw[41 + 2 * (SEGMENT + 16):], "corrupted or truncated"),
    ("header only", lambda raw: raw[:41], "corrupted or truncated"),
    ("cut in the header", lambda raw: raw[:30], "not a .sceau file"),
    ("foreign", lambda raw: b"PK\x03\x04" + raw[4:], "not a .sceau file"),
]


@needs_chromium
@pytest.mark.parametrize(("case", "change", "message"), TAMPERED, ids=[t[0] for t in TAMPERED])
def test_tampered_files_fail_with_one_line_and_no_download(
        page: Any, server: Server, app: TestApp, tmp_path: Path, case: str, change: Any,
        message: str) -> None:
    source = tmp_path / "ledger.csv"
    source.write_bytes(os.urandom(2 * SEGMENT + 500))
    with server.client(app, OWNER) as alice:
        made = protect_file(alice, source, keep=True)
    bad = tmp_path / "bad.sceau"
    bad.write_bytes(change(made.output.read_bytes()))
    _expect_refusal(page, bad, message)


@needs_chromium
@pytest.mark.parametrize(("case", "message"), [
    ("not authorized", "access denied (not_authorized)"),
    ("destroyed", "access denied (key_destroyed)"),
    ("disabled", "access denied (key_disabled)"),
])
def test_refused_keys_fail_with_the_reason_and_no_download(
        page: Any, server: Server, app: TestApp, tmp_path: Path, case: str,
        message: str) -> None:
    source = tmp_path / "minutes.txt"
    source.write_bytes(b"board minutes")
    owner = "carol@example.com" if case == "not authorized" else OWNER
    with server.client(app, owner) as client:
        made = protect_file(client, source, keep=True)
        if case == "destroyed":
            client.destroy_key(made.key_id)
        elif case == "disabled":
            client.disable_key(made.key_id)
    _expect_refusal(page, made.output, message)
    rec = last_record(server, action="GET_DATA_KEY", key=made.key_id)
    assert (rec["app"], rec["user"], rec["outcome"]) == ("console", OWNER, "DENIED")
    assert rec["reason"] == message.split("(")[1].rstrip(")")


def _expect_refusal(page: Any, sealed: Path, message: str) -> None:
    fresh(page)
    page.set_input_files("#open-files", str(sealed))
    error = page.locator("#open-error")
    page.expect(error).to_be_visible()
    page.expect(error).to_contain_text(message)
    assert "\n" not in error.inner_text().strip()
    page.expect(page.locator("#open-results li.failed")).to_have_count(1)
    assert page.locator("#open-results a").count() == 0
    assert page.downloads == []


# --- HTTP ---------------------------------------------------------------------------------------


@pytest.fixture()
def alice(server: Server, app: TestApp) -> Iterator[Console]:
    c = Console(server)
    assert c.login(OWNER, PASSWORD).status_code == 303
    yield c
    c.close()


def _count(server: Server, action: str) -> int:
    return sum(1 for r in records(server) if r["action"] == action)


@pytest.mark.parametrize(("case", "headers", "with_csrf"), [
    ("no csrf token", {}, False),
    ("cross-site", {"Sec-Fetch-Site": "cross-site"}, True),
    ("same-site", {"Sec-Fetch-Site": "same-site"}, True),
    ("foreign origin", {"Origin": "https://evil.example"}, True),
    ("null origin without fetch metadata", {"Origin": "null"}, True),
])
@pytest.mark.parametrize("path", [KEY_URL, OPEN_URL])
def test_data_key_endpoints_refuse_cross_site_and_missing_csrf(
        server: Server, alice: Console, case: str, headers: dict[str, str], with_csrf: bool,
        path: str) -> None:
    before = {a: _count(server, a) for a in ("GENERATE_DATA_KEY", "GET_DATA_KEY")}
    data = {"name": "x.txt", "key_id": "A" * 22}
    if with_csrf:
        data["csrf"] = alice.csrf("/console/protect")
    answer = alice.http.post(path, data=data, headers=headers)
    assert answer.status_code == 403, (case, answer.text[:300])
    assert '"key"' not in answer.text
    assert {a: _count(server, a) for a in before} == before


def test_data_key_endpoints_refuse_get(alice: Console) -> None:
    for path in (KEY_URL, OPEN_URL):
        assert alice.http.get(path).status_code == 403


def test_new_data_key_is_the_apis_generate_data_key(server: Server, app: TestApp,
                                                    alice: Console) -> None:
    answer = alice.post(KEY_URL, {"name": "plan.txt", "recipient": [RECIPIENT, "*@example.org"]},
                        page="/console/protect")
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["content-type"].startswith("application/json")
    assert "default-src 'self'" in answer.headers["content-security-policy"]
    body = answer.json()
    assert set(body) == {"key_id", "key"} and len(b64u_decode(body["key"])) == 32
    with server.client(app, OWNER) as client:
        described = client.describe_key(body["key_id"])
        # The data key is the one the API hands out for that key id.
        assert client.get_data_key(body["key_id"]) == b64u_decode(body["key"])
    assert described["owner"] == OWNER and described["application"] == "console"
    assert described["name"] == "plan.txt"
    assert {a["principal"] for a in described["authorizations"]} == {RECIPIENT, "*@example.org"}
    rec = last_record(server, action="GENERATE_DATA_KEY", key=body["key_id"])
    assert (rec["app"], rec["user"], rec["outcome"]) == ("console", OWNER, "GRANTED")
    assert body["key"] not in json.dumps(records(server))


def test_bad_key_options_are_refused_and_audited(server: Server, alice: Console) -> None:
    answer = alice.post(KEY_URL, {"name": "x", "recipient": "not an identity"},
                        page="/console/protect")
    assert answer.status_code == 400 and answer.json()["code"] == "invalid_request"
    rec = last_record(server, action="GENERATE_DATA_KEY", user=OWNER)
    assert rec["outcome"] == "DENIED" and rec["reason"] == "invalid_request"


def test_open_key_follows_the_api_policy(server: Server, app: TestApp, alice: Console) -> None:
    with server.client(app, OWNER) as client:
        once = client.generate_data_key(name="once", rules={"max_decryptions": 1})
    mallory = Console(server)
    try:
        assert mallory.login(STRANGER, PASSWORD).status_code == 303
        refused = mallory.post(OPEN_URL, {"key_id": once.key_id}, page="/console/protect")
        assert refused.status_code == 403
        assert refused.json() == {"code": "access_denied", "reason": "not_authorized",
                                  "message": "access denied (not_authorized)"}
        rec = last_record(server, action="GET_DATA_KEY", key=once.key_id)
        assert (rec["app"], rec["user"], rec["outcome"], rec["reason"]) == (
            "console", STRANGER, "DENIED", "not_authorized")
    finally:
        mallory.close()
    first = alice.post(OPEN_URL, {"key_id": once.key_id}, page="/console/protect")
    assert first.status_code == 200 and first.headers["cache-control"] == "no-store"
    assert b64u_decode(first.json()["key"]) == once.key
    # The grant counted toward max_decryptions, exactly as the API's get-data-key does.
    second = alice.post(OPEN_URL, {"key_id": once.key_id}, page="/console/protect")
    assert second.status_code == 403 and second.json()["reason"] == "max_decryptions_reached"
    unknown = alice.post(OPEN_URL, {"key_id": "A" * 22}, page="/console/protect")
    assert unknown.status_code == 404
    assert unknown.json()["message"] == "key not found (unknown to this service)"
    malformed = alice.post(OPEN_URL, {"key_id": "../x"}, page="/console/protect")
    assert malformed.status_code == 400 and malformed.json()["code"] == "invalid_request"


@pytest.mark.parametrize("role", [Role.ADMIN, Role.AUDITOR])
def test_operational_roles_have_no_protect_page(server: Server, role: Role) -> None:
    """admin never decrypts (SECURITY-CASES 21) and auditor is read-only: users only."""
    username = f"ops-{role}"
    put_account(server, username, PASSWORD, role)
    c = Console(server)
    try:
        assert c.login(username, PASSWORD).status_code == 303
        assert c.http.get("/console/protect").status_code == 403
        for path in (KEY_URL, OPEN_URL):
            answer = c.post(path, {"name": "x", "key_id": "A" * 22})
            assert answer.status_code == 403 and '"key"' not in answer.text
    finally:
        c.close()


def test_signed_out_requests_get_no_key(server: Server) -> None:
    with httpx.Client(verify=server.cert, base_url=server.url) as http:
        answer = http.post(KEY_URL, data={"csrf": "x", "name": "x"})
        assert answer.status_code == 403 and '"key"' not in answer.text
        assert http.get("/console/protect", follow_redirects=False).status_code == 303


@needs_chromium
def test_several_files_at_once(page: Any, server: Server, app: TestApp,
                               tmp_path: Path) -> None:
    sources = []
    for index in range(3):
        source = tmp_path / f"part-{index}.txt"
        source.write_bytes(os.urandom(1000 * index))
        sources.append(source)
    fresh(page)
    page.set_input_files("#protect-files", [str(s) for s in sources])
    page.expect(page.locator("#protect-results li.done")).to_have_count(3)
    for _ in range(100):  # download events arrive just after the links are clicked
        if len(page.downloads) == 3:
            break
        page.wait_for_timeout(50)
    assert sorted(d.suggested_filename for d in page.downloads) == [
        f"{s.name}.sceau" for s in sources]
    out = tmp_path / "out"
    out.mkdir()
    with server.client(app, OWNER) as alice:
        for download in page.downloads:
            target = out / str(download.suggested_filename)
            download.save_as(target)
            opened = open_file(alice, target, out_dir=out)
            assert opened.output.read_bytes() == (tmp_path / opened.info.name).read_bytes()
