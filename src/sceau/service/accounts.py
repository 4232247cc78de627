"""Console account passwords: argon2id above the OWASP minimum (SECURITY-CASES 38)."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from sceau.errors import BadCredentials

# m = 19 MiB, t = 2, p = 1 is OWASP's floor; we go above it on memory.
_HASHER = PasswordHasher(time_cost=2, memory_cost=32 * 1024, parallelism=1)
# A hash of nothing in particular: verifying against it for unknown users keeps the timing of
# "no such account" and "wrong password" the same.
_DUMMY = _HASHER.hash("sceau-dummy-password-for-timing")


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(stored: str | None, password: str) -> None:
    """Raise :class:`BadCredentials` unless ``password`` matches ``stored`` (None: no
    account). Always costs one argon2 verification, whichever the outcome."""
    try:
        _HASHER.verify(stored or _DUMMY, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        raise BadCredentials("wrong password") from None
    if stored is None:
        raise BadCredentials("no such account")
