"""Queries. Every function takes a live connection; transactions belong to the caller."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from sceau.core.model import Authorization, KeyRecord, Rules
from sceau.store import hot
from sceau.store.schema import (
    audit_checkpoints,
    audit_records,
    authorizations,
    keys,
    node_leases,
    replay,
    service_meta,
)
from sceau.vocab import AuthorizationStatus, KeyStatus, Right

# --- keys -------------------------------------------------------------------------------------


def _rules_from_json(text: str) -> Rules:
    data = json.loads(text)
    nets = data.get("allowed_networks")
    return Rules(
        allowed_networks=tuple(nets) if nets is not None else None,
        max_decryptions=data.get("max_decryptions"),
    )


def _auth_from_row(row: Any) -> Authorization:
    return Authorization(
        principal=row.principal,
        rights=frozenset(Right(r) for r in row.rights.split(",") if r),
        status=AuthorizationStatus(row.status),
        not_before=row.not_before,
        not_after=row.not_after,
        added_by=row.added_by,
        added_at=row.added_at,
    )


def _key_from_row(row: Any, auths: Sequence[Authorization]) -> KeyRecord:
    return KeyRecord(
        key_id=bytes(row.key_id),
        seed=bytes(row.seed) if row.seed is not None else None,
        master_version=row.master_version,
        owner=row.owner,
        application=row.application,
        name=row.name,
        tag=row.tag,
        created_at=row.created_at,
        expires_at=row.expires_at,
        not_before=row.not_before,
        not_after=row.not_after,
        status=KeyStatus(row.status),
        destroy_at=row.destroy_at,
        destroyed_at=row.destroyed_at,
        authorizations=tuple(sorted(auths, key=lambda a: a.principal)),
        rules=_rules_from_json(row.rules),
        decryptions=row.decryptions,
        revision=row.revision,
        seal=bytes(row.seal),
    )


def _key_values(record: KeyRecord) -> dict[str, Any]:
    return {
        "seed": record.seed,
        "master_version": record.master_version,
        "owner": record.owner,
        "application": record.application,
        "name": record.name,
        "name_lower": record.name.lower() if record.name is not None else None,
        "tag": record.tag,
        "created_at": record.created_at,
        "expires_at": record.expires_at,
        "not_before": record.not_before,
        "not_after": record.not_after,
        "status": str(record.status),
        "destroy_at": record.destroy_at,
        "destroyed_at": record.destroyed_at,
        "rules": json.dumps(record.rules.to_json(), sort_keys=True),
        "decryptions": record.decryptions,
        "revision": record.revision,
        "seal": record.seal,
    }


def _auth_values(key_id: bytes, auth: Authorization) -> dict[str, Any]:
    return {
        "key_id": key_id,
        "principal": auth.principal,
        "rights": ",".join(sorted(str(r) for r in auth.rights)),
        "status": str(auth.status),
        "not_before": auth.not_before,
        "not_after": auth.not_after,
        "added_by": auth.added_by,
        "added_at": auth.added_at,
    }


def insert_keys(conn: sa.Connection, records: Sequence[KeyRecord]) -> None:
    """Insert new key records and their authorizations."""
    if not records:
        return
    hot.run_many(conn, "insert_key", [{"key_id": r.key_id, **_key_values(r)} for r in records])
    hot.run_many(
        conn, "insert_auth", [_auth_values(r.key_id, a) for r in records for a in r.authorizations]
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
    rows = hot.run_in(conn, "load_keys_locked" if for_update else "load_keys", wanted).all()
    if not rows:
        return {}
    records = _with_authorizations(rows, hot.run_in(conn, "load_auths_of", wanted).all())
    return {record.key_id: record for record in records}


def _with_authorizations(rows: Sequence[Any], auth_rows: Iterable[Any]) -> list[KeyRecord]:
    """Key records from their rows and the authorization rows of those keys, in row order."""
    auths: dict[bytes, list[Authorization]] = {}
    for auth_row in auth_rows:
        auths.setdefault(bytes(auth_row.key_id), []).append(_auth_from_row(auth_row))
    return [_key_from_row(row, auths.get(bytes(row.key_id), ())) for row in rows]


def save_key(conn: sa.Connection, before: KeyRecord, after: KeyRecord) -> None:
    """Write ``after`` over ``before``; fails if the row changed since it was read.

    The revision and seal of ``before`` are part of the WHERE clause, so a concurrent
    writer on another node cannot be silently overwritten (no lost update).
    """
    result: hot.Result | sa.CursorResult[Any]
    if _only_counted(before, after):
        # The hot case (every decrypt): only the counter and the seal change.
        result = hot.run(conn, "count_use", {
            "key_id": before.key_id, "revision": before.revision, "before": before.decryptions,
            "decryptions": after.decryptions, "seal": after.seal,
        })
    else:
        result = conn.execute(
            keys.update()
            .where(keys.c.key_id == before.key_id)
            .where(keys.c.revision == before.revision)
            .where(keys.c.decryptions == before.decryptions)
            .values(**_key_values(after))
        )
    if result.rowcount != 1:
        raise ConcurrentUpdate(before.key_id)
    if before.authorizations != after.authorizations:
        conn.execute(authorizations.delete().where(authorizations.c.key_id == before.key_id))
        rows = [_auth_values(after.key_id, a) for a in after.authorizations]
        if rows:
            conn.execute(authorizations.insert(), rows)


def _only_counted(before: KeyRecord, after: KeyRecord) -> bool:
    return dataclasses.replace(before, decryptions=after.decryptions, seal=after.seal) == after


class ConcurrentUpdate(Exception):
    """The key row changed between read and write; the caller retries or fails."""

    def __init__(self, key_id: bytes) -> None:
        super().__init__(f"concurrent update of key {key_id.hex()}")


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


def list_keys(
    conn: sa.Connection, flt: KeyFilter, *, limit: int, after: tuple[int, bytes] | None
) -> list[KeyRecord]:
    """Keys newest first; ``after`` is the (created_at, key_id) of the previous page's last."""
    query = sa.select(keys)
    conds = key_filter_conditions(flt)
    if after is not None:
        created, kid = after
        conds.append(
            sa.or_(
                keys.c.created_at < created,
                sa.and_(keys.c.created_at == created, keys.c.key_id < kid),
            )
        )
    query = query.where(*conds).order_by(keys.c.created_at.desc(), keys.c.key_id.desc())
    rows = conn.execute(query.limit(limit)).all()
    if not rows:
        return []
    ids = [r.key_id for r in rows]
    return _with_authorizations(
        rows, conn.execute(sa.select(authorizations).where(authorizations.c.key_id.in_(ids)))
    )


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


