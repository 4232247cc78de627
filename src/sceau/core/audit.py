"""Audit record building and hashing (SPEC §8, §10 "Audit encoding"). No I/O, no clock.

A record is a flat JSON object with every member of SPEC §8 (``null`` where not
applicable) plus ``type`` and ``kid``. Its ``hash`` is SHA-256 over the RFC 8785 canonical
JSON of all members but ``hash`` and ``sig``; ``sig`` is the audit key's raw signature over
the 32 hash bytes, unpadded base64url. ``prev`` links each record to the previous one of the
same node, so deleting, inserting or reordering records breaks a link that
:mod:`sceau.core.verify` reports. Signing happens outside (the keystore): this module only
takes a ``sign(message) -> raw signature`` callable.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sceau.core.b64 import b64u_encode
from sceau.core.canonical import canonical_json, in_jcs_subset, simple_canonical_json
from sceau.errors import SceauError
from sceau.vocab import Action, Outcome

__all__ = [
    "AUDIT_VERSION",
    "CHECKPOINT_MEMBERS",
    "CHECKPOINT_TYPE",
    "MAX_DETAILS_BYTES",
    "MAX_DETAILS_DEPTH",
    "RECORD_MEMBERS",
    "RECORD_TYPE",
    "SIGNATURE_BYTES",
    "ZERO_HASH",
    "AuditEncodingError",
    "AuditEvent",
    "ChainHead",
    "build_checkpoint",
    "build_record",
    "check_details",
    "checkpoint_digest",
    "format_time_ms",
    "head_of",
    "record_hash",
    "record_line",
]

AUDIT_VERSION = 1
ZERO_HASH = "0" * 64
RECORD_TYPE = "record"
CHECKPOINT_TYPE = "checkpoint"
# Every member of a record, in the order of SPEC §8 (the encoding is canonical JSON, so the
# order here is only for readers).
RECORD_MEMBERS = (
    "type", "v", "seq", "node", "node_seq", "time", "app", "user", "ip", "action", "outcome",
    "reason", "key", "req", "details", "prev", "kid", "hash", "sig",
)  # fmt: skip
CHECKPOINT_MEMBERS = ("type", "v", "node", "node_seq", "hash", "time", "kid", "sig")
# Ed25519 signatures and raw ECDSA P-256 r||s are both 64 bytes (SPEC §10).
SIGNATURE_BYTES = 64
# Caps on `details`: a record is written before every response, so an unbounded member
# would let one request bloat the log; a depth cap keeps every walk of it shallow.
MAX_DETAILS_BYTES = 64 * 1024
MAX_DETAILS_DEPTH = 8
# Member names that would only be used to carry a secret (SPEC §8: no plaintext, key
# material, seed or password in a record). Matched on the lower-cased name with '-' as '_':
# the first set exactly (so `plaintext_bytes`, a size, stays allowed), the second as
# substrings (no innocent name contains them).
_SECRET_NAMES = frozenset(
    {"plaintext", "seed", "key", "data_key", "master_key", "key_material", "pin", "totp", "otp",
     "d", "k", "p", "q", "dp", "dq", "qi"}
)  # fmt: skip
_SECRET_SUBSTRINGS = ("password", "passphrase", "secret", "private_key")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_SAFE_INT = 2**53 - 1


class AuditEncodingError(SceauError):
    """A record or checkpoint cannot be built as asked (a bug in the caller: fail closed)."""


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """What the service knows about one event, before it is chained and signed."""

    time_ms: int
    app: str | None
    user: str | None
    ip: str | None
    action: Action
    outcome: Outcome
    reason: str | None
    key: str | None  # base64url key id
    req: str | None  # the request's jti
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The last record of one node's chain (``node_seq`` 0 and :data:`ZERO_HASH` if none)."""

    node: str
    node_seq: int
    hash: str

    @classmethod
    def genesis(cls, node: str) -> ChainHead:
        """The head of a node that has written nothing yet."""
        return cls(node=node, node_seq=0, hash=ZERO_HASH)


def head_of(record: Mapping[str, Any]) -> ChainHead:
    """The chain head after ``record`` (a record dict as :func:`build_record` returns)."""
    return ChainHead(node=record["node"], node_seq=record["node_seq"], hash=record["hash"])


