"""Key records and their authorization entries: the ``keys`` and ``authorizations`` tables.

A key row holds the fields of :class:`~sceau.core.model.KeyRecord` (derived from the model:
a field added there is a column here) and ``name_lower``, the case-folded name that the name
filter searches; the entries of its authorization list are rows of ``authorizations``.
Loading and saving run on the driver (``driver.py``): every decryption does both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from sceau.core.model import AUTHORIZATION_TYPES, KEY_TYPES, Authorization, KeyRecord
from sceau.errors import ConcurrentUpdate
from sceau.store import driver
from sceau.store.rows import Rows
from sceau.store.schema import authorizations, keys
from sceau.vocab import KeyStatus

__all__ = [
    "KEY_COLUMNS",
    "KEY_SORTS",
    "KeyFilter",
    "count_keys_by_master_version",
    "count_keys_by_status",
    "insert_keys",
    "key_row",
    "keys_due_for_destruction",
    "keys_expired_before",
    "list_keys",
    "load_key",
    "load_keys",
    "overwrite_seed",
    "save_key",
]

_RECORDS = Rows(keys, KeyRecord, skip=("authorizations",), types=KEY_TYPES)
_ENTRIES = Rows(authorizations, Authorization, types=AUTHORIZATION_TYPES)

#: The columns of a key row: the record's fields but its authorizations, and ``name_lower``.
KEY_COLUMNS = (*_RECORDS.columns, "name_lower")
_ENTRY_COLUMNS = ("key_id", *_ENTRIES.columns)

_LOAD = driver.select_in_text("keys", _RECORDS.columns, "key_id")
INSERT_KEY = driver.Statement("insert_key", driver.insert_text("keys", KEY_COLUMNS))
_INSERT_ENTRY = driver.Statement(
    "insert_auth", driver.insert_text("authorizations", _ENTRY_COLUMNS)
)
_LOAD_KEYS = driver.Statement("load_keys", _LOAD)
# One lock order for every node: no deadlock.
_LOAD_KEYS_LOCKED = driver.Statement(
    "load_keys_locked", _LOAD + " ORDER BY key_id FOR UPDATE", sqlite=_LOAD
)
_LOAD_ENTRIES = driver.Statement(
    "load_auths_of", driver.select_in_text("authorizations", _ENTRY_COLUMNS, "key_id")
)
_COUNT_USE = driver.Statement(
    "count_use",
    "UPDATE keys SET decryptions = :decryptions, seal = :seal "
    "WHERE key_id = :key_id AND revision = :revision AND decryptions = :before",
)


def key_row(record: KeyRecord) -> dict[str, Any]:
    """The column values of ``record``'s key row."""
    values = _RECORDS.values(record)
    values["name_lower"] = record.name.lower() if record.name is not None else None
    return values


def _entry_row(key_id: bytes, entry: Authorization) -> dict[str, Any]:
    return {"key_id": key_id, **_ENTRIES.values(entry)}


def _principal(entry: Authorization) -> str:
    return entry.principal


def _records(conn: sa.Connection, rows: Sequence[Any]) -> list[KeyRecord]:
    """Key records from their rows, in row order, with their authorization entries (read
    in one more statement, whatever the number of keys)."""
    if not rows:
        return []
    entries: dict[bytes, list[Authorization]] = {}
    for row in driver.run_in(conn, _LOAD_ENTRIES, [row.key_id for row in rows]).all():
        entries.setdefault(bytes(row.key_id), []).append(_ENTRIES.load(row))
    return [
        _RECORDS.load(
            row, authorizations=tuple(sorted(entries.get(bytes(row.key_id), ()), key=_principal))
        )
        for row in rows
    ]


def insert_keys(conn: sa.Connection, records: Sequence[KeyRecord]) -> None:
    """Insert new key records and their authorizations."""
    if not records:
        return
    driver.run_many(conn, INSERT_KEY, [key_row(r) for r in records])
    driver.run_many(
        conn, _INSERT_ENTRY, [_entry_row(r.key_id, a) for r in records for a in r.authorizations]
    )


