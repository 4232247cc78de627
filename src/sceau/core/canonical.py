"""Canonical JSON (RFC 8785, JCS) for seals, audit hashes and checkpoints."""

from __future__ import annotations

from typing import Any

import rfc8785


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 canonical UTF-8 encoding of ``value``.

    Raises :class:`ValueError` for values JCS cannot represent (NaN, integers beyond
    IEEE-754 double precision, non-string keys).
    """
    try:
        return rfc8785.dumps(value)
    except rfc8785.CanonicalizationError as exc:
        raise ValueError(f"not canonicalizable: {exc}") from exc