def format_time_ms(time_ms: object) -> str:
    """RFC 3339 UTC with milliseconds and ``Z``: ``2026-11-28T12:00:00.123Z``.

    Arguments checked at run time are typed ``object`` in this module: compiled (mypyc),
    an ``int`` parameter would accept ``True`` as 1 and refuse ``1.5`` with a TypeError.
    """
    if type(time_ms) is not int or time_ms < 0:
        raise AuditEncodingError("audit time: a non-negative integer of milliseconds")
    global _last_second
    seconds, millis = divmod(time_ms, 1000)
    cached = _last_second
    if cached[0] == seconds:
        return cached[1] + f"{millis:03d}Z"
    try:
        moment = _EPOCH + timedelta(seconds=seconds)
    except OverflowError:
        raise AuditEncodingError("audit time: out of range") from None
    prefix = moment.strftime("%Y-%m-%dT%H:%M:%S.")
    _last_second = (seconds, prefix)  # one tuple swap: safe across threads
    return prefix + f"{millis:03d}Z"


# The formatted second of the last call: records of one batch share their second.
_last_second: tuple[int, str] = (-1, "")


def _canonical(value: Any, what: str) -> bytes:
    try:
        return canonical_json(value)
    except (ValueError, TypeError, UnicodeError) as exc:
        raise AuditEncodingError(f"{what}: not canonical JSON") from exc


def record_hash(record: Mapping[str, Any]) -> str:
    """Lowercase hex SHA-256 of the canonical JSON of every member but ``hash`` and ``sig``."""
    body = {k: v for k, v in record.items() if k not in ("hash", "sig")}
    return hashlib.sha256(_canonical(body, "audit record")).hexdigest()


def checkpoint_digest(checkpoint: Mapping[str, Any]) -> bytes:
    """The 32 bytes a checkpoint signature covers: SHA-256 of all members but ``sig``."""
    body = {k: v for k, v in checkpoint.items() if k != "sig"}
    return hashlib.sha256(_canonical(body, "audit checkpoint")).digest()


@functools.lru_cache(maxsize=1024)  # details use a handful of names, over and over
def _secret_looking(name: str) -> bool:
    folded = name.lower().replace("-", "_")
    return folded in _SECRET_NAMES or any(s in folded for s in _SECRET_SUBSTRINGS)


def _check_value(value: Any, depth: int, path: str) -> None:
    if depth > MAX_DETAILS_DEPTH:
        raise AuditEncodingError(f"audit details: nested deeper than {MAX_DETAILS_DEPTH}")
    if value is None or isinstance(value, bool | int | float | str):
        return
    if isinstance(value, Mapping):
        for name, item in value.items():
            if not isinstance(name, str):
                raise AuditEncodingError(f"audit details: non-string member name under {path}")
            if _secret_looking(name):
                # Name the member, never the value.
                raise AuditEncodingError(f"audit details: member {path}.{name} looks secret")
            _check_value(item, depth + 1, f"{path}.{name}")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_value(item, depth + 1, f"{path}[{index}]")
        return
    # bytes in particular: a record never carries raw bytes (and never key material).
    raise AuditEncodingError(f"audit details: unsupported value type at {path}")


def check_details(details: Mapping[str, Any]) -> None:
    """Refuse ``details`` that could not be recorded safely; return None when fine.

    Checks: a JSON object with string member names, at most :data:`MAX_DETAILS_DEPTH`
    levels of nesting, no member whose name suggests a secret (password, seed, plaintext,
    key, ...), canonicalizable (RFC 8785: no NaN, integers within ±2**53), and at most
    :data:`MAX_DETAILS_BYTES` once encoded.
    """
    if not isinstance(details, Mapping):
        raise AuditEncodingError("audit details: must be an object")
    _check_value(details, 1, "details")
    if len(_canonical(dict(details), "audit details")) > MAX_DETAILS_BYTES:
        raise AuditEncodingError(f"audit details: larger than {MAX_DETAILS_BYTES} bytes")


def _check_hash(value: Any, what: str) -> None:
    if not isinstance(value, str) or _HEX64.fullmatch(value) is None:
        raise AuditEncodingError(f"{what}: 64 lowercase hex characters")


def _check_text(value: Any, what: str, *, nullable: bool) -> None:
    if value is None and nullable:
        return
    if not isinstance(value, str) or (not nullable and not value):
        raise AuditEncodingError(f"audit {what}: a string" + (" or null" if nullable else ""))