def load_key(conn: sa.Connection, key_id: bytes, *, for_update: bool = False) -> KeyRecord | None:
    """One key record with its authorizations; ``for_update`` locks the row (PostgreSQL)."""
    return load_keys(conn, [key_id], for_update=for_update).get(key_id)


def load_keys(
    conn: sa.Connection, key_ids: Sequence[bytes], *, for_update: bool = False
) -> dict[bytes, KeyRecord]:
    """The key records of ``key_ids`` that exist (two statements whatever their number)."""
    wanted = sorted(set(key_ids))
    if not wanted:
        return {}
    rows = driver.run_in(conn, _LOAD_KEYS_LOCKED if for_update else _LOAD_KEYS, wanted).all()
    return {record.key_id: record for record in _records(conn, rows)}


def save_key(conn: sa.Connection, before: KeyRecord, after: KeyRecord) -> None:
    """Write ``after`` over ``before``; :class:`ConcurrentUpdate` if the row changed since it
    was read.

    The revision and the counter of ``before`` are part of the WHERE clause, so a concurrent
    writer on another node cannot be silently overwritten (no lost update).
    """
    result: driver.Result | sa.CursorResult[Any]
    if _only_counted(before, after):
        # The frequent case (every decrypt): only the counter and the seal change.
        result = driver.run(conn, _COUNT_USE, {
            "key_id": before.key_id, "revision": before.revision, "before": before.decryptions,
            "decryptions": after.decryptions, "seal": after.seal,
        })
    else:
        values = key_row(after)
        del values["key_id"]
        result = conn.execute(
            keys.update()
            .where(keys.c.key_id == before.key_id)
            .where(keys.c.revision == before.revision)
            .where(keys.c.decryptions == before.decryptions)
            .values(**values)
        )
    if result.rowcount != 1:
        raise ConcurrentUpdate(f"key {before.key_id.hex()} changed since it was read")
    if before.authorizations != after.authorizations:
        conn.execute(authorizations.delete().where(authorizations.c.key_id == before.key_id))
        rows = [_entry_row(after.key_id, a) for a in after.authorizations]
        if rows:
            conn.execute(authorizations.insert(), rows)


def _only_counted(before: KeyRecord, after: KeyRecord) -> bool:
    return dataclasses.replace(before, decryptions=after.decryptions, seal=after.seal) == after


def overwrite_seed(conn: sa.Connection, key_id: bytes) -> None:
    """First step of crypto-shredding: replace the seed bytes in place with zeros."""
    conn.execute(keys.update().where(keys.c.key_id == key_id).values(seed=bytes(32)))


# --- lists ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyFilter:
    """Filters of ``list-keys`` and the console key table."""

    user: str | None = None  # restrict to keys this user owns / is authorized on; None = all
    user_domain_pattern: str | None = None
    role: str = "any"
    status: str | None = None
    created_from: int | None = None
    created_to: int | None = None
    name: str | None = None
    application: str | None = None
    tag: str | None = None
    now: int = 0


#: The orders a key list can take (the console's sortable columns), each tied by key_id.
KEY_SORTS = {"created": keys.c.created_at, "expires": keys.c.expires_at}


def list_keys(
    conn: sa.Connection,
    flt: KeyFilter,
    *,
    limit: int,
    after: tuple[int, bytes] | None,
    sort: str = "created",
    descending: bool = True,
    visible_to: tuple[str, str | None] | None = None,
) -> list[KeyRecord]:
    """One page of keys, keyset-paginated on (sort column, key_id); newest first by default.

    ``after`` is the (sort value, key_id) of the previous page's last key. ``flt.user`` is
    the person filter; ``visible_to`` (identity, ``*@domain``) restricts the page to the
    keys that identity owns or is authorized on (the ``any`` role), whatever the person
    filter says.
    """
    column = KEY_SORTS[sort]
    conds = _conditions(flt)
    if visible_to is not None:
        ident, pattern = visible_to
        conds += _conditions(KeyFilter(user=ident, user_domain_pattern=pattern, role="any"))
    if after is not None:
        value, kid = after
        if descending:
            conds.append(sa.or_(column < value, sa.and_(column == value, keys.c.key_id < kid)))
        else:
            conds.append(sa.or_(column > value, sa.and_(column == value, keys.c.key_id > kid)))
    order = (column.desc(), keys.c.key_id.desc()) if descending else (column, keys.c.key_id)
    rows = conn.execute(sa.select(keys).where(*conds).order_by(*order).limit(limit)).all()
    return _records(conn, rows)


