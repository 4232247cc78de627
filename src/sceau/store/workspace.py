"""Rows and queries of the workspace key services (SPEC §11): CSE resources and admins, DKE keys.

What each table (``schema.py``) is trusted for:

* ``cse_resources`` maps a Google ``resource_name`` to the Sceau key of that resource. It is
  an index, not a decision: every use loads the key record, verifies its seal and checks
  that the sealed ``application`` is ``google-workspace`` and the sealed ``name`` is the
  resource name, so an edited mapping opens nothing (it fails closed).
* ``cse_admins`` (sealed) lists the emails holding the ``cse_admin`` role: a row inserted
  with SQL alone does not verify, so it grants nothing.
* ``dke_keys`` (sealed) binds a DKE key name to the Sceau key record that carries its
  status, windows and allowed principals (its authorizations), so the console, disable,
  destroy and list-accesses work on DKE keys as on any key.
* ``dke_key_versions`` (sealed) lists each key's RSA versions (``keyid``) and their public
  halves; the private halves live in the keystore only.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from sceau.core.rowseal import SealedFields, SealedKind
from sceau.errors import NotFound
from sceau.store.rows import Rows
from sceau.store.schema import cse_admins, cse_resources, dke_key_versions, dke_keys

__all__ = [
    "CseAdminRow",
    "DkeKeyRow",
    "DkeVersionRow",
    "delete_cse_admin",
    "dke_key_by_key_id",
    "dke_versions",
    "get_cse_admin",
    "get_dke_key",
    "get_dke_version",
    "insert_cse_admin",
    "insert_dke_key",
    "insert_dke_version",
    "insert_resource",
    "list_cse_admins",
    "list_dke_keys",
    "resource_key_id",
    "save_dke_version",
]


@dataclass(frozen=True)
class CseAdminRow(SealedFields):
    """One holder of the ``cse_admin`` role (may call the privileged endpoints)."""

    SEAL_KIND = SealedKind.CSE_ADMIN
    SEAL_ID = ("email",)

    email: str
    added_by: str
    added_at: int
    revision: int = 1
    seal: bytes | None = None


@dataclass(frozen=True)
class DkeKeyRow(SealedFields):
    """A DKE key name and the Sceau key record that governs it."""

    SEAL_KIND = SealedKind.DKE_KEY
    SEAL_ID = ("name",)

    name: str
    key_id: bytes
    created_at: int
    revision: int = 1
    seal: bytes | None = None


@dataclass(frozen=True)
class DkeVersionRow(SealedFields):
    """One RSA-2048 version (``keyid``) of a DKE key; ``active`` ones decrypt."""

    SEAL_KIND = SealedKind.DKE_KEY_VERSION
    SEAL_ID = ("name", "keyid")

    name: str
    keyid: str
    n: str  # public modulus, unpadded base64url
    e: int
    status: str  # "active" or "retired"
    created_at: int
    retired_at: int | None
    revision: int = 1
    seal: bytes | None = None


_ADMINS = Rows(cse_admins, CseAdminRow, what="CSE admin")
_DKE_KEYS = Rows(dke_keys, DkeKeyRow, what="DKE key")
_VERSIONS = Rows(dke_key_versions, DkeVersionRow, what="DKE key version")


# --- CSE resources ---------------------------------------------------------------------------


def resource_key_id(conn: sa.Connection, resource_name: str) -> bytes | None:
    """The key id mapped to ``resource_name`` (unverified: the caller checks the record)."""
    key_id = conn.execute(
        sa.select(cse_resources.c.key_id).where(cse_resources.c.resource_name == resource_name)
    ).scalar()
    return bytes(key_id) if key_id is not None else None


def insert_resource(conn: sa.Connection, resource_name: str, key_id: bytes, now: int) -> None:
    conn.execute(cse_resources.insert().values(resource_name=resource_name, key_id=key_id,
                                               created_at=now))


# --- CSE admins --------------------------------------------------------------------------------


def get_cse_admin(conn: sa.Connection, email: str) -> CseAdminRow | None:
    return _ADMINS.get(conn, email)


def list_cse_admins(conn: sa.Connection) -> list[CseAdminRow]:
    return _ADMINS.where(conn, order_by=[cse_admins.c.email])


def insert_cse_admin(conn: sa.Connection, row: CseAdminRow) -> None:
    _ADMINS.insert(conn, row)


def delete_cse_admin(conn: sa.Connection, email: str) -> None:
    """Withdraw the role from ``email``; :class:`NotFound` when it does not hold it."""
    if not conn.execute(cse_admins.delete().where(cse_admins.c.email == email)).rowcount:
        raise NotFound(f"{email} does not hold cse_admin")


# --- DKE keys ---------------------------------------------------------------------------------


def get_dke_key(conn: sa.Connection, name: str) -> DkeKeyRow | None:
    return _DKE_KEYS.get(conn, name)


def dke_key_by_key_id(conn: sa.Connection, key_id: bytes) -> DkeKeyRow | None:
    """The DKE key governed by the Sceau key ``key_id`` (unverified: check its seal)."""
    found = _DKE_KEYS.where(conn, dke_keys.c.key_id == key_id, limit=1)
    return found[0] if found else None


def list_dke_keys(conn: sa.Connection) -> list[DkeKeyRow]:
    return _DKE_KEYS.where(conn, order_by=[dke_keys.c.name])


def insert_dke_key(conn: sa.Connection, row: DkeKeyRow) -> None:
    _DKE_KEYS.insert(conn, row)


def dke_versions(conn: sa.Connection, name: str) -> list[DkeVersionRow]:
    order = [dke_key_versions.c.created_at, dke_key_versions.c.keyid]
    return _VERSIONS.where(conn, dke_key_versions.c.name == name, order_by=order)


def get_dke_version(conn: sa.Connection, name: str, keyid: str) -> DkeVersionRow | None:
    return _VERSIONS.get(conn, name, keyid)


def insert_dke_version(conn: sa.Connection, row: DkeVersionRow) -> None:
    _VERSIONS.insert(conn, row)


def save_dke_version(conn: sa.Connection, before: DkeVersionRow, after: DkeVersionRow) -> None:
    """Write ``after`` over ``before``; ``ConcurrentChange`` if the row moved since."""
    _VERSIONS.save(conn, before, after)
