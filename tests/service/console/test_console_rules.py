"""Console rules without a server: passwords, throttling, session timeouts, TOTP (SC 35-40)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sceau.config import load_config
from sceau.errors import BadCredentials
from sceau.keystore import init_keystore, open_keystore
from sceau.keystore.base import KeystoreSettings
from sceau.service import accounts
from sceau.service.console import security
from sceau.service.console.web import SESSION_COOKIE, Console
from sceau.service.runtime import VerifiedRows
from sceau.store import accounts as store_accounts
from sceau.store.db import create_engines, upgrade

# --- passwords (SC 38) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("password", "why"),
    [
        ("short-pass1", "at least"),
        ("password1234", "common"),
        ("Password1234", "common"),
        ("aaaaaaaaaaaaaaa", "common"),
        ("x" * (security.MAX_PASSWORD + 1), "at most"),
        ("my-alice@example.com-pw", "account name"),
        ("same-old-secret-9", "differ"),
    ],
)
def test_weak_passwords_are_refused(password: str, why: str) -> None:
    with pytest.raises(security.PasswordRefused, match=why):
        security.check_new_password(password, username="alice@example.com",
                                    current="same-old-secret-9")


def test_good_password_is_accepted() -> None:
    assert security.check_new_password("violet-meadow-compass-17", username="alice") is None


def test_argon2id_parameters_meet_the_floor() -> None:
    stored = accounts.hash_password("violet-meadow-compass-17")
    assert stored.startswith("$argon2id$")
    fields = dict(p.split("=") for p in stored.split("$")[3].split(","))
    assert int(fields["m"]) >= 19 * 1024 and int(fields["t"]) >= 2 and int(fields["p"]) >= 1


def test_long_passwords_are_not_truncated() -> None:
    long = "k" * 900 + "-tail-A"
    stored = accounts.hash_password(long)
    accounts.verify_password(stored, long)
    with pytest.raises(BadCredentials):
        accounts.verify_password(stored, "k" * 900 + "-tail-B")


# --- throttling (SC 39) ------------------------------------------------------------------------


def test_throttle_after_twenty_failures_then_released() -> None:
    counter = None
    now = 1_000_000
    for _ in range(security.THROTTLE_LIMIT - 1):
        counter = security.after_failure(counter, now)
    assert not security.is_throttled(counter, now)
    counter = security.after_failure(counter, now)
    assert security.is_throttled(counter, now + 1)
    # No permanent lockout: the window passes and the counter starts over.
    later = now + security.THROTTLE_WINDOW_S
    assert not security.is_throttled(counter, later)
    assert security.after_failure(counter, later) == (1, later)


# --- sessions (SC 35) --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("created", "seen", "now", "expired"),
    [
        (0, 0, security.IDLE_TIMEOUT_S - 1, False),
        (0, 0, security.IDLE_TIMEOUT_S, True),
        (0, security.ABSOLUTE_TIMEOUT_S - 10, security.ABSOLUTE_TIMEOUT_S - 1, False),
        (0, security.ABSOLUTE_TIMEOUT_S - 10, security.ABSOLUTE_TIMEOUT_S, True),
    ],
)
def test_session_timeouts(created: int, seen: int, now: int, expired: bool) -> None:
    assert security.session_expired(created, seen, now) is expired


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def store(tmp_path: Path) -> Any:
    """A store with one account and one session, both sealed by a real file keystore; the
    console is given a runtime with just what ``load_session`` uses."""
    engines = create_engines(f"sqlite:///{tmp_path / 'c.db'}")
    upgrade(engines)
    settings = KeystoreSettings(tmp_path / "keystore")
    init_keystore(settings)
    keystore = open_keystore(settings)
    now = 1_700_000_000
    with engines.write.begin() as conn:
        store_accounts.insert_account(conn, keystore.seal_row(store_accounts.AccountRow(
            username="alice@example.com", password_hash=accounts.hash_password("x" * 12),
            role="user", status="active", must_change_password=False, totp_secret=None,
            created_at=now, updated_at=now)))
        store_accounts.insert_console_session(conn, keystore.seal_row(
            store_accounts.ConsoleSessionRow(
                sid_hash=security.session_id_hash("sid-1"), username="alice@example.com",
                csrf="c", created_at=now, last_seen_at=now, ip=None)))
    runtime = SimpleNamespace(engines=engines, keystore=keystore, rows=VerifiedRows(keystore),
                              config=load_config(tmp_path, env={}))
    yield runtime, engines, now
    keystore.close()
    engines.dispose()


def _request(sid: str) -> Any:
    return SimpleNamespace(cookies={SESSION_COOKIE: sid}, client=None)


def test_idle_session_is_refused_and_deleted(store: Any) -> None:
    runtime, engines, now = store
    clock = Clock(now + 60)
    console = Console(runtime, clock=clock)
    assert console.load_session(_request("sid-1")) is not None  # touched at now + 60
    clock.now = now + 60 + security.IDLE_TIMEOUT_S - 1
    assert console.load_session(_request("sid-1")) is not None
    clock.now += security.IDLE_TIMEOUT_S
    assert console.load_session(_request("sid-1")) is None
    with engines.read.connect() as conn:
        assert store_accounts.get_console_session(conn, security.session_id_hash("sid-1")) is None


def test_active_session_still_ends_at_the_absolute_timeout(store: Any) -> None:
    runtime, _engines, now = store
    clock = Clock(now)
    console = Console(runtime, clock=clock)
    while clock.now < now + security.ABSOLUTE_TIMEOUT_S - 600:
        clock.now += 600
        assert console.load_session(_request("sid-1")) is not None
    clock.now = now + security.ABSOLUTE_TIMEOUT_S
    assert console.load_session(_request("sid-1")) is None


def test_unknown_or_disabled_account_session_is_refused(store: Any) -> None:
    runtime, engines, now = store
    console = Console(runtime, clock=Clock(now))
    assert console.load_session(_request("not-a-session")) is None
    with engines.write.begin() as conn:
        before = store_accounts.get_account(conn, "alice@example.com")
        assert before is not None
        store_accounts.save_account(conn, before, runtime.keystore.seal_row(
            dataclasses.replace(before, status="disabled", revision=before.revision + 1)))
    assert console.load_session(_request("sid-1")) is None


# --- TOTP (SC 40) --------------------------------------------------------------------------------


def test_totp_rfc6238_vector() -> None:
    # RFC 6238 appendix B, SHA-1, T = 59 s: 94287082 (8 digits); its last 6 digits.
    secret = security.totp_secret_text(b"12345678901234567890")
    assert security.totp_code(secret, 59) == "287082"
    assert security.totp_match(secret, "287082", 59) == security.TotpMatch(step=1)


def test_totp_window_and_format() -> None:
    secret = security.totp_secret_text(os.urandom(20))
    now = 1_700_000_000
    code = security.totp_code(secret, now)
    step = now // security.TOTP_STEP_S
    assert security.totp_match(secret, code, now + 30) == security.TotpMatch(step=step)
    assert security.totp_match(secret, code, now + 90) is None
    for bad in ("", "12345", "1234567", "abcdef", "１２３４５６"):
        assert security.totp_match(secret, bad, now) is None
    assert security.totp_uri(secret, "alice@example.com", "Sceau").startswith("otpauth://totp/")
