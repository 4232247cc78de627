"""Console security rules as small pure functions: passwords, throttling, sessions, TOTP.

Nothing here reads the clock or the store: times come in as arguments, so the rules are
tested with plain numbers (SECURITY-CASES 35, 38, 39, 40).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from enum import StrEnum

from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor import InvalidToken
from cryptography.hazmat.primitives.twofactor.totp import TOTP

# --- passwords -------------------------------------------------------------------------------

MIN_PASSWORD = 12
# argon2 hashes any length without truncation; the cap only bounds the work per request.
MAX_PASSWORD = 1024

# The most common passwords of public breach corpora that pass a 12-character minimum, plus
# the product's own name. A short list on purpose: length does most of the work.
COMMON_PASSWORDS = frozenset(
    {
        "123456789012", "1234567890123", "12345678901234", "123456789123",
        "111111111111", "000000000000", "123123123123", "qwertyuiopas",
        "qwertyuiop123", "qwerty123456", "1q2w3e4r5t6y", "1qaz2wsx3edc",
        "zaq12wsxcde3", "asdfghjkl123", "password1234", "password12345",
        "password123!", "passwordpassword", "p@ssw0rd1234", "passw0rd1234",
        "iloveyou1234", "welcome12345", "welcome123456", "letmein12345",
        "administrator", "administrator1", "admin1234567", "admin123456789",
        "changeme1234", "changemenow!", "football1234", "baseball1234",
        "superman1234", "sunshine1234", "princess1234", "trustno11234",
        "abcdefghijkl", "abcdefg12345", "abc123456789", "monkey123456",
        "dragon123456", "master123456", "qwertyqwerty", "azertyuiop12",
        "motdepasse123", "motdepasse1234", "sceausceau12", "sceaupassword",
        "correcthorsebatterystaple", "passwordpassword1", "1234567890qwerty",
        "qwerty1234567890", "aaaaaaaaaaaa", "zxcvbnm12345", "starwars1234",
    }
)


class PasswordRefused(ValueError):
    """A new password does not meet the policy; the message says why (no secret in it)."""


def check_new_password(password: str, *, username: str, current: str | None = None) -> None:
    """Return None when ``password`` may be set, else raise :class:`PasswordRefused`."""
    if len(password) < MIN_PASSWORD:
        raise PasswordRefused(f"at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise PasswordRefused(f"at most {MAX_PASSWORD} characters")
    folded = password.casefold()
    if folded in COMMON_PASSWORDS or len(set(password)) < 4:
        raise PasswordRefused("this password is too common")
    if username.casefold() in folded:
        raise PasswordRefused("must not contain the account name")
    if current is not None and hmac.compare_digest(password.encode(), current.encode()):
        raise PasswordRefused("must differ from the current password")


# --- login throttling --------------------------------------------------------------------------

THROTTLE_LIMIT = 20
THROTTLE_WINDOW_S = 15 * 60


class ThrottleScope(StrEnum):
    """What a failure counter counts: one account name, or one client address."""

    ACCOUNT = "account"
    ADDRESS = "address"


def is_throttled(counter: tuple[int, int] | None, now: int) -> bool:
    """True while ``THROTTLE_LIMIT`` failures fell in the current window (never forever)."""
    if counter is None:
        return False
    failures, window_start = counter
    return failures >= THROTTLE_LIMIT and now - window_start < THROTTLE_WINDOW_S


def after_failure(counter: tuple[int, int] | None, now: int) -> tuple[int, int]:
    """The counter after one more failure: a new window once the old one has passed."""
    if counter is None or now - counter[1] >= THROTTLE_WINDOW_S:
        return 1, now
    return counter[0] + 1, counter[1]


# --- sessions ------------------------------------------------------------------------------------

IDLE_TIMEOUT_S = 30 * 60
ABSOLUTE_TIMEOUT_S = 12 * 3600
TOUCH_EVERY_S = 60


def session_id_hash(session_id: str) -> str:
    """What the store keeps of a session id (SHA-256, hex)."""
    return hashlib.sha256(session_id.encode("ascii", "replace")).hexdigest()


def session_expired(
    created_at: int,
    last_seen_at: int,
    now: int,
    *,
    idle: int = IDLE_TIMEOUT_S,
    absolute: int = ABSOLUTE_TIMEOUT_S,
) -> bool:
    """True once the session sat idle for ``idle`` seconds or lived ``absolute`` seconds."""
    return now - last_seen_at >= idle or now - created_at >= absolute


# --- TOTP (RFC 6238) ----------------------------------------------------------------------------

TOTP_STEP_S = 30
TOTP_DIGITS = 6
TOTP_SECRET_BYTES = 20


def totp_secret_text(secret: bytes) -> str:
    """Base32 without padding, as authenticator apps expect it."""
    return base64.b32encode(secret).decode("ascii").rstrip("=")


def totp_secret_bytes(text: str) -> bytes:
    cleaned = text.strip().replace(" ", "").upper()
    return base64.b32decode(cleaned + "=" * (-len(cleaned) % 8))


def _totp(secret: bytes) -> TOTP:
    # SHA-1 is what RFC 6238 authenticator apps implement; HMAC-SHA1 is not broken by
    # SHA-1's collision attacks.
    return TOTP(secret, TOTP_DIGITS, SHA1(), TOTP_STEP_S, enforce_key_length=False)  # noqa: S303


@dataclass(frozen=True)
class TotpMatch:
    """A code that verified, and the time step it belongs to."""

    step: int


def totp_match(secret_text: str, code: str, now: float) -> TotpMatch | None:
    """The step of ``code`` when it is valid now or one step either side, else None.

    Single use is the caller's part: it must refuse a step not above the last one accepted.
    """
    code = code.strip()
    if len(code) != TOTP_DIGITS or not code.isascii() or not code.isdigit():
        return None
    try:
        secret = totp_secret_bytes(secret_text)
    except ValueError:
        return None
    totp = _totp(secret)
    step = int(now) // TOTP_STEP_S
    for candidate in (step, step - 1, step + 1):
        try:
            totp.verify(code.encode("ascii"), candidate * TOTP_STEP_S)
        except InvalidToken:
            continue
        return TotpMatch(step=candidate)
    return None


def totp_code(secret_text: str, now: float) -> str:
    """The current code (tests and the enrolment page's self-check)."""
    return _totp(totp_secret_bytes(secret_text)).generate(int(now)).decode("ascii")


def totp_uri(secret_text: str, account: str, issuer: str) -> str:
    """The ``otpauth://`` URI to type or paste into an authenticator app."""
    return _totp(totp_secret_bytes(secret_text)).get_provisioning_uri(account, issuer)