def _signature(sign: Callable[[bytes], object], digest: bytes) -> str:
    sig: object = sign(digest)
    if not isinstance(sig, bytes) or len(sig) != SIGNATURE_BYTES:
        raise AuditEncodingError("audit signature: the signer returned no raw 64-byte signature")
    return b64u_encode(sig)


def build_record(
    event: AuditEvent,
    *,
    seq: object,
    head: ChainHead,
    kid: str,
    sign: Callable[[bytes], bytes],
) -> dict[str, Any]:
    """The complete record (``hash`` and ``sig`` included) that follows ``head``.

    ``seq`` is the global order number the store allocated; ``node_seq`` is
    ``head.node_seq + 1`` and ``prev`` is ``head.hash``. ``sign`` receives the 32 raw hash
    bytes and returns the raw signature (Ed25519, or ES256 as raw r||s).
    """
    if type(seq) is not int or seq < 1:
        raise AuditEncodingError("audit seq: a positive integer")
    if type(head.node_seq) is not int or head.node_seq < 0:
        raise AuditEncodingError("audit chain head: node_seq must be >= 0")
    _check_hash(head.hash, "audit chain head hash")
    _check_text(head.node, "node", nullable=False)
    _check_text(kid, "kid", nullable=False)
    if not isinstance(event.action, Action) or not isinstance(event.outcome, Outcome):
        raise AuditEncodingError("audit action/outcome: use the vocab enums")
    for name in ("app", "user", "ip", "reason", "key", "req"):
        _check_text(getattr(event, name), name, nullable=True)
    details = dict(event.details)
    check_details(details)
    record: dict[str, Any] = {
        "type": RECORD_TYPE,
        "v": AUDIT_VERSION,
        "seq": seq,
        "node": head.node,
        "node_seq": head.node_seq + 1,
        "time": format_time_ms(event.time_ms),
        "app": event.app,
        "user": event.user,
        "ip": event.ip,
        "action": str(event.action),
        "outcome": str(event.outcome),
        "reason": None if event.reason is None else str(event.reason),
        "key": event.key,
        "req": event.req,
        "details": details,
        "prev": head.hash,
        "kid": kid,
    }
    # Every other member was just checked to be a string, null or an integer, so the
    # record is in the subset where canonical JSON is a sorted json.dumps when its
    # integers and details are (record_hash, which walks every member, says the same).
    if seq <= _MAX_SAFE_INT and head.node_seq < _MAX_SAFE_INT and in_jcs_subset(details):
        body = simple_canonical_json(record)
    else:
        body = _canonical(record, "audit record")
    digest = hashlib.sha256(body).digest()
    record["hash"] = digest.hex()
    record["sig"] = _signature(sign, digest)
    return record


def record_line(record: Mapping[str, Any]) -> str:
    """The exact stored and exported text of a record or checkpoint: its canonical JSON."""
    return _canonical(dict(record), "audit line").decode("utf-8")


def build_checkpoint(
    *,
    node: str,
    node_seq: object,
    hash: str,  # shadows the builtin on purpose: it is the SPEC member name
    time_ms: int,
    kid: str,
    sign: Callable[[bytes], bytes],
) -> dict[str, Any]:
    """A signed checkpoint ``{type, v, node, node_seq, hash, time, kid, sig}``.

    ``hash`` is the hash of the node's record at ``node_seq``; ``sig`` covers SHA-256 of the
    canonical JSON of every other member, so a verifier holding it knows the chain reached
    at least that far and can see a truncated tail.
    """
    _check_text(node, "node", nullable=False)
    _check_text(kid, "kid", nullable=False)
    if type(node_seq) is not int or node_seq < 1:
        raise AuditEncodingError("audit checkpoint node_seq: a positive integer")
    _check_hash(hash, "audit checkpoint hash")
    checkpoint: dict[str, Any] = {
        "type": CHECKPOINT_TYPE,
        "v": AUDIT_VERSION,
        "node": node,
        "node_seq": node_seq,
        "hash": hash,
        "time": format_time_ms(time_ms),
        "kid": kid,
    }
    checkpoint["sig"] = _signature(sign, checkpoint_digest(checkpoint))
    return checkpoint
