"""Witnesses: every checkpoint also leaves the store it protects (SECURITY-CASES 48).

A checkpoint stored next to the records it covers protects nothing against someone who can
delete rows: they delete the checkpoints too. So each checkpoint, once its transaction has
committed (never before: a commit that fails must not leave a witnessed checkpoint the
store never had), is also written to:

- the **witness file** ``audit.witness_dir/<node>.jsonl`` (default ``DATA_DIR/witness``,
  mode 0700): one exact signed checkpoint line per checkpoint, appended with ``O_APPEND``
  in one ``write()`` and fsynced. One file per node, so a node reads its own last witnessed
  checkpoint at start without scanning the others' (and no two processes ever append to
  one file: a node id is leased). A failure here is loud and fails closed (the writer
  refuses new calls until the line is written, see docs/audit.md);
- the **syslog stream** ``audit.witness_syslog`` (``udp://host:514``, ``tcp://host:601``,
  ``unix:/dev/log``; off when empty): the RFC 5424 message of :mod:`sceau.auditlog.syslog`,
  sent by a background thread that retries with a bounded backlog. Its failures are logged
  and counted but never block calls: the file witness still stands;
- a **countersigning witness** ``audit.witness_url`` (off when empty): each checkpoint line
  is POSTed to it (another Sceau service: :mod:`sceau.service.witness_api`) and the
  countersignature it answers is appended to the node's witness file, next to the
  checkpoint, as a ``{"type": "countersignature", ...}`` line. Same thread rules as syslog.

The reading side (:func:`read_witness`) takes witness files, directories of them, syslog
captures and JSON Lines exports, and keeps every signed checkpoint or record in them whose
signature verifies: positions the store must still reach (``sceau audit verify --witness``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx

from sceau.auditlog.syslog import BOM, SyslogOptions, facility_code, syslog_line
from sceau.config import Config
from sceau.core.verify import (
    AuditPublicKey,
    ProblemKind,
    VerifyProblem,
    WitnessIndex,
    WitnessPoint,
    jwks_public_keys,
    witness_point,
)
from sceau.errors import AuditUnavailable, ConfigError, IntegrityFailure, InvalidRequest
from sceau.store.nodes import valid_node_id

__all__ = [
    "COUNTERSIGNATURE_TYPE",
    "WITNESS_DIR_NAME",
    "HttpsWitness",
    "SyslogTarget",
    "SyslogWitness",
    "Witness",
    "WitnessEvidence",
    "WitnessFile",
    "WitnessSettings",
    "WitnessUnavailable",
    "extract_json",
    "open_witness",
    "read_witness",
    "witness_settings",
]

log = logging.getLogger("sceau.audit")

WITNESS_DIR_NAME = "witness"
WITNESS_SUFFIX = ".jsonl"
COUNTERSIGNATURE_TYPE = "countersignature"
_HTTP_TIMEOUT_S = 10.0
_MAX_ANSWER_BYTES = 16 * 1024
_READ_BLOCK = 64 * 1024
# Remote witness messages kept while the destination is away (one per checkpoint: at the
# default 10 s interval, 10 000 is more than a day of a busy node).
MAX_BACKLOG = 10_000
_RETRY_MIN_S, _RETRY_MAX_S = 0.5, 30.0
_LOG_EVERY_S = 60.0
_CONNECT_TIMEOUT_S = 5.0


class WitnessUnavailable(AuditUnavailable):
    """The witness file cannot be written: calls are refused until it can (fail closed)."""


# --- settings --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyslogTarget:
    """Where witness messages go: ``udp://host:port``, ``tcp://host:port`` or ``unix:PATH``."""

    transport: str  # "udp" | "tcp" | "unix"
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> SyslogTarget:
        """Parse a destination; :class:`ConfigError` names what is wrong."""
        if text.startswith("unix:"):
            path = text[len("unix:"):]
            if not path.startswith("/"):
                raise ConfigError("audit.witness_syslog: unix:/absolute/path")
            return cls("unix", path, 0)
        scheme, sep, rest = text.partition("://")
        if not sep or scheme not in ("udp", "tcp"):
            raise ConfigError(
                "audit.witness_syslog: udp://host:port, tcp://host:port or unix:/path"
            )
        host, colon, port_text = rest.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not colon or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ConfigError(f"audit.witness_syslog: {scheme}://host:port with a port 1-65535")
        return cls(scheme, host, int(port_text))

    def __str__(self) -> str:
        if self.transport == "unix":
            return f"unix:{self.host}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}://{host}:{self.port}"