def _conditions(flt: KeyFilter) -> list[Any]:
    """WHERE conditions of a key filter."""
    conds: list[Any] = []
    if flt.user is not None:
        principals = [flt.user] + ([flt.user_domain_pattern] if flt.user_domain_pattern else [])
        # Key ids from the indexes (owner, principal) rather than an OR over every row: a
        # person owns or is named on a few keys among many.
        named = sa.select(authorizations.c.key_id).where(
            authorizations.c.principal.in_(principals)
        )
        owned = sa.select(keys.c.key_id).where(keys.c.owner == flt.user)
        if flt.role == "owner":
            conds.append(keys.c.owner == flt.user)
        elif flt.role == "recipient":
            conds += [keys.c.owner != flt.user, keys.c.key_id.in_(named)]
        else:
            conds.append(keys.c.key_id.in_(sa.union(owned, named)))
    if flt.status == "expired":
        conds += [keys.c.status == str(KeyStatus.ACTIVE), keys.c.expires_at <= flt.now]
    elif flt.status == "active":
        conds += [keys.c.status == str(KeyStatus.ACTIVE), keys.c.expires_at > flt.now]
    elif flt.status is not None:
        conds.append(keys.c.status == flt.status)
    if flt.created_from is not None:
        conds.append(keys.c.created_at >= flt.created_from)
    if flt.created_to is not None:
        conds.append(keys.c.created_at <= flt.created_to)
    if flt.name:
        escaped = flt.name.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conds.append(keys.c.name_lower.like(f"%{escaped}%", escape="\\"))
    if flt.application is not None:
        conds.append(keys.c.application == flt.application)
    if flt.tag is not None:
        conds.append(keys.c.tag == flt.tag)
    return conds


# --- maintenance and counts --------------------------------------------------------------------


def keys_due_for_destruction(conn: sa.Connection, now: int, limit: int) -> list[bytes]:
    rows = conn.execute(
        sa.select(keys.c.key_id)
        .where(keys.c.status == str(KeyStatus.PENDING_DESTRUCTION), keys.c.destroy_at <= now)
        .limit(limit)
    ).all()
    return [bytes(r.key_id) for r in rows]


def keys_expired_before(conn: sa.Connection, cutoff: int, limit: int) -> list[bytes]:
    rows = conn.execute(
        sa.select(keys.c.key_id)
        .where(keys.c.status != str(KeyStatus.DESTROYED), keys.c.expires_at <= cutoff)
        .order_by(keys.c.expires_at)
        .limit(limit)
    ).all()
    return [bytes(r.key_id) for r in rows]


def count_keys_by_master_version(conn: sa.Connection) -> dict[int, int]:
    rows = conn.execute(
        sa.select(keys.c.master_version, sa.func.count())
        .where(keys.c.status != str(KeyStatus.DESTROYED))
        .group_by(keys.c.master_version)
    ).all()
    return {int(v): int(n) for v, n in rows}


def count_keys_by_status(conn: sa.Connection, now: int) -> dict[str, int]:
    rows = conn.execute(
        sa.select(
            keys.c.status,
            sa.case((keys.c.expires_at <= now, 1), else_=0).label("expired"),
            sa.func.count(),
        ).group_by(keys.c.status, "expired")
    ).all()
    out: dict[str, int] = {}
    for status, expired, n in rows:
        label = "expired" if status == str(KeyStatus.ACTIVE) and expired else status
        out[label] = out.get(label, 0) + int(n)
    return out