# --- replay cache ------------------------------------------------------------------------------


def _insert_ignore(conn: sa.Connection, table: sa.Table) -> Any:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


def remember_jti(conn: sa.Connection, iss: str, jti: str, expires_at: int) -> bool:
    """Record a request id; False when this application already used it."""
    # RETURNING rather than rowcount: SQLAlchemy reports no rowcount for a plain INSERT on
    # psycopg 3, and an ignored conflict returns no row on both engines.
    params = {"iss": iss, "jti": jti, "expires_at": expires_at}
    return hot.run(conn, "remember_jti", params).first() is not None


def purge_replay(conn: sa.Connection, before: int) -> int:
    return conn.execute(replay.delete().where(replay.c.expires_at < before)).rowcount


# --- audit ----------------------------------------------------------------------------------------


def max_seq(conn: sa.Connection) -> int:
    return int(hot.run(conn, "max_seq", {}).scalar_one())


def next_seqs(conn: sa.Connection, count: int, last: int) -> list[int]:
    """``count`` fresh global sequence numbers.

    PostgreSQL draws them from a sequence (unique across nodes, gaps allowed). SQLite has one
    writer at a time (BEGIN IMMEDIATE), so the next numbers follow the current maximum.
    """
    if conn.dialect.name == "postgresql":
        rows = conn.execute(
            sa.text("SELECT nextval('audit_seq') FROM generate_series(1, :n)"), {"n": count}
        ).all()
        # Sorted: the records of a batch are chained in this order and seq must increase.
        return sorted(int(r[0]) for r in rows)
    start = max(max_seq(conn), last)
    return list(range(start + 1, start + 1 + count))