@dataclass(frozen=True)
class WitnessSettings:
    """The witnesses of one data dir's configuration."""

    directory: Path
    syslog: SyslogTarget | None = None
    syslog_options: SyslogOptions = field(default_factory=SyslogOptions)
    url: str = ""  # the countersigning witness, or ""
    url_ca: Path | None = None  # PEM bundle its TLS certificate must chain to (else system)


def witness_settings(config: Config) -> WitnessSettings:
    """The witness settings of a configuration (``audit.witness_*``)."""
    audit = config.audit
    try:
        facility = facility_code(audit.witness_syslog_facility)
    except InvalidRequest as exc:
        raise ConfigError(f"audit.witness_syslog_facility: {exc.detail}") from None
    ca = audit.witness_url_ca
    if ca and not Path(ca).is_file():
        raise ConfigError(f"audit.witness_url_ca: {ca} is not a file")
    return WitnessSettings(
        # A relative directory is taken in the data dir, whatever the working directory.
        directory=config.data_dir / (audit.witness_dir or WITNESS_DIR_NAME),
        syslog=SyslogTarget.parse(audit.witness_syslog) if audit.witness_syslog else None,
        syslog_options=SyslogOptions(facility=facility),
        url=audit.witness_url,
        url_ca=Path(ca) if ca else None,
    )


# --- the witness file ------------------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WitnessFile:
    """The append-only witness files of one directory, one per node."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._torn: set[str] = set()
        # The writer thread appends checkpoints, the countersigning thread their receipts.
        self._lock = threading.Lock()

    def prepare(self) -> None:
        """Create the directory (0700) if needed; refuse one that others may write to."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = os.lstat(self.directory)
        except OSError as exc:
            raise ConfigError(
                f"audit witness dir {self.directory}: cannot create it ({type(exc).__name__})"
            ) from None
        if not stat.S_ISDIR(info.st_mode):
            raise ConfigError(f"audit witness dir {self.directory} is not a directory")
        if info.st_mode & stat.S_IWOTH:
            raise ConfigError(
                f"audit witness dir {self.directory} is writable by every user: "
                "chmod 0700 it (anyone could remove the evidence)"
            )

    def path(self, node: str) -> Path:
        """The node's witness file (node ids never contain a path separator)."""
        if not valid_node_id(node):
            raise ConfigError(f"audit node id {node[:64]!r} cannot name a witness file")
        return self.directory / f"{node}{WITNESS_SUFFIX}"

    def open_node(self, node: str) -> None:
        """Create the node's file if absent; end a line torn by a crash, so that the next
        line starts cleanly (the torn fragment is then skipped as unreadable)."""
        path = self.path(node)
        existed = path.exists()
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                log.warning("audit witness %s ends with a torn line; ending it", path)
                os.write(fd, b"\n")
                os.fsync(fd)
        finally:
            os.close(fd)
        if not existed:
            _fsync_dir(self.directory)

    def append(self, node: str, line: str) -> None:
        """Append one line durably, in one ``write()``; OSError when it cannot."""
        with self._lock:
            self._append(node, line)

    def last_line(self, node: str) -> str | None:
        """The file's last non-empty line (to skip a repeated line), or None."""
        try:
            for raw in _tail_lines(self.path(node)):
                if raw.strip():
                    return raw.decode("utf-8", errors="replace").strip()
        except FileNotFoundError:
            return None
        return None

    def _append(self, node: str, line: str) -> None:
        path = self.path(node)
        data = (("\n" if node in self._torn else "") + line + "\n").encode("utf-8")
        existed = path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            written = os.write(fd, data)
            if written != len(data):
                self._torn.add(node)
                raise OSError(errno.EIO, "short write to the witness file")
            os.fsync(fd)
        finally:
            os.close(fd)
        self._torn.discard(node)
        if not existed:
            _fsync_dir(self.directory)

    def last_checkpoint(
        self, node: str, keys: Callable[[], Mapping[str, AuditPublicKey]]
    ) -> WitnessPoint | None:
        """The node's last checkpoint in its file whose signature verifies with ``keys()``
        (asked once, and only if there is a checkpoint line), or None.

        Read from the end. A line that does not verify is skipped with a warning: a forged
        line must not decide where the chain stands (``sceau audit verify --witness``
        reports it).
        """
        path = self.path(node)
        if not path.exists():
            return None
        known: dict[str, AuditPublicKey] | None = None
        for raw in _tail_lines(path):  # lazily: the file may hold years of checkpoints
            text = raw.decode("utf-8", errors="replace").strip()
            obj = _json_object(text)
            if obj is None or obj.get("type") != "checkpoint":
                continue
            if known is None:
                known = dict(keys())
            try:
                point = witness_point(text, known, f"{path}, last checkpoint")
            except IntegrityFailure as exc:
                log.warning("audit witness: skipping a line that does not verify: %s",
                            exc.detail)
                continue
            if point is None or point.node != node:
                log.warning("audit witness %s holds a checkpoint of another node", path)
                continue
            return point
        return None


