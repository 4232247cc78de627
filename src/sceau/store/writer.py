"""The group-commit writer: every state change and its audit record, durably, in order.

All writes of a node go through one :class:`Writer`. Requests hand it a :class:`Job` (a
function of the open transaction plus the audit context) and wait for the outcome. The writer
takes whatever jobs are queued (up to ``max_batch``), runs each so that a failing job leaves
no write behind (:func:`_run_isolated`), appends one audit record per job (or per batch
item) to this node's hash chain, signs them, and commits the lot: one fsync for many
requests. A job's caller is answered only after that commit, so no response is ever sent
before its audit record is durable; if the commit fails, every job of the batch fails with
``audit_unavailable`` and nothing of it persists.

The chain head (``node_seq``, ``hash``) lives in memory and advances only after a successful
commit; a failed batch leaves it untouched, so the chain never forks. After a failure the
next batch re-reads the head from the store inside its own transaction: when a COMMIT was
applied but its acknowledgement was lost (connection cut at that instant), the store, not
memory, knows the truth. The unique ``(node, node_seq)`` constraint is the last guard: two
writers on one chain can never both commit the same position.

On PostgreSQL a batch that hits a deadlock (40P01) or a serialization failure (40001) runs
again from the start in a new transaction; job functions are therefore pure functions of
the transaction (what they read and write there, the keystore, fresh randomness), and the
job's audit context is restored before each attempt.

Cutting the trail (SECURITY-CASES 48). A node registers in the sealed ``audit_nodes`` table
in the transaction of its first record. Each checkpoint, once committed, goes to a
:class:`CheckpointWitness` outside the store (``sceau.auditlog.witness``). At open the
writer refuses a node whose stored chain is behind what it must have reached: its last
witnessed checkpoint, its own newest stored checkpoint, or (registered but nothing left)
any record at all; after a failed batch it re-reads the head and refuses the same way
rather than fork the chain from a shortened store. A checkpoint the witness could not take
is retried, and until it is taken the writer refuses new jobs (fail closed).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import sqlalchemy as sa

try:
    import fcntl
except ImportError:  # not a POSIX system: SQLite's busy handler alone orders the writers
    fcntl = None  # type: ignore[assignment]

from sceau.core.audit import AuditEvent, ChainHead, build_checkpoint, build_record, record_line
from sceau.core.verify import WitnessPoint
from sceau.errors import (
    AuditUnavailable,
    ConcurrentUpdate,
    ConfigError,
    IntegrityFailure,
    InternalError,
    ReplayedRequest,
    SceauError,
)
from sceau.keystore.base import KeyPurpose, Keystore
from sceau.store import applications, audit, driver, nodes
from sceau.store.db import Engines
from sceau.store.nodelease import NodeLease
from sceau.store.nodes import AuditNodeRow, NodeKind
from sceau.vocab import Action, Outcome

log = logging.getLogger("sceau.audit")

LEASE_TTL_S = 15
LEASE_RENEW_S = 5
MAX_BATCH_RETRIES = 5
# Runs of one job that keeps finding a key record changed by another node (ConcurrentUpdate).
MAX_JOB_RETRIES = 5
# After a failed batch the idle loop waits this long before trying the store again, so an
# outage is not hammered (and logged) a hundred times a second.
FAILURE_BACKOFF_S = 1.0
# A kept PostgreSQL connection idle longer than this is pinged before its next batch.
IDLE_PING_S = 2.0


@dataclass
class AuditContext:
    """What the audit record of a job will say; the job fills ``key`` and ``details``."""

    action: Action
    app: str | None
    user: str | None
    ip: str | None
    req: str | None
    key: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class ItemRecord:
    """An extra audit record emitted by a job (one per item of a batch operation)."""

    action: Action
    outcome: Outcome
    reason: str | None
    key: str | None
    details: dict[str, Any]


class Tx:
    """What a job sees: the open connection, the job's audit context and the clock."""

    def __init__(self, conn: sa.Connection, ctx: AuditContext, now_ms: int) -> None:
        self.conn = conn
        self.ctx = ctx
        self.now_ms = now_ms
        self.items: list[ItemRecord] = []

    @property
    def now(self) -> int:
        return self.now_ms // 1000

    def item_record(
        self,
        *,
        outcome: Outcome,
        key: str | None,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Audit one item of a batch; when any is emitted, no job-level record is written."""
        self.items.append(ItemRecord(self.ctx.action, outcome, reason, key, details or {}))


JobFn = Callable[[Tx], Any]


@dataclass(frozen=True)
class JobOutcome:
    """A committed job: what its function returned and the (seq, hash) of its records."""

    value: Any
    records: tuple[tuple[int, str], ...]


@dataclass
class Job:
    """One unit of work: remember ``jti`` (replay), run ``fn``, audit, all in one commit.

    The outcome goes to ``future`` (a thread-safe future), or, for a job submitted with
    :meth:`Writer.submit_async`, to an asyncio future of the submitting event loop: the
    writer then settles all of a batch's asyncio futures with one loop wake-up.
    """

    fn: JobFn | None
    ctx: AuditContext
    jti: tuple[str, str, int] | None = None
    future: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)
    waiter: asyncio.Future[Any] | None = None


class CheckpointWitness(Protocol):
    """Somewhere outside the store that keeps every committed checkpoint of a node."""

    def open_node(
        self, node: str, jwks: Callable[[], Mapping[str, Any]]
    ) -> WitnessPoint | None:
        """Get ready to witness ``node``; its last witnessed checkpoint (signature checked
        with the JWKS ``jwks()`` returns, asked only when there is a line to check), or None.
        :class:`ConfigError` when the witness cannot be used."""

    def publish(self, node: str, line: str) -> None:
        """Keep one committed checkpoint line durably; :class:`SceauError` when it cannot."""

    def close(self) -> None:
        """Release what the witness holds (flush remote streams)."""


def outcome_for(error: SceauError | None) -> Outcome:
    """GRANTED for 2xx, DENIED for 4xx, ERROR for 5xx (SPEC §10)."""
    if error is None:
        return Outcome.GRANTED
    return Outcome.DENIED if error.status < 500 else Outcome.ERROR


def _open_turn_file(engines: Engines) -> int | None:
    """SQLite only: the lock file through which the writers of one database take turns.

    SQLite has one write lock per database file, and a writer that finds it taken waits in
    SQLite's busy handler, which sleeps 1, 2, 5, 10 ms ... between tries: with several
    workers each committing every few milliseconds, most of a second was spent asleep
    while the lock was free. A blocking ``flock`` on ``<database>.turn`` wakes the next
    writer as soon as the previous one committed. It orders the writers only: SQLite's
    own lock still guards the data, and a process that does not take turns (a CLI
    command) just meets the busy handler as before.
    """
    if fcntl is None or not engines.is_sqlite:
        return None
    database = engines.write.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return os.open(f"{database}.turn", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


class Writer:
    """This node's single writer: group commit, audit chain, checkpoints and node lease."""

    def __init__(
        self,
        engines: Engines,
        keystore: Keystore,
        *,
        witness: CheckpointWitness | None,
        node_id: str = "",
        node_prefix: str = "n",
        max_batch: int = 256,
        checkpoint_every: int = 1000,
        checkpoint_interval_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._engines = engines
        self._keystore = keystore
        # Required, so that running without a witness is a visible choice (tests only).
        self._witness = witness
        self._requested_node = node_id
        self._node_prefix = node_prefix
        self._kind = NodeKind.CLI if node_prefix == NodeKind.CLI.value else NodeKind.SERVER
        self._max_batch = max_batch
        self._cp_every = checkpoint_every
        self._cp_interval = checkpoint_interval_s
        self._clock = clock
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lease = NodeLease(LEASE_TTL_S)
        # Not `_thread`: mypyc would name its C field `__thread`, a C keyword.
        self._loop_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.node = ""
        self._head = ChainHead(node="", node_seq=0, hash="0" * 64)
        self._last_seq = 0
        self._uncovered = 0
        self._uncovered_since: float | None = None
        self._last_lease = 0.0
        self._resync = False
        self._retry_at = 0.0
        self._registered = False
        # The last checkpoint the witness holds, and committed ones it has not taken yet.
        self._witnessed: WitnessPoint | None = None
        self._unwitnessed: list[tuple[str, ChainHead]] = []
        self._witness_error: str | None = None
        self._store_ok = True
        self._store_error: str | None = None
        # SQLite: the writers of one database file (the workers of `serve --workers N`)
        # take turns through a lock file (see _turn); None for PostgreSQL or without fcntl.
        self._turn_fd: int | None = None
        self.on_batch: Callable[[int, float], None] | None = None
        self.maintenance: list[Callable[[sa.Connection, int], None]] = []
        # Run in each transaction that has jobs, before the first job (caches that follow
        # the store read their revision here, once per group commit).
        self.before_jobs: list[Callable[[sa.Connection, Mapping[str, int]], None]] = []
        # Inserts whose result nobody reads, sent with the COMMIT (see _transaction).
        self._deferred: list[tuple[driver.Statement, Sequence[Mapping[str, Any]]]] = []
        # The writer's own connection, kept from batch to batch (see _transaction).
        self._conn: sa.Connection | None = None
        self._conn_used = 0.0

    @property
    def healthy(self) -> bool:
        """False while the store refuses writes or a checkpoint waits for the witness."""
        return self._store_ok and not self._unwitnessed

    @property
    def last_error(self) -> str | None:
        """Why the writer is not healthy (an error class name, never a value)."""
        if self._unwitnessed:
            return f"witness: {self._witness_error}"
        return self._store_error

    # --- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Lease a node id and load this node's chain head. Raises ConfigError if taken."""
        self._turn_fd = _open_turn_file(self._engines)
        now = int(self._clock())
        if self._requested_node:
            holder = self._take_lease(self._requested_node, now)
            if holder is not None:
                raise ConfigError(
                    f"audit node id {self._requested_node!r} is held by another running "
                    f"process ({holder}); two processes must never write one audit chain: "
                    "give each node its own SCEAU_NODE_ID, or leave it empty to lease one"
                )
            self.node = self._requested_node
        else:
            for node in (f"{self._node_prefix}{i}" for i in range(1, 1000)):
                if self._take_lease(node, now) is None:
                    self.node = node
                    break
            else:
                raise ConfigError("no free audit node id")
        self._last_lease = self._clock()
        try:
            witnessed = (
                self._witness.open_node(self.node, self._audit_jwks)
                if self._witness is not None else None
            )
            with self._engines.write.begin() as conn:
                self._load_head(conn)
                self._check_start(conn, witnessed)
        except BaseException:
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                with self._engines.write.begin() as conn:
                    self._lease.release(conn, self.node)
            raise
        self._witnessed = witnessed
        log.info("audit node %s continues its chain at node_seq %d", self.node, self._head.node_seq)

    def _check_start(self, conn: sa.Connection, witnessed: WitnessPoint | None) -> None:
        """Refuse (:class:`ConfigError`, naming the node) to continue a chain that is behind
        what it must have reached, or whose registry row was forged or edited."""
        row = nodes.get_node(conn, self.node)
        if row is not None:
            try:
                self._keystore.verify_row(row)
            except IntegrityFailure:
                raise ConfigError(
                    f"audit node {self.node}: its registry row (audit_nodes) does not match "
                    "its seal: it was written outside Sceau; refusing to write this chain "
                    "(docs/audit.md, 'Witnesses')"
                ) from None
            self._registered = True
            if self._head.node_seq == 0:
                raise ConfigError(
                    f"audit node {self.node} is registered (it wrote records) but the store "
                    "holds no record or checkpoint of it: its chain was removed; refusing to "
                    "start it again from node_seq 1 (docs/audit.md, 'Witnesses')"
                )
        references: list[tuple[int, str, str]] = []
        stored_cp = audit.checkpoint_head(conn, self.node)
        if stored_cp is not None:
            references.append((stored_cp[0], stored_cp[1], "its own newest stored checkpoint"))
        if witnessed is not None:
            references.append(
                (witnessed.node_seq, witnessed.hash, f"its witness ({witnessed.source})")
            )
        for node_seq, hash_, what in references:
            problem = self._behind(conn, node_seq, hash_, what)
            if problem is not None:
                raise ConfigError(problem + " (docs/audit.md, 'Witnesses')")

    def _behind(self, conn: sa.Connection, node_seq: int, hash_: str, what: str) -> str | None:
        """Why the loaded head cannot follow ``what`` (position ``node_seq``/``hash_``)."""
        head = self._head
        if head.node_seq < node_seq:
            stored = (f"stops at node_seq {head.node_seq}" if head.node_seq
                      else "holds no record of it")
            return (
                f"audit node {self.node}: the store {stored} but {what} saw node_seq "
                f"{node_seq}: records were removed from the store; refusing to continue a "
                "chain that is behind its witness"
            )
        found = nodes.hash_at(conn, self.node, node_seq)
        if found is None:
            first = nodes.first_node_seq(conn, self.node)
            if first is None or first > node_seq:
                return None  # archived: the archive verified it before removing it
            return (
                f"audit node {self.node}: the store has no record at node_seq {node_seq}, "
                f"which {what} saw; refusing to continue this chain"
            )
        if found != hash_:
            return (
                f"audit node {self.node}: the store's record at node_seq {node_seq} is not "
                f"the one {what} saw: the chain was rewritten from an older head; refusing "
                "to continue it"
            )
        return None

    def _take_lease(self, node: str, now: int) -> str | None:
        """Lease ``node``; the foreign holder's token when it is held by a live process."""
        with self._engines.write.begin() as conn:
            return self._lease.take(conn, node, now)

    def _load_head(self, conn: sa.Connection) -> None:
        """Read this node's chain head and checkpoint coverage from the store."""
        head = audit.chain_head(conn, self.node)
        self._last_seq = audit.max_seq(conn)
        last_cp = audit.last_checkpoint(conn, self.node)
        anchor = audit.checkpoint_head(conn, self.node) if head is None else None
        if head is not None:
            node_seq, hash_, _seq = head
            self._head = ChainHead(node=self.node, node_seq=node_seq, hash=hash_)
            self._uncovered = node_seq - last_cp
        elif anchor is not None:
            # Every record of this node was archived: the signed checkpoint at the archive
            # boundary is where the chain continues (never a restart at node_seq 1).
            self._head = ChainHead(node=self.node, node_seq=anchor[0], hash=anchor[1])
            self._uncovered = 0
        else:
            self._head = ChainHead(node=self.node, node_seq=0, hash="0" * 64)
            self._uncovered = 0
        self._uncovered_since = self._clock() if self._uncovered else None

    def start(self) -> None:
        """Run the writer loop in a background thread."""
        if not self.node:
            self.open()
        self._loop_thread = threading.Thread(
            target=self._loop, name=f"sceau-writer-{self.node}", daemon=True
        )
        self._loop_thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish queued jobs, write a final checkpoint and release the lease."""
        self._stopping.set()
        self._queue.put(None)
        if self._loop_thread is not None:
            self._loop_thread.join(timeout)
        try:
            if self._uncovered:
                self._run_batch([], force_checkpoint=True)
            if self._unwitnessed and not self._flush_witness():
                log.error("audit node %s stops with %d checkpoint(s) its witness does not hold",
                          self.node, len(self._unwitnessed))
            with self._engines.write.begin() as conn:
                self._lease.release(conn, self.node)
        except (sa.exc.SQLAlchemyError, SceauError):
            log.warning("could not release the audit node lease cleanly")
        finally:
            if self._conn is not None:
                with contextlib.suppress(sa.exc.SQLAlchemyError):
                    self._conn.close()
                self._conn = None
            if self._witness is not None:
                self._witness.close()
            if self._turn_fd is not None:
                os.close(self._turn_fd)
                self._turn_fd = None

    # --- submission ------------------------------------------------------------------------

    def submit(self, job: Job) -> concurrent.futures.Future[Any]:
        """Queue a job; its future resolves after the commit that made its record durable."""
        if self._stopping.is_set():
            job.future.set_exception(AuditUnavailable("the service is shutting down"))
        else:
            self._queue.put(job)
        return job.future

    def submit_async(self, job: Job) -> asyncio.Future[Any]:
        """Queue a job from an event loop; await the result (same rules as :meth:`submit`)."""
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        job.waiter = waiter
        if self._stopping.is_set():
            waiter.set_exception(AuditUnavailable("the service is shutting down"))
        else:
            self._queue.put(job)
        return waiter

    def run_now(self, job: Job) -> JobOutcome:
        """Execute one job synchronously in the calling thread (CLI, no loop thread)."""
        self._run_batch([job])
        outcome: JobOutcome = job.future.result()
        return outcome

    # --- loop ------------------------------------------------------------------------------

    def _next_timeout(self) -> float:
        wait = LEASE_RENEW_S - (self._clock() - self._last_lease)
        if self._uncovered_since is not None:
            wait = min(wait, self._cp_interval - (self._clock() - self._uncovered_since))
        return max(0.01, wait, self._retry_at - self._clock())

    def _loop(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=self._next_timeout())
            except queue.Empty:
                first = None
                if self._stopping.is_set():
                    return
            jobs: list[Job] = []
            stop = False
            if first is None:
                stop = self._stopping.is_set()
            else:
                jobs.append(first)
            while len(jobs) < self._max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                jobs.append(more)
            due = (
                self._uncovered_since is not None
                and self._clock() - self._uncovered_since >= self._cp_interval
            )
            idle_work = due or self._clock() - self._last_lease >= LEASE_RENEW_S
            if jobs or (idle_work and self._clock() >= self._retry_at):
                self._run_batch(jobs, force_checkpoint=due)
            if stop:
                # Drain anything that raced with the stop request.
                rest: list[Job] = []
                while True:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is not None:
                        rest.append(more)
                if rest:
                    self._run_batch(rest)
                return

    # --- one batch ---------------------------------------------------------------------------

    def _run_batch(self, jobs: Sequence[Job], *, force_checkpoint: bool = False) -> None:
        if self._unwitnessed and not self._flush_witness() and jobs:
            # Fail closed: a committed checkpoint is not witnessed yet, and every record
            # written now would widen the window the witness cannot vouch for.
            _settle(jobs, [
                (None, AuditUnavailable("the audit witness cannot be written right now"))
                for _ in jobs
            ])
            if not force_checkpoint and self._clock() - self._last_lease < LEASE_RENEW_S:
                return
            jobs = []
        started = time.perf_counter()
        error: Exception | None = None
        saved = [(job.ctx.key, dict(job.ctx.details)) for job in jobs]
        isolate = False
        conflicts = 0
        for attempt in range(MAX_BATCH_RETRIES):
            if attempt:
                # Restore what the previous attempt's job functions wrote into their audit
                # context, and let the transaction that won the conflict finish first.
                for job, (key, details) in zip(jobs, saved, strict=True):
                    job.ctx.key, job.ctx.details = key, dict(details)
                if conflicts:
                    time.sleep(random.uniform(0.005, 0.05) * conflicts)  # noqa: S311 - jitter
            try:
                outcomes = self._attempt(jobs, force_checkpoint, isolate)
            except _PartialWrite:
                # A job failed after writing, with no savepoint to undo just its writes:
                # run the batch again from the start, every job in its own savepoint.
                isolate = True
                continue
            except sa.exc.DBAPIError as exc:
                conflicts += 1
                error = exc
                if _is_retryable(exc):
                    log.info("audit batch of %d jobs: %s, retrying", len(jobs), _sqlstate(exc))
                    continue
                break
            except SceauError as exc:  # keystore failure while signing, lease lost, ...
                error = exc
                break
            else:
                self._store_ok = True
                self._store_error = None
                _settle(jobs, [
                    (JobOutcome(value, tuple(refs)), None) if exc_out is None else (None, exc_out)
                    for value, exc_out, refs in outcomes
                ])
                if self.on_batch is not None and jobs:
                    self.on_batch(len(jobs), time.perf_counter() - started)
                return
        self._store_ok = False
        self._store_error = type(error).__name__ if error else "unknown"
        # The commit may have been applied even though it raised (acknowledgement lost): the
        # next batch re-reads the chain head from the store before writing.
        self._resync = True
        self._retry_at = self._clock() + FAILURE_BACKOFF_S
        log.error("audit batch of %d jobs failed: %s", len(jobs), self._store_error)
        failure = error if isinstance(error, SceauError) and error.status >= 500 else None
        _settle(jobs, [
            (None, failure or AuditUnavailable("the audit trail cannot be written right now"))
            for _ in jobs
        ])

    def _attempt(
        self, jobs: Sequence[Job], force_checkpoint: bool, isolate: bool = False
    ) -> list[tuple[Any, SceauError | None, list[tuple[int, str]]]]:
        results: list[tuple[Any, SceauError | None, list[tuple[int, str]]]] = []
        events: list[AuditEvent] = []
        keys_of_events: list[str | None] = []
        owners: list[int] = []
        renewed: float | None = None
        with self._transaction() as conn:
            now = self._clock()
            now_s = int(now)
            if now - self._last_lease >= LEASE_RENEW_S or not jobs or self._resync:
                if not self._lease.renew(conn, self.node, now_s):
                    raise AuditUnavailable("this node lost its audit lease")
                renewed = now
                if self._resync:
                    self._resync_head(conn)
                for task in self.maintenance:
                    with conn.begin_nested():
                        task(conn, now_s)
            used = self._prologue(conn, jobs)
            for job, replayed in zip(jobs, used, strict=True):
                tx = Tx(conn, job.ctx, int(self._clock() * 1000))
                value, err = self._run_job(conn, job, tx, isolate, replayed)
                results.append((value, err, []))
                if tx.items:
                    for item in tx.items:
                        events.append(self._event(job.ctx, tx.now_ms, item.outcome, item.reason,
                                                  item.key, item.details))
                        keys_of_events.append(item.key)
                        owners.append(len(results) - 1)
                else:
                    reason = str(err.reason) if err is not None and err.reason else (
                        err.code if err is not None else None
                    )
                    events.append(self._event(job.ctx, tx.now_ms, outcome_for(err), reason,
                                              job.ctx.key, job.ctx.details))
                    keys_of_events.append(job.ctx.key)
                    owners.append(len(results) - 1)
            head = self._head
            last_seq = self._last_seq
            cp_line = ""
            rows: list[dict[str, Any]] = []
            if events:
                seqs = audit.next_seqs(conn, len(events), self._last_seq)
                info = self._keystore.signing_key(KeyPurpose.AUDIT)
                for event, seq, key, owner in zip(events, seqs, keys_of_events, owners,
                                                  strict=True):
                    record = build_record(event, seq=seq, head=head, kid=info.kid,
                                          sign=self._sign_audit)
                    results[owner][2].append((seq, record["hash"]))
                    rows.append({"seq": seq, "node": self.node, "node_seq": record["node_seq"],
                                 "key": key, "hash": record["hash"], "line": record_line(record)})
                    head = ChainHead(
                        node=self.node, node_seq=record["node_seq"], hash=record["hash"]
                    )
                    last_seq = seq
                self._deferred.append(audit.insert_audit_records_later(rows))
                if not self._registered:
                    self._register(conn, now_s)
            uncovered = self._uncovered + len(rows)
            checkpoint = uncovered > 0 and (uncovered >= self._cp_every or force_checkpoint)
            if checkpoint:
                info = self._keystore.signing_key(KeyPurpose.AUDIT)
                cp = build_checkpoint(node=self.node, node_seq=head.node_seq, hash=head.hash,
                                      time_ms=int(self._clock() * 1000), kid=info.kid,
                                      sign=self._sign_audit)
                after = last_seq if rows else self._head_seq(conn, head)
                cp_line = record_line(cp)
                self._deferred.append(
                    audit.insert_checkpoint_later(self.node, head.node_seq, after, cp_line)
                )
        # Committed: only now does the in-memory chain advance.
        self._head = head
        self._last_seq = last_seq
        self._resync = False
        if rows:
            self._registered = True
        if renewed is not None:
            self._last_lease = renewed
        if checkpoint:
            self._uncovered = 0
            self._uncovered_since = None
            # Witnessed only after the commit: the witness never holds a checkpoint the
            # store does not.
            self._unwitnessed.append((cp_line, head))
            self._flush_witness()
        elif rows:
            if not self._uncovered:
                self._uncovered_since = self._clock()
            self._uncovered = uncovered
        return results

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sa.Connection]:
        """One write transaction on the writer's own connection.

        The connection is kept for the writer's lifetime: checking one out of the pool for
        each batch (with PostgreSQL's pre-ping, a round trip) cost more than SQLite's
        COMMIT. It is dropped after any failure other than a job's own refusal or a
        deadlock, so that the next batch starts on a fresh connection (after an outage the
        pool's pre-ping finds a live server). A PostgreSQL connection idle for more than
        :data:`IDLE_PING_S` is pinged first: a server restarted meanwhile costs a reconnect,
        not a failed batch.

        What the batch appends at its end (audit records, a checkpoint) is deferred to the
        commit (:meth:`_defer`): on PostgreSQL those inserts and the ``COMMIT`` travel in
        one pipeline. A failing insert fails the commit, hence the whole batch, as before.
        """
        conn = self._connection()
        self._deferred = []
        turn = self._turn_fd
        if turn is not None:
            fcntl.flock(turn, fcntl.LOCK_EX)
        try:
            with conn.begin() as transaction:
                yield conn
                deferred, self._deferred = self._deferred, []
                driver.run_many_and_commit(conn, deferred, transaction.commit)
        except (_PartialWrite, SceauError):
            raise
        except sa.exc.DBAPIError as exc:
            if not _is_retryable(exc):
                self._drop_connection()
            raise
        except BaseException:
            self._drop_connection()
            raise
        finally:
            if turn is not None:
                fcntl.flock(turn, fcntl.LOCK_UN)
            self._conn_used = time.monotonic()

    def _connection(self) -> sa.Connection:
        conn = self._conn
        if conn is not None and not self._engines.is_sqlite and (
            time.monotonic() - self._conn_used > IDLE_PING_S
        ):
            try:
                with conn.begin():
                    driver.sql(conn, "SELECT 1")
            except sa.exc.SQLAlchemyError:
                self._drop_connection()
                conn = None
        if conn is None:
            conn = self._conn = self._engines.write.connect()
        return conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                conn.invalidate()
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                conn.close()

    def _resync_head(self, conn: sa.Connection) -> None:
        """Re-read the head after a failure; refuse to go on from a store that lost records
        this node had committed, or that its witness saw (never fork from a shortened chain).
        """
        committed = self._head
        self._load_head(conn)
        references = [(committed.node_seq, committed.hash, "this node's last commit")]
        if self._witnessed is not None:
            references.append((self._witnessed.node_seq, self._witnessed.hash,
                               f"its witness ({self._witnessed.source})"))
        for node_seq, hash_, what in references:
            if node_seq == 0:
                continue
            problem = self._behind(conn, node_seq, hash_, what)
            if problem is not None:
                self._head = committed
                log.error("%s", problem)
                raise AuditUnavailable("the audit chain in the store is behind this node")

    def _register(self, conn: sa.Connection, now_s: int) -> None:
        """List this node in the sealed registry, in the transaction of its first record."""
        if nodes.get_node(conn, self.node) is not None:
            return  # registered by `sceau db upgrade` since this writer opened
        if self._head.node_seq:
            log.warning("audit node %s had records but no registry row: registering it now "
                        "(expected once, after upgrading to schema 0003)", self.node)
        nodes.insert_node(conn, self._keystore.seal_row(
            AuditNodeRow(node=self.node, kind=str(self._kind), registered_at=now_s)))

    def _flush_witness(self) -> bool:
        """Hand committed checkpoints to the witness, in order; False while it refuses."""
        if self._witness is None:
            self._unwitnessed.clear()
            return True
        while self._unwitnessed:
            line, head = self._unwitnessed[0]
            try:
                self._witness.publish(self.node, line)
            except Exception as exc:  # noqa: BLE001 - committed already: fail closed, never crash
                if self._witness_error is None:
                    detail = exc.detail if isinstance(exc, SceauError) else type(exc).__name__
                    log.error("audit node %s: checkpoint at node_seq %d not witnessed: %s; "
                              "refusing new calls until it is", self.node, head.node_seq,
                              detail)
                self._witness_error = type(exc).__name__
                return False
            self._unwitnessed.pop(0)
            self._witnessed = WitnessPoint(node=self.node, node_seq=head.node_seq,
                                           hash=head.hash, source=str(self._witness))
        if self._witness_error is not None:
            log.info("audit node %s: the witness takes checkpoints again", self.node)
            self._witness_error = None
        return True

    def _head_seq(self, conn: sa.Connection, head: ChainHead) -> int:
        found = audit.chain_head(conn, head.node)
        return found[2] if found is not None else 0

    def _audit_jwks(self) -> dict[str, Any]:
        """The audit keys only: a checkpoint is never signed by the response key."""
        infos = self._keystore.signing_keys(KeyPurpose.AUDIT)
        return {"keys": [dict(info.public_jwk) for info in infos]}

    def _sign_audit(self, digest: bytes) -> bytes:
        _info, sig = self._keystore.sign(KeyPurpose.AUDIT, digest)
        return sig

    def _event(self, ctx: AuditContext, now_ms: int, outcome: Outcome, reason: str | None,
               key: str | None, details: dict[str, Any]) -> AuditEvent:
        return AuditEvent(time_ms=now_ms, app=ctx.app, user=ctx.user, ip=ctx.ip,
                          action=ctx.action, outcome=outcome, reason=reason, key=key,
                          req=ctx.req, details=dict(details))

    def _prologue(self, conn: sa.Connection, jobs: Sequence[Job]) -> list[bool]:
        """Before the jobs: remember their request ids and hand the store's revision
        counters to :attr:`before_jobs`; on PostgreSQL both in one round trip.

        Returns, per job, True when its request id was used before (in the store, or by an
        earlier job of this batch). The ids are remembered whatever their jobs' outcome,
        as a refused request's id is used too.
        """
        replayed = [False] * len(jobs)
        if not jobs:
            return replayed
        entries: list[tuple[str, str, int]] = []
        owners: list[int] = []
        for index, job in enumerate(jobs):
            if job.jti is not None:
                entries.append(job.jti)
                owners.append(index)
        more = [applications.revisions_call(conn)] if self.before_jobs else []
        fresh, results = applications.remember_jtis_and(conn, entries, more)
        for index, is_new in zip(owners, fresh, strict=True):
            replayed[index] = not is_new
        if self.before_jobs:
            revisions = applications.revisions_of(results[0])
            for hook in self.before_jobs:
                hook(conn, revisions)
        return replayed

    def _run_job(
        self, conn: sa.Connection, job: Job, tx: Tx, isolate: bool, replayed: bool
    ) -> tuple[Any, SceauError | None]:
        try:
            if replayed:
                raise ReplayedRequest("this request id was already used")
            if job.fn is None:
                return None, None
            return _run_retrying(conn, job.fn, tx, isolate), None
        except _PartialWrite:
            raise
        except SceauError as exc:
            tx.items.clear()
            if exc.status >= 500 and isinstance(exc, AuditUnavailable):
                raise
            return None, exc
        except sa.exc.IntegrityError:
            # A constraint refused the job's write; its savepoint is rolled back and the
            # rest of the batch goes on.
            log.exception("job for %s hit a constraint", job.ctx.action)
            tx.items.clear()
            return None, InternalError("internal error")
        except sa.exc.DBAPIError:
            raise
        except Exception:  # a bug must not take the batch down with it
            log.exception("job for %s failed", job.ctx.action)
            tx.items.clear()
            return None, InternalError("internal error")


Settlement = tuple[Any, BaseException | None]


def _settle(jobs: Sequence[Job], settlements: Sequence[Settlement]) -> None:
    """Hand each job its outcome: thread futures directly, asyncio futures per loop at once."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Settlement]]] = {}
    for job, settlement in zip(jobs, settlements, strict=True):
        if job.waiter is None:
            value, exc = settlement
            if exc is None:
                job.future.set_result(value)
            else:
                job.future.set_exception(exc)
        else:
            by_loop.setdefault(job.waiter.get_loop(), []).append((job.waiter, settlement))
    for loop, pending in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            loop.call_soon_threadsafe(_settle_in_loop, pending)


def _settle_in_loop(pending: Sequence[tuple[asyncio.Future[Any], Settlement]]) -> None:
    for waiter, (value, exc) in pending:
        if waiter.done():  # cancelled: the caller went away
            continue
        if exc is None:
            waiter.set_result(value)
        else:
            waiter.set_exception(exc)


@contextlib.contextmanager
def savepoint(conn: sa.Connection, name: str) -> Iterator[None]:
    """A plain SQL savepoint: a failure inside undoes its writes and nothing else.

    Valid on SQLite and PostgreSQL. Used per job when a batch runs isolated, and per item by
    the console's bulk actions: SQLAlchemy's nested-transaction objects cost more than the
    statements themselves.
    Names must differ between nesting levels (``sceau_job``, ``sceau_item``).
    """
    driver.sql(conn, f"SAVEPOINT {name}")
    try:
        yield
    except BaseException:
        driver.sql(conn, f"ROLLBACK TO SAVEPOINT {name}")
        driver.sql(conn, f"RELEASE SAVEPOINT {name}")
        raise
    driver.sql(conn, f"RELEASE SAVEPOINT {name}")


class _PartialWrite(Exception):  # noqa: N818 - internal control flow, never escapes
    """A job failed after writing, or on a database error, outside a savepoint."""


def _run_isolated(conn: sa.Connection, fn: JobFn, tx: Tx, isolate: bool) -> Any:
    """Run a job so that, if it fails, none of its writes survive.

    A savepoint per job costs three statements (three round trips on PostgreSQL), and most
    failures are refusals decided before any write. So a job first runs without one, and
    the connection's count of row-changing statements (``driver.writes``) tells whether a
    failing job had written. If it had, or if it failed on a database error (which aborts
    a PostgreSQL transaction), :class:`_PartialWrite` makes the writer roll the batch back
    and run it again with a savepoint per job (``isolate``), as it does after a deadlock:
    job functions are pure functions of their transaction.
    """
    if isolate:
        with savepoint(conn, "sceau_job"):
            return fn(tx)
    before = driver.writes(conn)
    try:
        return fn(tx)
    except sa.exc.DBAPIError as exc:
        raise _PartialWrite from exc
    except BaseException as exc:
        if driver.writes(conn) != before:
            raise _PartialWrite from exc
        raise


def _run_retrying(conn: sa.Connection, fn: JobFn, tx: Tx, isolate: bool) -> Any:
    """Run a job (:func:`_run_isolated`), again while a key record it read was changed by
    another node before the job wrote it (:class:`ConcurrentUpdate`).

    The losing write changed nothing but counts as one, so outside a savepoint the conflict
    first makes the batch run again, every job in its own savepoint. Inside one, the job
    runs again here in the same transaction: each PostgreSQL statement reads what was
    committed when it started, so the next run reads the other node's version. Each run
    starts from the audit context the job was submitted with. After ``MAX_JOB_RETRIES``
    runs the conflict fails the job (an internal error).
    """
    key, details = tx.ctx.key, dict(tx.ctx.details)
    runs = 1
    while True:
        try:
            return _run_isolated(conn, fn, tx, isolate)
        except ConcurrentUpdate:
            if runs == MAX_JOB_RETRIES:
                raise
            runs += 1
            log.info("job for %s: a key record changed meanwhile; running it again",
                     tx.ctx.action)
            tx.ctx.key, tx.ctx.details = key, dict(details)
            tx.items.clear()


def _sqlstate(exc: sa.exc.DBAPIError) -> str | None:
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return str(code) if code is not None else None


def _is_retryable(exc: sa.exc.DBAPIError) -> bool:
    """PostgreSQL deadlock or serialization failure: the whole batch can run again."""
    return _sqlstate(exc) in ("40P01", "40001")
