"""Console account passwords: argon2id above the OWASP minimum (SECURITY-CASES 38)."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# m = 19 MiB, t = 2, p = 1 is OWASP's floor; we go above it on memory.
_HASHER = PasswordHasher(time_cost=2, memory_cost=32 * 1024, parallelism=1)
# A hash of nothing in particular: verifying against it for unknown users keeps the timing of
# "no such account" and "wrong password" the same.
_DUMMY = _HASHER.hash("sceau-dummy-password-for-timing")


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    """True iff ``password`` matches ``stored``; always costs one argon2 verification."""
    try:
        return _HASHER.verify(stored or _DUMMY, password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
