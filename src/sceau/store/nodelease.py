"""A lease in ``node_leases`` held by this process: the writer's audit node, the sweep's turn.

A lease is a row (name, holder, expires_at). This process's holder token names the host, the
process id and a random part, so that a process of the same host that died without handing
its lease back is recognized and replaced at once instead of after the TTL (a restarted node
resumes quickly). Every operation runs on a connection the caller has in a transaction: the
writer renews its lease inside the batch it is about to commit.
"""

from __future__ import annotations

import os
import socket

import sqlalchemy as sa

from sceau.store import leases

__all__ = ["NodeLease"]


def _holder_token() -> str:
    return f"{socket.gethostname()}|{os.getpid()}|{os.urandom(6).hex()}"


def _holder_is_dead_local(holder: str) -> bool:
    """True when ``holder`` names a process of this host that is not running."""
    try:
        host, pid_text, _ = holder.split("|")
        pid = int(pid_text)
    except ValueError:
        return False
    if host != socket.gethostname() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class NodeLease:
    """Leases held by one holder token, each renewed within ``ttl`` seconds."""

    def __init__(self, ttl: int) -> None:
        self.ttl = ttl
        self.holder = _holder_token()

    def take(self, conn: sa.Connection, name: str, now: int) -> str | None:
        """Take (or renew) lease ``name``; the holder's token when a live process holds it.

        A lease held by a process of this host that is gone is taken over at once.
        """
        holder = leases.acquire_lease(conn, name, self.holder, now, self.ttl)
        if holder is not None and _holder_is_dead_local(holder):
            if leases.force_lease(conn, name, self.holder, holder, now, self.ttl):
                holder = None
        return holder

    def renew(self, conn: sa.Connection, name: str, now: int) -> bool:
        """Extend lease ``name``; False when another holder has it now (it was lost)."""
        return leases.acquire_lease(conn, name, self.holder, now, self.ttl) is None

    def release(self, conn: sa.Connection, name: str) -> None:
        """Hand lease ``name`` back (nothing happens when another holder has it)."""
        leases.release_lease(conn, name, self.holder)
