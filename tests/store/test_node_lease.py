"""The one lease of ``node_leases`` the writer and the sweep both hold, on both engines."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from sceau.store.db import Engines
from sceau.store.nodelease import NodeLease

NOW = 1_800_000_000
NAME = "sweep:test"


def holder_of(pid: int) -> NodeLease:
    """A lease whose holder token names process ``pid`` of this host."""
    lease = NodeLease(60)
    lease.holder = f"{socket.gethostname()}|{pid}|000000000000"
    return lease


def exited_pid() -> int:
    """The id of a process of this host that has just ended."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(done.stdout)


def test_one_holder_at_a_time_until_released_or_expired(engines: Engines) -> None:
    first, second = NodeLease(15), NodeLease(15)
    with engines.write.begin() as conn:
        assert first.take(conn, NAME, NOW) is None
        assert second.take(conn, NAME, NOW + 1) == first.holder
        assert first.renew(conn, NAME, NOW + 2)
        assert not second.renew(conn, NAME, NOW + 3)
        first.release(conn, NAME)
        assert second.take(conn, NAME, NOW + 4) is None
        second.release(conn, NAME)
        assert first.take(conn, NAME, NOW + 5) is None
        # Not renewed within its TTL: the next taker gets it, and the holder learns it lost.
        assert second.take(conn, NAME, NOW + 5 + 16) is None
        assert not first.renew(conn, NAME, NOW + 5 + 17)


def test_a_dead_process_of_this_host_is_replaced_at_once_but_never_by_a_renewal(
    engines: Engines,
) -> None:
    dead = holder_of(exited_pid())
    with engines.write.begin() as conn:
        assert dead.take(conn, NAME, NOW) is None
        assert not NodeLease(60).renew(conn, NAME, NOW + 1)
        successor = NodeLease(60)
        assert successor.take(conn, NAME, NOW + 1) is None
        assert not dead.renew(conn, NAME, NOW + 2)


def test_a_live_process_of_this_host_keeps_its_lease(engines: Engines) -> None:
    live = holder_of(os.getppid())
    with engines.write.begin() as conn:
        assert live.take(conn, NAME, NOW) is None
        assert NodeLease(60).take(conn, NAME, NOW + 1) == live.holder