def _tail_lines(path: Path) -> Iterator[bytes]:
    """The file's lines, last first (read in blocks from the end)."""
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        position = handle.tell()
        rest = b""
        while position > 0:
            step = min(_READ_BLOCK, position)
            position -= step
            handle.seek(position)
            rest = handle.read(step) + rest
            parts = rest.split(b"\n")
            rest = parts[0]
            yield from reversed(parts[1:])
        if rest:
            yield rest


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# --- the syslog stream -----------------------------------------------------------------------


Item = TypeVar("Item")


class _RemoteWitness(Generic[Item]):
    """Delivers items from a thread of its own, in order, retrying with backoff.

    Undelivered items wait in a bounded backlog; when it overflows the oldest are dropped
    and counted. The first failure is logged as an error, then one error a minute while it
    lasts; a recovery is logged too.
    """

    def __init__(self, name: str, max_backlog: int = MAX_BACKLOG) -> None:
        self.name = name
        self._backlog: deque[Item] = deque()
        self._max = max_backlog
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.sent = 0
        self.failures = 0
        self.dropped = 0
        self.last_error: str | None = None
        self._last_log = 0.0

    def __str__(self) -> str:
        return self.name

    def _queue(self, item: Item) -> None:
        with self._cond:
            if len(self._backlog) >= self._max:
                self._backlog.popleft()
                self.dropped += 1
                log.error("audit witness %s: backlog full, oldest message dropped", self.name)
            self._backlog.append(item)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sceau-witness",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    @property
    def backlog(self) -> int:
        """Items not delivered yet."""
        with self._cond:
            return len(self._backlog)

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (for at most ``timeout`` seconds), then stop."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        left = self.backlog
        if left:
            log.error("audit witness %s: %d message(s) not delivered at shutdown", self.name,
                      left)
        self._disconnect()

    def _run(self) -> None:
        delay = _RETRY_MIN_S
        while True:
            with self._cond:
                while not self._backlog and not self._stopping:
                    self._cond.wait()
                if not self._backlog:
                    return
                item = self._backlog[0]
            try:
                self._deliver(item)
            except OSError as exc:
                self._failed(exc)
                with self._cond:
                    if self._stopping:
                        return  # close() reports what is left
                    self._cond.wait(delay)
                delay = min(delay * 2, _RETRY_MAX_S)
                continue
            delay = _RETRY_MIN_S
            with self._cond:
                if self._backlog and self._backlog[0] is item:
                    self._backlog.popleft()
            if self.last_error is not None:
                log.info("audit witness %s reachable again", self.name)
            self.sent += 1
            self.last_error = None

    def _failed(self, exc: OSError) -> None:
        self._disconnect()
        self.failures += 1
        first = self.last_error is None
        # A refusal says why (an HTTP status); a socket error by its class, never a value.
        self.last_error = str(exc.strerror) if isinstance(exc, _Refused) else type(exc).__name__
        now = time.monotonic()
        if first or now - self._last_log >= _LOG_EVERY_S:
            self._last_log = now
            log.error("audit witness %s unreachable (%s): checkpoints wait in a backlog of %d",
                      self.name, self.last_error, self.backlog)

    def _deliver(self, item: Item) -> None:
        """Deliver one item; OSError when it could not be (it is retried)."""
        raise NotImplementedError

    def _disconnect(self) -> None:
        """Drop any connection after a failure or at close."""