def insert_audit_records(conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> None:
    hot.run_many(conn, "insert_audit", rows)


def insert_checkpoint(
    conn: sa.Connection, node: str, node_seq: int, after_seq: int, line: str
) -> None:
    conn.execute(
        audit_checkpoints.insert().values(
            node=node, node_seq=node_seq, after_seq=after_seq, line=line
        )
    )


def chain_head(conn: sa.Connection, node: str) -> tuple[int, str, int] | None:
    """(node_seq, hash, seq) of the node's last record, or None."""
    row = conn.execute(
        sa.select(audit_records.c.node_seq, audit_records.c.hash, audit_records.c.seq)
        .where(audit_records.c.node == node)
        .order_by(audit_records.c.node_seq.desc())
        .limit(1)
    ).first()
    return (int(row.node_seq), row.hash, int(row.seq)) if row is not None else None


def checkpoint_head(conn: sa.Connection, node: str) -> tuple[int, str] | None:
    """(node_seq, hash) of the node's newest checkpoint, or None."""
    row = conn.execute(
        sa.select(audit_checkpoints.c.node_seq, audit_checkpoints.c.line)
        .where(audit_checkpoints.c.node == node)
        .order_by(audit_checkpoints.c.node_seq.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    return int(row.node_seq), str(json.loads(row.line)["hash"])


def last_checkpoint(conn: sa.Connection, node: str) -> int:
    value = conn.execute(
        sa.select(sa.func.max(audit_checkpoints.c.node_seq)).where(audit_checkpoints.c.node == node)
    ).scalar()
    return int(value or 0)


def iter_audit_lines(
    conn: sa.Connection, *, since: int = 0, until: int | None = None, batch: int = 2000
) -> Iterator[tuple[int, str, str]]:
    """(seq, kind, line) in export order: records by seq, each checkpoint after its record.

    On PostgreSQL, several nodes draw ``seq`` from one sequence and commit independently, so
    a lower ``seq`` can become visible after a higher one. When the caller has not opened a
    transaction yet, the pages are read from one REPEATABLE READ snapshot: every node's
    chain in it is a committed prefix, so a full export always verifies.
    """
    if conn.dialect.name == "postgresql" and not conn.in_transaction():
        conn.execution_options(isolation_level="REPEATABLE READ")
    position = since
    while True:
        query = sa.select(audit_records.c.seq, audit_records.c.line).where(
            audit_records.c.seq > position
        )
        if until is not None:
            query = query.where(audit_records.c.seq <= until)
        rows = conn.execute(query.order_by(audit_records.c.seq).limit(batch)).all()
        if not rows:
            return
        low, high = rows[0].seq, rows[-1].seq
        cps: dict[int, list[str]] = {}
        for cp in conn.execute(
            sa.select(audit_checkpoints.c.after_seq, audit_checkpoints.c.line)
            .where(audit_checkpoints.c.after_seq >= low, audit_checkpoints.c.after_seq <= high)
            .order_by(audit_checkpoints.c.after_seq, audit_checkpoints.c.node_seq)
        ):
            cps.setdefault(int(cp.after_seq), []).append(cp.line)
        for row in rows:
            yield int(row.seq), "record", row.line
            for line in cps.get(int(row.seq), []):
                yield int(row.seq), "checkpoint", line
        position = int(high)


def key_accesses(
    conn: sa.Connection, key: str, *, limit: int, before: int | None
) -> list[tuple[int, str]]:
    """(seq, line) of the audit records naming a key, newest first."""
    query = sa.select(audit_records.c.seq, audit_records.c.line).where(audit_records.c.key == key)
    if before is not None:
        query = query.where(audit_records.c.seq < before)
    rows = conn.execute(query.order_by(audit_records.c.seq.desc()).limit(limit)).all()
    return [(int(r.seq), r.line) for r in rows]


# --- node leases and metadata ---------------------------------------------------------------------


def acquire_lease(conn: sa.Connection, node: str, holder: str, now: int, ttl: int) -> str | None:
    """Take or renew the node's lease; returns the current foreign holder when refused.

    The insert ignores a conflict, so two processes starting at once cannot both create the
    row; on PostgreSQL the row is then locked, so a renewal and a takeover of an expired
    lease serialize instead of both succeeding.
    """
    conn.execute(
        _insert_ignore(conn, node_leases).values(node=node, holder=holder, expires_at=now + ttl)
    )
    query = sa.select(node_leases).where(node_leases.c.node == node)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = conn.execute(query).one()
    if row.holder != holder and row.expires_at >= now:
        return str(row.holder)
    conn.execute(
        node_leases.update()
        .where(node_leases.c.node == node, node_leases.c.holder == row.holder)
        .values(holder=holder, expires_at=now + ttl)
    )
    return None


def force_lease(
    conn: sa.Connection, node: str, holder: str, old_holder: str, now: int, ttl: int
) -> bool:
    """Take the lease from ``old_holder`` (a dead process of this host), if still its."""
    result = conn.execute(
        node_leases.update()
        .where(node_leases.c.node == node, node_leases.c.holder == old_holder)
        .values(holder=holder, expires_at=now + ttl)
    )
    return result.rowcount == 1


def release_lease(conn: sa.Connection, node: str, holder: str) -> None:
    conn.execute(
        node_leases.delete().where(node_leases.c.node == node, node_leases.c.holder == holder)
    )


def list_leases(conn: sa.Connection) -> list[tuple[str, str, int]]:
    return [(r.node, r.holder, int(r.expires_at)) for r in conn.execute(sa.select(node_leases))]


def get_meta(conn: sa.Connection, name: str) -> str | None:
    row = conn.execute(sa.select(service_meta.c.value).where(service_meta.c.name == name)).first()
    return str(row.value) if row is not None else None


def set_meta(conn: sa.Connection, name: str, value: str) -> None:
    conn.execute(service_meta.delete().where(service_meta.c.name == name))
    conn.execute(service_meta.insert().values(name=name, value=value))


def overwrite_seed(conn: sa.Connection, key_id: bytes) -> None:
    """First step of crypto-shredding: replace the seed bytes in place with zeros."""
    conn.execute(keys.update().where(keys.c.key_id == key_id).values(seed=bytes(32)))


# --- console -------------------------------------------------------------------------------------
# Queries of the admin console (sessions, throttling, TOTP steps, key table, audit browsing).
# Tables in sceau.store.console_schema.

from sceau.store.console_schema import (  # noqa: E402 - section appended for the console
    console_throttle,
    console_totp_used,
)


def get_throttle(conn: sa.Connection, scope: str, subject: str) -> tuple[int, int] | None:
    """(failures, window_start) of a throttle counter, or None."""
    row = conn.execute(
        sa.select(console_throttle.c.failures, console_throttle.c.window_start).where(
            console_throttle.c.scope == scope, console_throttle.c.subject == subject
        )
    ).first()
    return (int(row.failures), int(row.window_start)) if row is not None else None


def set_throttle(
    conn: sa.Connection, scope: str, subject: str, failures: int, window_start: int
) -> None:
    conn.execute(
        _insert_ignore(conn, console_throttle).values(
            scope=scope, subject=subject, failures=0, window_start=window_start
        )
    )
    conn.execute(
        console_throttle.update()
        .where(console_throttle.c.scope == scope, console_throttle.c.subject == subject)
        .values(failures=failures, window_start=window_start)
    )


def charge_throttle(conn: sa.Connection, scope: str, subject: str, now: int,
                    window: int) -> tuple[int, int]:
    """Count one more attempt atomically; returns the counter after it.

    One ``UPDATE ... SET failures = failures + 1`` (a new window once the old one passed):
    concurrent attempts on any node each see their own count, never a stale one, so no
    more attempts than the limit are ever judged (SECURITY-CASES 39). The row lock it takes
    holds until the attempt's transaction ends.
    """
    conn.execute(_insert_ignore(conn, console_throttle).values(
        scope=scope, subject=subject, failures=0, window_start=now))
    where = (console_throttle.c.scope == scope, console_throttle.c.subject == subject)
    stale = console_throttle.c.window_start <= now - window
    conn.execute(console_throttle.update().where(*where).values(
        failures=sa.case((stale, 1), else_=console_throttle.c.failures + 1),
        window_start=sa.case((stale, now), else_=console_throttle.c.window_start)))
    row = conn.execute(sa.select(console_throttle.c.failures,
                                 console_throttle.c.window_start).where(*where)).one()
    return int(row.failures), int(row.window_start)


def refund_throttle(conn: sa.Connection, scope: str, subject: str) -> None:
    """Take back one counted attempt (it succeeded)."""
    conn.execute(console_throttle.update().where(
        console_throttle.c.scope == scope, console_throttle.c.subject == subject,
        console_throttle.c.failures > 0,
    ).values(failures=console_throttle.c.failures - 1))


def clear_throttle(conn: sa.Connection, scope: str, subject: str) -> None:
    conn.execute(
        console_throttle.delete().where(
            console_throttle.c.scope == scope, console_throttle.c.subject == subject
        )
    )


def purge_throttle(conn: sa.Connection, before: int) -> int:
    return conn.execute(
        console_throttle.delete().where(console_throttle.c.window_start < before)
    ).rowcount


def totp_last_step(conn: sa.Connection, username: str) -> int | None:
    value = conn.execute(
        sa.select(console_totp_used.c.last_step).where(console_totp_used.c.username == username)
    ).scalar()
    return int(value) if value is not None else None


def set_totp_last_step(conn: sa.Connection, username: str, step: int) -> None:
    conn.execute(
        _insert_ignore(conn, console_totp_used).values(username=username, last_step=step)
    )
    conn.execute(
        console_totp_used.update()
        .where(console_totp_used.c.username == username)
        .values(last_step=step)
    )


CONSOLE_KEY_SORTS = {"created": keys.c.created_at, "expires": keys.c.expires_at}


def key_filter_conditions(flt: KeyFilter) -> list[Any]:
    """WHERE conditions of a key filter, shared by ``list-keys`` and the console table."""
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


def console_list_keys(
    conn: sa.Connection,
    flt: KeyFilter,
    *,
    visible_to: tuple[str, str | None] | None,
    sort: str,
    descending: bool,
    limit: int,
    after: tuple[int, bytes] | None,
) -> list[KeyRecord]:
    """One page of the console key table, keyset-paginated on (sort column, key_id).

    ``flt.user`` is the person filter; ``visible_to`` (identity, ``*@domain``) restricts the
    page to the keys that identity owns or is authorized on (the ``user`` role), whatever
    the person filter says. ``after`` is the (sort value, key_id) of the previous page's last.
    """
    column = CONSOLE_KEY_SORTS[sort]
    conds = key_filter_conditions(flt)
    if visible_to is not None:
        ident, pattern = visible_to
        conds += key_filter_conditions(
            KeyFilter(user=ident, user_domain_pattern=pattern, role="any")
        )
    if after is not None:
        value, kid = after
        if descending:
            conds.append(sa.or_(column < value, sa.and_(column == value, keys.c.key_id < kid)))
        else:
            conds.append(sa.or_(column > value, sa.and_(column == value, keys.c.key_id > kid)))
    order = (column.desc(), keys.c.key_id.desc()) if descending else (column, keys.c.key_id)
    rows = conn.execute(sa.select(keys).where(*conds).order_by(*order).limit(limit)).all()
    if not rows:
        return []
    ids = [r.key_id for r in rows]
    return _with_authorizations(
        rows, conn.execute(sa.select(authorizations).where(authorizations.c.key_id.in_(ids)))
    )


def audit_lines_desc(
    conn: sa.Connection, *, before: int | None, limit: int, key: str | None = None
) -> list[tuple[int, str]]:
    """(seq, line) of audit records newest first, below ``before``, optionally of one key."""
    query = sa.select(audit_records.c.seq, audit_records.c.line)
    if key is not None:
        query = query.where(audit_records.c.key == key)
    if before is not None:
        query = query.where(audit_records.c.seq < before)
    rows = conn.execute(query.order_by(audit_records.c.seq.desc()).limit(limit)).all()
    return [(int(r.seq), r.line) for r in rows]
