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
import json.encoder
from typing import Any

import rfc8785

_MAX_SAFE_INT = 2**53 - 1
_ENCODER = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":"), check_circular=False
)


def _unencodable(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# The C encoder JSONEncoder.encode would build on every call, built once (same arguments:
# no circular check, ASCII-or-not strings as JSON text, ':' and ',', sorted keys, no NaN).
# Where the interpreter has no C encoder, JSONEncoder.encode is used.
_MAKE_C_ENCODER: Any = getattr(json.encoder, "c_make_encoder", None)
_C_ENCODE: Any = (
    _MAKE_C_ENCODER(
        None, _unencodable, json.encoder.encode_basestring, None, ":", ",", True, False, False
    )
    if _MAKE_C_ENCODER is not None
    else None
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
        items: Any = value.values()
        for key in value:
            if type(key) is not str or not key.isascii():
                return False
    elif kind is list or kind is tuple:
        items = value
    else:
        return False
    # Leaves are checked inline (no call per string or integer): records and seal payloads
    # are mostly flat, so this loop is where the time goes.
    for item in items:
        leaf = type(item)
        if leaf is str or item is None or leaf is bool:
            continue
        if leaf is int:
            if not -_MAX_SAFE_INT <= item <= _MAX_SAFE_INT:
                return False
            continue
        if not _simple(item, depth + 1):
            return False
    return True


def in_jcs_subset(value: Any) -> bool:
    """True when :func:`canonical_json` of ``value`` is the sorted compact ``json.dumps``:
    strings, safe integers, booleans, nulls, lists and objects with ASCII member names."""
    return _simple(value)


def simple_canonical_json(value: Any) -> bytes:
    """:func:`canonical_json` of a value the caller proved in the subset (:func:`in_jcs_subset`
    or by construction), without walking it again."""
    if _C_ENCODE is not None and (type(value) is dict or type(value) is list):
        return "".join(_C_ENCODE(value, 0)).encode("utf-8")
    return _ENCODER.encode(value).encode("utf-8")


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 canonical UTF-8 encoding of ``value``.

    Raises :class:`ValueError` for values JCS cannot represent (NaN, integers beyond
    IEEE-754 double precision, non-string keys).
    """
    if _simple(value):
        return simple_canonical_json(value)
    try:
        return rfc8785.dumps(value)
    except rfc8785.CanonicalizationError as exc:
        raise ValueError(f"not canonicalizable: {exc}") from exc