class SyslogWitness(_RemoteWitness[bytes]):
    """Sends witness messages to a syslog destination.

    Framing: one datagram per message over UDP and ``unix:`` datagram sockets; over TCP (and
    a ``unix:`` stream socket) each message ends with LF (RFC 6587 non-transparent framing,
    which every collector reads and which a plain capture keeps one message per line; a
    message never contains a raw LF).
    """

    def __init__(self, target: SyslogTarget, options: SyslogOptions,
                 max_backlog: int = MAX_BACKLOG) -> None:
        super().__init__(str(target), max_backlog)
        self.target = target
        self.options = options
        self._sock: socket.socket | None = None
        self._stream = target.transport == "tcp"

    def send(self, line: str) -> None:
        """Queue the RFC 5424 message of one stored line; never blocks on the network."""
        self._queue(syslog_line(line, self.options).encode("utf-8"))

    def _connect(self) -> socket.socket:
        target = self.target
        if target.transport == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                sock.connect(target.host)
            except OSError as exc:
                sock.close()
                if exc.errno != errno.EPROTOTYPE:
                    raise
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(_CONNECT_TIMEOUT_S)
                sock.connect(target.host)
                self._stream = True
            return sock
        if target.transport == "tcp":
            return socket.create_connection((target.host, target.port),
                                            timeout=_CONNECT_TIMEOUT_S)
        family, kind, proto, _name, address = socket.getaddrinfo(
            target.host, target.port, type=socket.SOCK_DGRAM
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.connect(address)
        return sock

    def _deliver(self, item: bytes) -> None:
        if self._sock is None:
            self._sock = self._connect()
        if self._stream:
            self._sock.sendall(item + b"\n")
        else:
            self._sock.send(item)

    def _disconnect(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


class _Refused(OSError):
    """The countersigning witness answered, but not with a countersignature."""


class HttpsWitness(_RemoteWitness[tuple[str, str]]):
    """POSTs each checkpoint line to a countersigning witness and keeps its answer.

    The request body is the exact checkpoint line (``application/json``); the answer
    ``{"countersignature": "<compact JWS>"}``, which ``keep(node, line, jws)`` stores next to
    the checkpoint. TLS is verified (against ``ca``, else the system's CAs).
    """

    def __init__(self, url: str, ca: Path | None, keep: Callable[[str, str, str], None],
                 max_backlog: int = MAX_BACKLOG) -> None:
        super().__init__(url, max_backlog)
        self.url = url
        self._keep = keep
        self._client = httpx.Client(verify=str(ca) if ca else True, timeout=_HTTP_TIMEOUT_S,
                                    follow_redirects=False)

    def send(self, node: str, line: str) -> None:
        """Queue one checkpoint line of ``node``; never blocks on the network."""
        self._queue((node, line))

    def _deliver(self, item: tuple[str, str]) -> None:
        node, line = item
        try:
            answer = self._client.post(self.url, content=line.encode("utf-8"),
                                       headers={"Content-Type": "application/json"})
        except httpx.HTTPError as exc:
            raise _Refused(errno.ECONNREFUSED, type(exc).__name__) from None
        if answer.status_code != 200 or len(answer.content) > _MAX_ANSWER_BYTES:
            raise _Refused(errno.EPROTO, f"HTTP {answer.status_code}")
        try:
            jws = answer.json().get("countersignature")
        except (ValueError, AttributeError):
            jws = None
        if not isinstance(jws, str) or jws.count(".") != 2:
            raise _Refused(errno.EPROTO, "no countersignature in the answer")
        self._keep(node, line, jws)

    def _disconnect(self) -> None:
        """The HTTP client keeps its own pool; nothing to drop per failure."""

    def close(self, timeout: float = 5.0) -> None:
        super().close(timeout)
        self._client.close()


# --- the witness the writer uses -------------------------------------------------------------


class Witness:
    """Every witness of one process: the file (fail closed) and the remote streams.

    Implements :class:`sceau.store.writer.CheckpointWitness`.
    """

    def __init__(self, settings: WitnessSettings) -> None:
        self.settings = settings
        self.file = WitnessFile(settings.directory)
        self.syslog = (
            SyslogWitness(settings.syslog, settings.syslog_options) if settings.syslog else None
        )
        self.https = (
            HttpsWitness(settings.url, settings.url_ca, self._keep_countersignature)
            if settings.url else None
        )

    def __str__(self) -> str:
        return str(self.settings.directory)

    def open_node(
        self, node: str, jwks: Callable[[], Mapping[str, Any]]
    ) -> WitnessPoint | None:
        """Prepare ``node``'s witness file; its last witnessed checkpoint, if any, checked
        with the audit keys of ``jwks()`` (not asked when the file holds no checkpoint: an
        administrative command on a data dir without a keystore yet must still run)."""
        self.file.prepare()
        try:
            self.file.open_node(node)
            return self.file.last_checkpoint(node, lambda: jwks_public_keys(jwks()))
        except OSError as exc:
            raise ConfigError(
                f"audit witness file for node {node} in {self.settings.directory} cannot be "
                f"opened ({type(exc).__name__})"
            ) from None

    def publish(self, node: str, line: str) -> None:
        """Witness one committed checkpoint line: the file (raises
        :class:`WitnessUnavailable`), then the remote streams (never raises)."""
        try:
            self.file.append(node, line)
        except OSError as exc:
            raise WitnessUnavailable(
                f"the audit witness file cannot be written ({type(exc).__name__})"
            ) from None
        if self.syslog is not None:
            self.syslog.send(line)
        if self.https is not None:
            self.https.send(node, line)

    def _keep_countersignature(self, node: str, line: str, jws: str) -> None:
        """Store a countersignature next to its checkpoint (OSError: retried)."""
        checkpoint = json.loads(line)
        self.file.append(node, json.dumps({
            "type": COUNTERSIGNATURE_TYPE, "v": 1, "node": node,
            "node_seq": checkpoint["node_seq"], "hash": checkpoint["hash"],
            "witness": self.settings.url, "jws": jws,
        }, sort_keys=True, separators=(",", ":")))

    def close(self) -> None:
        """Flush the remote streams (briefly) and stop their threads."""
        for remote in self._remotes():
            remote.close()

    def _remotes(self) -> list[_RemoteWitness[Any]]:
        return [r for r in (self.syslog, self.https) if r is not None]

    def status(self) -> dict[str, Any]:
        """Counters of the remote streams (for metrics and logs)."""
        return {str(r): {"sent": r.sent, "failures": r.failures, "dropped": r.dropped,
                         "backlog": r.backlog, "error": r.last_error}
                for r in self._remotes()}


def open_witness(config: Config) -> Witness:
    """The witnesses a data dir's configuration asks for (the directory is made at open)."""
    return Witness(witness_settings(config))


# --- reading a witness (verification) --------------------------------------------------------


@dataclass(frozen=True)
class WitnessEvidence:
    """What witness files or captures vouch for: verified positions and bad lines."""

    sources: list[str]
    points: list[WitnessPoint]
    lines: int
    unreadable: int  # not JSON and no audit line inside (other programs' syslog, torn lines)
    problems: list[VerifyProblem]
    countersignatures: int = 0

    def index(self) -> tuple[WitnessIndex, list[VerifyProblem]]:
        """The positions indexed, and any conflict between them."""
        return WitnessIndex.of(self.points)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON for ``--json`` output."""
        return {"sources": self.sources, "positions": len(self.points), "lines": self.lines,
                "unreadable_lines": self.unreadable, "countersignatures": self.countersignatures}


def extract_json(text: str) -> str | None:
    """The audit line inside one witness line: the line itself (JSON Lines), or the MSG of
    an RFC 5424 message (after its BOM, or from the first ``{"`` when a collector dropped the
    BOM: structured data escapes every ``"``, so ``{"`` cannot occur before MSG)."""
    text = text.strip()
    if text.startswith("{"):
        return text
    if BOM in text:
        return text.split(BOM, 1)[1].strip()
    start = text.find('{"')
    return text[start:] if start >= 0 else None


def _files(path: Path) -> list[Path]:
    """A file as given; in a directory its ``*.jsonl`` files (a witness file moved aside,
    ``n1.jsonl.restored-DATE``, is then read only when named)."""
    if path.is_dir():
        return sorted(p for p in path.iterdir()
                      if p.is_file() and p.suffix == WITNESS_SUFFIX and not p.name.startswith("."))
    return [path]


def read_witness(paths: Sequence[Path], jwks: Mapping[str, Any]) -> WitnessEvidence:
    """Read witness files, directories of them, syslog captures or exports.

    Every checkpoint or record found is verified with ``jwks``; one that does not verify is
    a ``bad_witness`` problem (someone wrote in the witness). Raises :class:`InvalidRequest`
    when a path cannot be read (an empty witness is not an error: nothing was witnessed yet,
    and the output says so).
    """
    keys = jwks_public_keys(jwks)
    sources: list[str] = []
    points: list[WitnessPoint] = []
    problems: list[VerifyProblem] = []
    lines = unreadable = countersigned = 0
    for given in paths:
        for path in _files(given):
            sources.append(str(path))
            try:
                handle = path.open(encoding="utf-8", errors="replace", newline="")
            except OSError as exc:
                raise InvalidRequest(f"witness: cannot read {path}: {type(exc).__name__}") from None
            with handle:
                for number, raw in enumerate(handle, start=1):
                    if not raw.strip():
                        continue
                    lines += 1
                    text = extract_json(raw)
                    obj = _json_object(text) if text is not None else None
                    if text is None or obj is None:
                        unreadable += 1
                        continue
                    where = f"{path} line {number}"
                    try:
                        point = witness_point(text, keys, where)
                    except IntegrityFailure as exc:
                        problems.append(VerifyProblem(None, None, _node_of(obj),
                                                      str(ProblemKind.BAD_WITNESS), exc.detail))
                        continue
                    if point is not None:
                        points.append(point)
                    elif obj.get("type") == COUNTERSIGNATURE_TYPE:
                        countersigned += 1
    return WitnessEvidence(sources, points, lines, unreadable, problems, countersigned)


def _node_of(obj: Mapping[str, Any]) -> str | None:
    node = obj.get("node")
    return node[:64] if isinstance(node, str) else None
