"""Canonical JSON (RFC 8785, JCS) for seals, audit hashes and checkpoints.

Our own documents (seal payloads, audit records, checkpoints) hold only strings, integers,
booleans, nulls, lists and objects with ASCII member names. For those, JCS output equals
``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)``: both escape
exactly ``"``, ``\\``, and the control characters (as ``\\b \\t \\n \\f \\r`` or lowercase
``\\u00xx``), write integers in plain decimal, and, with ASCII keys, sorting by code point is
sorting by UTF-16 code unit. Anything outside that subset (floats, non-ASCII member names,
integers beyond 2^53) goes through the reference ``rfc8785`` implementation.
"""

from __future__ import annotations

import json
from typing import Any

import rfc8785

_MAX_SAFE_INT = 2**53 - 1
_ENCODER = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":"), check_circular=False
)


def _simple(value: Any, depth: int = 0) -> bool:
    """True when ``value`` is in the subset where JCS equals sorted compact json.dumps."""
    if depth > 64:
        return False
    kind = type(value)
    if kind is str or value is None or kind is bool:
        return True
    if kind is int:
        return bool(-_MAX_SAFE_INT <= value <= _MAX_SAFE_INT)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not key.isascii() or not _simple(item, depth + 1):
                return False
        return True
    if kind is list or kind is tuple:
        return all(_simple(item, depth + 1) for item in value)
    return False


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 canonical UTF-8 encoding of ``value``.

    Raises :class:`ValueError` for values JCS cannot represent (NaN, integers beyond
    IEEE-754 double precision, non-string keys).
    """
    if _simple(value):
        return _ENCODER.encode(value).encode("utf-8")
    try:
        return rfc8785.dumps(value)
    except rfc8785.CanonicalizationError as exc:
        raise ValueError(f"not canonicalizable: {exc}") from exc
