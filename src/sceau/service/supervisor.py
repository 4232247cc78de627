"""``sceau serve --workers N``: N worker processes forked from a parent that only supervises.

The parent holds nothing a fork must not copy: no runtime, keystore session, database
connection or thread; only the listening socket, the TLS context and pipes. Each worker
opens its own runtime after the fork (so its own audit node and writer) and serves the
shared socket; the kernel hands each new connection to one of the accepting workers.

What the parent does:

* it starts the workers and announces the service (``on_ready``) once every one of them
  has reported, over a pipe of its own, that it accepts connections; a worker that exits
  before that stops the start (the service never runs short of a worker from the outset);
* it replaces a worker that dies afterwards (a crash, a SIGKILL), after a delay that grows
  while replacements keep dying young, so a crash loop does not spin. The parent reaps the
  dead worker before starting the next one, so the replacement sees the old holder of the
  audit node lease as gone and takes the lease over at once (``store.nodelease``);
* on SIGTERM or SIGINT it sends SIGTERM to every worker, waits while they finish their
  requests and flush their audit writers, and reports success only if every worker did.
  A worker still running :data:`STOP_GRACE_S` seconds later is killed.

Workers ask the kernel for SIGTERM when the parent dies (Linux), so a supervisor killed
outright does not leave workers serving on their own.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import selectors
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import NoReturn

log = logging.getLogger("sceau.server")

#: How long workers may take to stop (their own graceful shutdown is 10 s, then the writer
#: flushes) before the parent kills them.
STOP_GRACE_S = 30.0
#: A worker that dies within this many seconds of its start counts as a quick failure.
QUICK_FAILURE_S = 10.0
#: Replacement delay after the n-th quick failure in a row: 0.5 s, 1 s, 2 s, ... up to 30 s.
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
_PR_SET_PDEATHSIG = 1

#: The code a worker runs: ``run(slot, ready)`` serves until stopped and returns the exit
#: status; it calls ``ready(name)`` once it accepts connections (``name``: its audit node).
WorkerMain = Callable[[int, Callable[[str], None]], int]


@dataclass
class _Worker:
    slot: int
    pid: int
    ready_fd: int
    started: float
    node: str = ""
    ready: bool = False


class Supervisor:
    """Runs ``count`` workers of ``main`` and supervises them until told to stop."""

    def __init__(self, count: int, main: WorkerMain,
                 on_ready: Callable[[], None] | None = None) -> None:
        if count < 1:
            raise ValueError("at least one worker")
        self._count = count
        self._main = main
        self._on_ready = on_ready
        self._workers: dict[int, _Worker] = {}
        self._failures = [0] * count
        self._respawn_at: dict[int, float] = {}
        self._selector = selectors.DefaultSelector()
        self._wake_r = -1
        self._wake_w = -1
        self._stop_signal: int | None = None
        self._stopping = False
        self._stop_deadline = 0.0
        self._killed = False
        self._announced = False
        self._start_failed = False
        self._clean = True

    # --- the parent ---------------------------------------------------------------------

    def run(self) -> int:
        """Start the workers and supervise them; the exit status once all have stopped."""
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        previous_fd = signal.set_wakeup_fd(self._wake_w)
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)}
        try:
            for slot in range(self._count):
                self._spawn(slot)
            self._loop()
        finally:
            signal.set_wakeup_fd(previous_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._selector.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
        if self._start_failed:
            log.error("a worker could not start: the service stopped")
            return 1
        return 0 if self._clean else 1

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Only note it: the loop, woken by the wakeup fd, acts on it.
        if signum != signal.SIGCHLD and self._stop_signal is None:
            self._stop_signal = signum

    def _loop(self) -> None:
        while True:
            if self._stop_signal is not None and not self._stopping:
                log.info("stopping: signal %d, waiting for %d worker(s)",
                         self._stop_signal, len(self._workers))
                self._begin_stop()
            self._reap()
            if self._stopping:
                if not self._workers:
                    return
                if not self._killed and time.monotonic() > self._stop_deadline:
                    log.error("%d worker(s) did not stop within %.0f s: killing them",
                              len(self._workers), STOP_GRACE_S)
                    self._clean = False
                    self._signal_all(signal.SIGKILL)
                    self._killed = True
            else:
                self._respawn_due()
                self._announce_when_ready()
            for key, _events in self._selector.select(self._timeout()):
                if key.fd == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(self._wake_r, 512):
                            pass
                else:
                    self._read_ready(key.fd)

    def _timeout(self) -> float:
        if self._respawn_at and not self._stopping:
            soonest = min(self._respawn_at.values()) - time.monotonic()
            return max(0.0, min(soonest, 0.5))
        return 0.5

    def _spawn(self, slot: int) -> None:
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker: never returns
            os.close(ready_r)
            self._become_worker(slot, ready_w)
        os.close(ready_w)
        self._workers[pid] = _Worker(slot=slot, pid=pid, ready_fd=ready_r,
                                     started=time.monotonic())
        self._selector.register(ready_r, selectors.EVENT_READ)
        log.info("worker started", extra={"fields": {"worker": slot + 1, "pid": pid}})

    def _read_ready(self, fd: int) -> None:
        worker = next((w for w in self._workers.values() if w.ready_fd == fd), None)
        try:
            data = os.read(fd, 256)
        except OSError:
            data = b""
        if not data or worker is None:
            # EOF: the worker closed its end (it exits); it is reaped by waitpid.
            self._selector.unregister(fd)
            return
        worker.ready = True
        worker.node = data.decode("ascii", "replace").strip()
        log.info("worker ready", extra={"fields": {"worker": worker.slot + 1, "pid": worker.pid,
                                                   "node": worker.node}})

    def _announce_when_ready(self) -> None:
        if self._announced:
            return
        ready = sum(1 for w in self._workers.values() if w.ready)
        if ready == self._count:
            self._announced = True
            if self._on_ready is not None:
                self._on_ready()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self._workers.pop(pid, None)
            if worker is None:
                continue
            self._forget(worker)
            code = os.waitstatus_to_exitcode(status)
            fields = {"worker": worker.slot + 1, "pid": pid, "node": worker.node,
                      "status": code}  # negative: the signal that killed it
            if self._stopping:
                if code != 0:
                    self._clean = False
                    log.error("worker failed to stop cleanly", extra={"fields": fields})
                continue
            log.error("worker exited unexpectedly", extra={"fields": fields})
            if not self._announced:
                # Fail the start as one process would: the error is in the log above.
                self._start_failed = True
                self._begin_stop()
                continue
            self._schedule_respawn(worker)

    def _schedule_respawn(self, worker: _Worker) -> None:
        lived = time.monotonic() - worker.started
        slot = worker.slot
        if worker.ready and lived >= QUICK_FAILURE_S:
            self._failures[slot] = 0
        else:
            self._failures[slot] += 1
        failures = self._failures[slot]
        delay = 0.0 if failures == 0 else min(BACKOFF_MAX_S,
                                              BACKOFF_FIRST_S * 2 ** (failures - 1))
        self._respawn_at[slot] = time.monotonic() + delay
        log.warning("worker replaced after a delay",
                    extra={"fields": {"worker": slot + 1, "delay_s": delay}})

    def _respawn_due(self) -> None:
        now = time.monotonic()
        for slot, at in sorted(self._respawn_at.items()):
            if at <= now:
                del self._respawn_at[slot]
                self._spawn(slot)

    def _forget(self, worker: _Worker) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(worker.ready_fd)
        os.close(worker.ready_fd)

    def _begin_stop(self) -> None:
        self._stopping = True
        self._respawn_at.clear()
        self._stop_deadline = time.monotonic() + STOP_GRACE_S
        self._signal_all(signal.SIGTERM)

    def _signal_all(self, sig: int) -> None:
        for pid in list(self._workers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    # --- a worker -----------------------------------------------------------------------

    def _become_worker(self, slot: int, ready_w: int) -> NoReturn:
        """The forked child: drop the parent's state, run ``main``, and exit (never returns)."""
        code = 1
        try:
            parent = os.getppid()
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            self._selector.close()
            for fd in (self._wake_r, self._wake_w, *(w.ready_fd for w in self._workers.values())):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._workers.clear()
            _die_with_parent(parent)

            def ready(name: str) -> None:
                os.write(ready_w, (name or "-").encode("ascii", "replace") + b"\n")

            code = self._main(slot, ready)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except BaseException:
            log.exception("worker %d failed", slot + 1)
            code = 1
        finally:
            with contextlib.suppress(Exception):
                logging.shutdown()
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)


def _die_with_parent(parent: int) -> None:
    """Ask for SIGTERM when the parent dies (Linux): a worker never serves unsupervised."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        log.warning("worker: cannot ask to stop with the supervisor (prctl failed)")
    if os.getppid() != parent:  # the parent died before the request took effect
        raise SystemExit(0)


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity mask), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)
