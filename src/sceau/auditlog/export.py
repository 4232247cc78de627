"""Exports of the audit trail: JSON Lines exactly as stored, RFC 5424 syslog, and follow.

Order of an export: records by ``seq``; each checkpoint right after the record it names
(``after_seq``). A checkpoint whose record is not stored (deleted behind the service's back,
or archived: the anchors kept at an archive boundary) is still exported, at its place in
``after_seq`` order: it is what lets a verifier see the removal, or continue a chain across
the boundary. A store export after an archive therefore starts with the anchor checkpoints.

These functions are the one implementation behind ``sceau audit export`` and any HTTP
export (console, roles ``auditor``/``admin``): they yield lines without the newline.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import sqlalchemy as sa

from sceau.auditlog.syslog import SyslogOptions, syslog_line
from sceau.errors import InvalidRequest
from sceau.store import audit
from sceau.store.audit import CheckpointRow, RecordRow
from sceau.store.db import Engines

__all__ = [
    "DEFAULT_PG_LAG_S",
    "ExportFormat",
    "StreamItem",
    "follow_export",
    "format_lines",
    "iter_export",
    "iter_stream",
    "write_atomic",
]

PAGE = 2000
# PostgreSQL nodes draw seq from one sequence and commit independently: a record with a
# lower seq can become visible after a higher one. `--follow` emits a seq only once it was
# allocated this long ago, which must exceed the longest audit write transaction.
DEFAULT_PG_LAG_S = 5.0

StreamItem = RecordRow | CheckpointRow


class ExportFormat(StrEnum):
    """Export line formats."""

    JSONL = "jsonl"
    SYSLOG = "syslog"


def _merge(
    records: Iterator[RecordRow], checkpoints: Iterator[CheckpointRow]
) -> Iterator[StreamItem]:
    """Interleave: a checkpoint goes after every record with ``seq <= after_seq``."""
    rec = next(records, None)
    cp = next(checkpoints, None)
    while rec is not None:
        if cp is not None and cp.after_seq < rec.seq:
            yield cp
            cp = next(checkpoints, None)
        else:
            yield rec
            rec = next(records, None)
    if cp is not None:  # checkpoints after the last record
        yield cp
        yield from checkpoints


def _record_pages(conn: sa.Connection, since: int, until: int | None) -> Iterator[RecordRow]:
    position = since
    while True:
        rows = audit.records_between(conn, position, until, PAGE)
        yield from rows
        if len(rows) < PAGE:
            return
        position = rows[-1].seq


def _checkpoint_pages(
    conn: sa.Connection, since: int, until: int | None
) -> Iterator[CheckpointRow]:
    after: tuple[int, str, int] = (since, "", 0)
    while True:
        rows = audit.checkpoints_between(conn, after, until, since, PAGE)
        yield from rows
        if len(rows) < PAGE:
            return
        last = rows[-1]
        after = (last.after_seq, last.node, last.node_seq)


def iter_stream(
    conn: sa.Connection, *, since: int = 0, until: int | None = None
) -> Iterator[StreamItem]:
    """Stored records and checkpoints with ``since < seq <= until``, in export order.

    Call :func:`sceau.store.audit.snapshot` on a fresh connection first for a consistent
    view on PostgreSQL.
    """
    if since < 0:
        raise InvalidRequest("since: a non-negative seq")
    return _merge(_record_pages(conn, since, until), _checkpoint_pages(conn, since, until))


def format_lines(
    items: Iterable[StreamItem], fmt: ExportFormat, syslog: SyslogOptions | None = None
) -> Iterator[str]:
    """The lines of ``items`` in ``fmt`` (stored JSON Lines, or RFC 5424 syslog)."""
    if fmt is ExportFormat.JSONL:
        for item in items:
            yield item.line
        return
    options = syslog or SyslogOptions()
    for item in items:
        yield syslog_line(item.line, options)


def iter_export(
    engines: Engines,
    fmt: ExportFormat,
    since: int = 0,
    *,
    until: int | None = None,
    syslog: SyslogOptions | None = None,
) -> Iterator[str]:
    """One-shot export from one consistent snapshot of the store (lines, no newline).

    ``since`` skips records with ``seq <= since`` and the checkpoints naming them: such an
    export is a continuation (for a SOC feed) and verifies only after the part before it.
    """
    with engines.read.connect() as conn:
        audit.snapshot(conn)
        with conn.begin():
            yield from format_lines(iter_stream(conn, since=since, until=until), fmt, syslog)


@dataclass
class _FollowState:
    position: int
    checkpoints_done: dict[str, int] = field(default_factory=dict)
    observed: deque[tuple[float, int]] = field(default_factory=deque)


def _horizon(state: _FollowState, now: float, newest: int, lag_s: float) -> int:
    """The highest seq safe to emit: the newest seq seen at least ``lag_s`` ago."""
    state.observed.append((now, newest))
    safe = state.position
    while state.observed and state.observed[0][0] <= now - lag_s:
        safe = max(safe, state.observed.popleft()[1])
    return safe


def _poll(conn: sa.Connection, state: _FollowState, horizon: int) -> list[StreamItem]:
    """New records up to ``horizon``, and new checkpoints naming records up to it."""
    records = audit.records_between(conn, state.position, horizon, 1 << 30)
    fresh: list[CheckpointRow] = []
    for node, top in audit.checkpoint_heads(conn).items():
        done = state.checkpoints_done.get(node, 0)
        if top <= done:
            continue
        for cp in audit.checkpoints_after(conn, node, done):
            if cp.after_seq > horizon:
                break  # its record is not emitted yet: wait for it
            fresh.append(cp)
    fresh.sort(key=lambda c: (c.after_seq, c.node, c.node_seq))
    for cp in fresh:
        state.checkpoints_done[cp.node] = cp.node_seq
    state.position = max(state.position, horizon)
    return list(_merge(iter(records), iter(fresh)))


def follow_export(
    engines: Engines,
    fmt: ExportFormat,
    since: int = 0,
    *,
    poll_s: float = 1.0,
    lag_s: float | None = None,
    syslog: SyslogOptions | None = None,
    stop: Callable[[], bool] = lambda: False,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[str]:
    """Everything after ``since``, then new records and checkpoints as they are committed.

    SQLite allocates ``seq`` and commits under one writer lock, so commit order is seq
    order and ``lag_s`` defaults to 0. On PostgreSQL a record is emitted once its seq was
    allocated ``lag_s`` (default :data:`DEFAULT_PG_LAG_S`) ago, so that a slower node's
    lower seq is not overtaken. Late checkpoints (an idle checkpoint names an old record)
    are emitted when they appear; verifiers accept a checkpoint after later records.
    Stops when ``stop()`` is true (checked once per poll).
    """
    if lag_s is None:
        lag_s = 0.0 if engines.is_sqlite else DEFAULT_PG_LAG_S
    state = _FollowState(position=since)
    caught_up = False
    while not stop():
        with engines.read.connect() as conn:
            audit.snapshot(conn)
            with conn.begin():
                horizon = _horizon(state, clock(), audit.max_seq(conn), lag_s)
                if not caught_up:
                    # The backlog, paged like a one-shot export; then track checkpoints per
                    # node, since an idle checkpoint can name a record emitted long ago.
                    backlog = iter_stream(conn, since=since, until=horizon)
                    yield from format_lines(backlog, fmt, syslog)
                    state.checkpoints_done = audit.checkpoint_heads(conn, until=horizon)
                    state.position = max(state.position, horizon)
                    caught_up = horizon > since or lag_s == 0
                else:
                    yield from format_lines(_poll(conn, state, horizon), fmt, syslog)
        if not stop():
            sleep(poll_s)


def write_atomic(path: Path, lines: Iterable[str], *, exclusive: bool = False) -> int:
    """Write ``lines`` (newline-terminated) to ``path`` atomically; return the line count.

    A temporary file in the same directory is written, fsynced and renamed over ``path``,
    then the directory is fsynced: a reader sees the old file or the whole new one. With
    ``exclusive`` an existing ``path`` is refused (archives are never overwritten).
    """
    directory = path.resolve().parent
    if exclusive and path.exists():
        raise InvalidRequest(f"output: {path} exists; archives are never overwritten")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
            for line in lines:
                out.write(line)
                out.write("\n")
                count += 1
            out.flush()
            os.fsync(out.fileno())
        if exclusive:
            # link() fails if the name appeared meanwhile, where rename() would replace it.
            os.link(tmp_name, path)
            os.unlink(tmp_name)
        else:
            os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return count
