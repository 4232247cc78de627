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
from collections.abc import Callable
from typing import Any

import rfc8785

_MAX_SAFE_INT = 2**53 - 1


def _unencodable(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_MAKE_C_ENCODER: Any = getattr(json.encoder, "c_make_encoder", None)


def compact_json_encoder(*, sort_keys: bool) -> Callable[[Any], bytes]:
    """Compact UTF-8 JSON (``:`` and ``,``, no NaN, strings as JSON text), built once.

    ``json.JSONEncoder.encode`` builds its C encoder on every call; this builds it once
    with the same arguments (no circular check: the values are our own acyclic documents)
    and falls back to the encoder where the interpreter has no C one. The canonical
    subset's writer and the JOSE serializer share it, with and without sorted keys.
    """
    fallback = json.JSONEncoder(ensure_ascii=False, allow_nan=False, sort_keys=sort_keys,
                                separators=(",", ":"), check_circular=False)
    if _MAKE_C_ENCODER is None:
        return lambda value: fallback.encode(value).encode("utf-8")
    c_encode: Any = _MAKE_C_ENCODER(None, _unencodable, json.encoder.encode_basestring, None,
                                    ":", ",", sort_keys, False, False)

    def encode(value: Any) -> bytes:
        if type(value) is dict or type(value) is list:
            return "".join(c_encode(value, 0)).encode("utf-8")
        return fallback.encode(value).encode("utf-8")

    return encode


_SORTED_COMPACT = compact_json_encoder(sort_keys=True)


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
    return _SORTED_COMPACT(value)


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
