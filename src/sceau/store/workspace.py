"""Tables and rows of the workspace key services (SPEC §11): CSE resources and admins, DKE keys.

What each table is trusted for:

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

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from sceau.core.rowseal import SealedKind
from sceau.store.schema import metadata

__all__ = [
    "CseAdminRow",
    "DkeKeyRow",
    "DkeVersionRow",
    "cse_admins",
    "cse_resources",
    "dke_key_versions",
    "dke_keys",
]

cse_resources = sa.Table(
    "cse_resources",
    metadata,
    sa.Column("resource_name", sa.String(512), primary_key=True),
    sa.Column("key_id", sa.LargeBinary(16), sa.ForeignKey("keys.key_id"), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

cse_admins = sa.Table(
    "cse_admins",
    metadata,
    sa.Column("email", sa.String(320), primary_key=True),
    sa.Column("added_by", sa.String(320), nullable=False),
    sa.Column("added_at", sa.BigInteger, nullable=False),
    sa.Column("revision", sa.BigInteger, nullable=False, server_default="1"),
    sa.Column("seal", sa.LargeBinary(64), nullable=True),
)

dke_keys = sa.Table(
    "dke_keys",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("key_id", sa.LargeBinary(16), sa.ForeignKey("keys.key_id"), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("revision", sa.BigInteger, nullable=False, server_default="1"),
    sa.Column("seal", sa.LargeBinary(64), nullable=True),
)

dke_key_versions = sa.Table(
    "dke_key_versions",
    metadata,
    sa.Column("name", sa.String(128), sa.ForeignKey("dke_keys.name"), primary_key=True),
    sa.Column("keyid", sa.String(64), primary_key=True),
    sa.Column("n", sa.Text, nullable=False),
    sa.Column("e", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("retired_at", sa.BigInteger, nullable=True),
    sa.Column("revision", sa.BigInteger, nullable=False, server_default="1"),
    sa.Column("seal", sa.LargeBinary(64), nullable=True),
)


def _seal(value: Any) -> bytes | None:
    return bytes(value) if value is not None else None


# --- CSE resources ---------------------------------------------------------------------------


def resource_key_id(conn: sa.Connection, resource_name: str) -> bytes | None:
    """The key id mapped to ``resource_name`` (unverified: the caller checks the record)."""
    row = conn.execute(
        sa.select(cse_resources.c.key_id).where(cse_resources.c.resource_name == resource_name)
    ).first()
    return bytes(row.key_id) if row is not None else None


def insert_resource(conn: sa.Connection, resource_name: str, key_id: bytes, now: int) -> None:
    conn.execute(cse_resources.insert().values(resource_name=resource_name, key_id=key_id,
                                               created_at=now))


# --- CSE admins --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CseAdminRow:
    """One holder of the ``cse_admin`` role (may call the privileged endpoints)."""

    email: str
    added_by: str
    added_at: int
    revision: int = 1
    seal: bytes | None = None

    def seal_kind(self) -> SealedKind:
        return SealedKind.CSE_ADMIN

    def seal_id(self) -> str:
        return self.email

    def seal_fields(self) -> Mapping[str, Any]:
        return {"added_by": self.added_by, "added_at": self.added_at, "revision": self.revision}


def _admin(row: Any) -> CseAdminRow:
    return CseAdminRow(email=row.email, added_by=row.added_by, added_at=int(row.added_at),
                       revision=int(row.revision), seal=_seal(row.seal))


def get_cse_admin(conn: sa.Connection, email: str) -> CseAdminRow | None:
    row = conn.execute(sa.select(cse_admins).where(cse_admins.c.email == email)).first()
    return _admin(row) if row is not None else None


def list_cse_admins(conn: sa.Connection) -> list[CseAdminRow]:
    rows = conn.execute(sa.select(cse_admins).order_by(cse_admins.c.email)).all()
    return [_admin(r) for r in rows]


def insert_cse_admin(conn: sa.Connection, row: CseAdminRow) -> None:
    conn.execute(cse_admins.insert().values(email=row.email, added_by=row.added_by,
                                            added_at=row.added_at, revision=row.revision,
                                            seal=row.seal))


def delete_cse_admin(conn: sa.Connection, email: str) -> bool:
    return bool(conn.execute(cse_admins.delete().where(cse_admins.c.email == email)).rowcount)


# --- DKE keys ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DkeKeyRow:
    """A DKE key name and the Sceau key record that governs it."""

    name: str
    key_id: bytes
    created_at: int
    revision: int = 1
    seal: bytes | None = None

    def seal_kind(self) -> SealedKind:
        return SealedKind.DKE_KEY

    def seal_id(self) -> str:
        return self.name

    def seal_fields(self) -> Mapping[str, Any]:
        return {"key_id": self.key_id.hex(), "created_at": self.created_at,
                "revision": self.revision}


@dataclass(frozen=True)
class DkeVersionRow:
    """One RSA-2048 version (``keyid``) of a DKE key; ``active`` ones decrypt."""

    name: str
    keyid: str
    n: str  # public modulus, unpadded base64url
    e: int
    status: str  # "active" or "retired"
    created_at: int
    retired_at: int | None
    revision: int = 1
    seal: bytes | None = None

    def seal_kind(self) -> SealedKind:
        return SealedKind.DKE_KEY_VERSION

    def seal_id(self) -> str:
        return f"{self.name}/{self.keyid}"

    def seal_fields(self) -> Mapping[str, Any]:
        return {"n": self.n, "e": self.e, "status": self.status, "created_at": self.created_at,
                "retired_at": self.retired_at, "revision": self.revision}


def _dke_key(row: Any) -> DkeKeyRow:
    return DkeKeyRow(name=row.name, key_id=bytes(row.key_id), created_at=int(row.created_at),
                     revision=int(row.revision), seal=_seal(row.seal))


def _version(row: Any) -> DkeVersionRow:
    return DkeVersionRow(name=row.name, keyid=row.keyid, n=row.n, e=int(row.e),
                         status=row.status, created_at=int(row.created_at),
                         retired_at=row.retired_at, revision=int(row.revision),
                         seal=_seal(row.seal))


def get_dke_key(conn: sa.Connection, name: str) -> DkeKeyRow | None:
    row = conn.execute(sa.select(dke_keys).where(dke_keys.c.name == name)).first()
    return _dke_key(row) if row is not None else None


def dke_key_by_key_id(conn: sa.Connection, key_id: bytes) -> DkeKeyRow | None:
    """The DKE key governed by the Sceau key ``key_id`` (unverified: check its seal)."""
    row = conn.execute(sa.select(dke_keys).where(dke_keys.c.key_id == key_id)).first()
    return _dke_key(row) if row is not None else None


def list_dke_keys(conn: sa.Connection) -> list[DkeKeyRow]:
    return [_dke_key(r) for r in conn.execute(sa.select(dke_keys).order_by(dke_keys.c.name))]


def insert_dke_key(conn: sa.Connection, row: DkeKeyRow) -> None:
    conn.execute(dke_keys.insert().values(name=row.name, key_id=row.key_id,
                                          created_at=row.created_at, revision=row.revision,
                                          seal=row.seal))


def dke_versions(conn: sa.Connection, name: str) -> list[DkeVersionRow]:
    rows = conn.execute(sa.select(dke_key_versions).where(dke_key_versions.c.name == name)
                        .order_by(dke_key_versions.c.created_at, dke_key_versions.c.keyid))
    return [_version(r) for r in rows]


def get_dke_version(conn: sa.Connection, name: str, keyid: str) -> DkeVersionRow | None:
    row = conn.execute(sa.select(dke_key_versions).where(dke_key_versions.c.name == name)
                       .where(dke_key_versions.c.keyid == keyid)).first()
    return _version(row) if row is not None else None


def _version_values(row: DkeVersionRow) -> dict[str, Any]:
    return {"n": row.n, "e": row.e, "status": row.status, "created_at": row.created_at,
            "retired_at": row.retired_at, "revision": row.revision, "seal": row.seal}


def insert_dke_version(conn: sa.Connection, row: DkeVersionRow) -> None:
    conn.execute(dke_key_versions.insert().values(name=row.name, keyid=row.keyid,
                                                  **_version_values(row)))


def save_dke_version(conn: sa.Connection, before: DkeVersionRow, after: DkeVersionRow) -> None:
    """Write ``after`` over ``before``; ``ConcurrentChange`` if the row moved since."""
    # Imported here: sceau.store.applications imports the schema, which imports this module.
    from sceau.store.applications import save_revision

    key = sa.and_(dke_key_versions.c.name == before.name,
                  dke_key_versions.c.keyid == before.keyid)
    save_revision(conn, dke_key_versions, key, before.revision, _version_values(after),
                  f"DKE key version {before.name}/{before.keyid}")
