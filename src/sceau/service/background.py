"""Background tasks of a node: the pending-destruction sweep and the replay-cache purge.

One thread per node wakes every ``keys.sweep_interval_s`` seconds (default 30). It first
takes the store lease ``sweep:global`` in ``node_leases``, so that among N nodes sharing a
database only one sweeps at a time; the others skip the round. The lease holder then

* destroys every key whose ``pending_destruction`` is due (``destroy_at <= now``), one
  writer job of the key-lifecycle service per key, so each destruction is audited
  (``DESTROY_KEY``, user ``sceau``, no application, ``details.sweep = true``) and committed
  exactly like ``destroy-key``;
* deletes replay-cache rows whose request tokens can no longer be accepted anyway.

Every piece of state lives in the store (status, ``destroy_at``, the lease), so a node
restarted between a ``destroy-key`` with ``pending_days`` and its due date still destroys
the key on time. The lease is held only during a round; a node that dies mid-round blocks
the others for at most the lease TTL (a process of the same host takes it over at once).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import sqlalchemy as sa

from sceau.errors import SceauError
from sceau.service import keyops
from sceau.store.applications import purge_replay
from sceau.store.keys import keys_due_for_destruction
from sceau.store.nodelease import NodeLease

if TYPE_CHECKING:
    from sceau.service.runtime import Runtime

log = logging.getLogger("sceau.background")

SWEEP_LEASE = "sweep:global"
SWEEP_BATCH = 100
SWEEP_LEASE_TTL_S = 60
# A key whose destruction was refused (e.g. its seal no longer verifies) is retried only
# this much later: each attempt writes an audit record, and one per round would flood it.
REFUSED_RETRY_S = 3600
JOB_TIMEOUT_S = 60.0
WAL_FLUSH_BUSY_MS = 2000


class Sweeper:
    """The node's sweep thread. ``run_once`` is one round, callable directly in tests."""

    def __init__(
        self, rt: Runtime, *, interval: float, clock: Callable[[], float] = time.time
    ) -> None:
        self._rt = rt
        self._interval = interval
        self._clock = clock
        # Held only during a round (renewed between batches, released at the end), so it
        # must outlive one batch; a node that died mid-round is replaced after the TTL.
        self._lease = NodeLease(SWEEP_LEASE_TTL_S)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._refused: dict[bytes, float] = {}

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="sceau-sweeper", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread and hand the lease back so another node may sweep at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._release_lease()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
                self.flush_wal()
            except (SceauError, sa.exc.SQLAlchemyError, TimeoutError) as exc:
                log.warning("sweep round failed: %s", type(exc).__name__)
            except Exception:  # noqa: BLE001 - the thread must outlive a bug in one round
                log.exception("sweep round failed")
            self._stop.wait(self._interval)

    # --- the SQLite WAL after a destruction ---------------------------------------------

    def flush_wal(self) -> bool:
        """After a destruction, checkpoint the SQLite WAL and truncate it to zero bytes.

        The committed destruction lives in the WAL; older frames there, and the main file
        until the checkpoint copies the new page over it, may still hold the seed. TRUNCATE
        waits for readers, so it runs with a short busy timeout and is retried next round
        when busy. Returns True when nothing is left to flush.
        """
        event = self._rt.lifecycle.shredded
        if not self._rt.engines.is_sqlite or not event.is_set():
            return True
        event.clear()
        path = self._rt.engines.write.url.database
        row: tuple[int, int, int] | None = None
        try:
            # A connection of its own, outside the pool: its short busy timeout must not
            # leak into the writer's connections.
            conn = sqlite3.connect(path or "", timeout=WAL_FLUSH_BUSY_MS / 1000,
                                   isolation_level=None)
            try:
                row = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            log.warning("WAL checkpoint after a destruction failed: %s", type(exc).__name__)
        if row is None or row[0] != 0:
            event.set()  # readers or a writer were busy: try again next round
            return False
        return True

    # --- one round -------------------------------------------------------------------------

    def _release_lease(self) -> None:
        try:
            with self._rt.engines.write.begin() as conn:
                self._lease.release(conn, SWEEP_LEASE)
        except sa.exc.SQLAlchemyError:
            log.warning("could not release the sweep lease; it expires in %d s",
                        self._lease.ttl)

    def run_once(self) -> int:
        """One round if no other node is sweeping; returns the keys destroyed."""
        with self._rt.engines.write.begin() as conn:
            if self._lease.take(conn, SWEEP_LEASE, int(self._clock())) is not None:
                return 0
        try:
            return self._round()
        finally:
            self._release_lease()

    def _round(self) -> int:
        now = int(self._clock())
        skew = self._rt.config.limits.clock_skew_s
        with self._rt.engines.write.begin() as conn:
            # A row may go once its token is refused as expired on every node: its
            # expires_at already includes the skew; one more skew covers slower clocks.
            purged = purge_replay(conn, now - skew)
        if purged:
            log.info("purged %d replay-cache rows", purged)
        destroyed = 0
        while not self._stop.is_set():
            now = int(self._clock())
            self._refused = {k: t for k, t in self._refused.items() if t > now}
            with self._rt.engines.read.connect() as conn:
                due = keys_due_for_destruction(conn, now, SWEEP_BATCH + len(self._refused))
            batch = [k for k in due if k not in self._refused][:SWEEP_BATCH]
            if not batch:
                break
            for key_id in batch:
                if self._stop.is_set():
                    break
                if self._destroy(key_id):
                    destroyed += 1
            if len(batch) < SWEEP_BATCH:
                break
            with self._rt.engines.write.begin() as conn:
                if not self._lease.renew(conn, SWEEP_LEASE, int(self._clock())):
                    break
        return destroyed

    def _destroy(self, key_id: bytes) -> bool:
        text = keyops.key_id_text(key_id)
        job = self._rt.lifecycle.sweep_job(key_id)
        try:
            self._rt.writer.submit(job).result(timeout=JOB_TIMEOUT_S)
        except SceauError as exc:
            if exc.status >= 500:
                raise  # store or audit trouble: end this round, the next one retries
            # Refused and audited (e.g. integrity_failure): do not retry every round.
            self._refused[key_id] = self._clock() + REFUSED_RETRY_S
            log.warning("sweep could not destroy key %s: %s", text, exc.code)
            return False
        log.info("sweep destroyed key %s", text)
        return True


def start_background(rt: Runtime) -> None:
    """Start this node's background tasks (called once the writer runs)."""
    rt.sweeper = Sweeper(rt, interval=rt.config.keys.sweep_interval_s)
    rt.sweeper.start()


def stop_background(rt: Runtime) -> None:
    """Stop them before the writer is flushed."""
    sweeper, rt.sweeper = rt.sweeper, None
    if sweeper is not None:
        sweeper.stop()
