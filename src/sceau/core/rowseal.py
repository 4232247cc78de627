"""Seal payloads of the rows that authorization and audit trust (besides key records).

A sealed row carries ``seal = HMAC(seal key, payload)``, computed inside the keystore with
the same seal key as key records (SPEC §5). The payload is the canonical JSON (RFC 8785)
of ``{v, kind, id, fields}``:

- ``kind`` names the table, so a row sealed for one table never verifies in another;
- ``id`` is the row's primary key, so a sealed row cannot be copied under another id;
- ``fields`` are every column a decision reads, the row's ``revision`` included.

Columns that only do bookkeeping (``last_used_at``, a session's ``last_seen_at``) are left
out on purpose: they change often, decide nothing, and leaving them out lets the service
touch them without a keystore operation. This module does no I/O: the keystore computes
and checks the HMAC, the store keeps the bytes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, ClassVar, Protocol

from sceau.core.canonical import canonical_json

ROW_SEAL_VERSION = 1


class SealedKind(StrEnum):
    """The tables whose rows are sealed; the value is written into every payload."""

    APPLICATION = "application"
    APP_KEY = "app_key"
    ACCOUNT = "account"
    CONSOLE_SESSION = "console_session"
    AUDIT_NODE = "audit_node"
    APPROVAL = "approval"
    CSE_ADMIN = "cse_admin"
    DKE_KEY = "dke_key"
    DKE_KEY_VERSION = "dke_key_version"


class SealedRow(Protocol):
    """A row model that can say what its seal covers."""

    @property
    def seal(self) -> bytes | None: ...

    def seal_kind(self) -> SealedKind: ...

    def seal_id(self) -> str: ...

    def seal_fields(self) -> Mapping[str, Any]: ...


def row_seal_payload(kind: SealedKind, row_id: str, fields: Mapping[str, Any]) -> bytes:
    """The bytes the keystore MACs for one row (canonical JSON, so both sides agree)."""
    return canonical_json(
        {"v": ROW_SEAL_VERSION, "kind": str(kind), "id": row_id, "fields": dict(fields)}
    )


def payload_of(row: SealedRow) -> bytes:
    """:func:`row_seal_payload` of a row model."""
    return row_seal_payload(row.seal_kind(), row.seal_id(), row.seal_fields())


class SealedFields:
    """Mixin of a frozen dataclass row model: its seal covers its fields.

    Every field is covered but the row's id (``SEAL_ID``, written as the payload's ``id``,
    joined by ``/`` when the key has several columns), the seal itself and the bookkeeping
    fields (``UNSEALED``). Values are written as JSON: enums as their text, tuples as lists,
    bytes as hex.
    """

    SEAL_KIND: ClassVar[SealedKind]
    SEAL_ID: ClassVar[tuple[str, ...]]
    UNSEALED: ClassVar[tuple[str, ...]] = ()

    def seal_kind(self) -> SealedKind:
        return self.SEAL_KIND

    def seal_id(self) -> str:
        return "/".join(str(getattr(self, name)) for name in self.SEAL_ID)

    def seal_fields(self) -> Mapping[str, Any]:
        return {name: _json_value(getattr(self, name)) for name in _sealed_names(type(self))}


_SEALED_NAMES: dict[type[SealedFields], tuple[str, ...]] = {}


def _sealed_names(model: type[SealedFields]) -> tuple[str, ...]:
    """The fields a seal of ``model`` covers, in declaration order (computed once)."""
    names = _SEALED_NAMES.get(model)
    if names is None:
        left_out = {*model.SEAL_ID, *model.UNSEALED, "seal"}
        fields = dataclasses.fields(model)  # type: ignore[arg-type]  # a dataclass subclass
        names = _SEALED_NAMES[model] = tuple(f.name for f in fields if f.name not in left_out)
    return names


def _json_value(value: Any) -> Any:
    if isinstance(value, StrEnum):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, bytes):
        return value.hex()
    return value
