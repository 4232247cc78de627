"""Leases on names (``node_leases``): which live process holds an audit node id or a task.

A writer leases its audit node id (``n1``, ``cli1``, ...) so that two processes never
write one chain; the background sweeper leases its own name so that one node sweeps at a
time. A lease is renewed by its holder before it expires; an expired one may be taken.
"""

from __future__ import annotations

import sqlalchemy as sa

from sceau.store.rows import insert_or_ignore
from sceau.store.schema import node_leases

__all__ = ["acquire_lease", "force_lease", "list_leases", "release_lease"]


def acquire_lease(conn: sa.Connection, node: str, holder: str, now: int, ttl: int) -> str | None:
    """Take or renew the lease on ``node``; returns the current foreign holder when refused.

    The insert ignores a conflict, so two processes starting at once cannot both create the
    row; on PostgreSQL the row is then locked, so a renewal and a takeover of an expired
    lease serialize instead of both succeeding.
    """
    conn.execute(
        insert_or_ignore(conn, node_leases).values(node=node, holder=holder, expires_at=now + ttl)
    )
    query = sa.select(node_leases).where(node_leases.c.node == node)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = conn.execute(query).one()
    if row.holder != holder and row.expires_at >= now:
        return str(row.holder)
    _hand_over(conn, node, row.holder, holder, now + ttl)
    return None


def force_lease(
    conn: sa.Connection, node: str, holder: str, old_holder: str, now: int, ttl: int
) -> bool:
    """Take the lease from ``old_holder`` (a dead process of this host), if still its."""
    return _hand_over(conn, node, old_holder, holder, now + ttl)


def _hand_over(conn: sa.Connection, node: str, old: str, new: str, expires_at: int) -> bool:
    """Give ``old``'s lease on ``node`` to ``new``; False when ``old`` no longer holds it."""
    result = conn.execute(
        node_leases.update()
        .where(node_leases.c.node == node, node_leases.c.holder == old)
        .values(holder=new, expires_at=expires_at)
    )
    return result.rowcount == 1


def release_lease(conn: sa.Connection, node: str, holder: str) -> None:
    """Give up the lease, if ``holder`` still holds it (else nothing happens)."""
    conn.execute(
        node_leases.delete().where(node_leases.c.node == node, node_leases.c.holder == holder)
    )


def list_leases(conn: sa.Connection) -> list[tuple[str, str, int]]:
    """(node, holder, expires_at) of every lease."""
    return [(r.node, r.holder, int(r.expires_at)) for r in conn.execute(sa.select(node_leases))]
