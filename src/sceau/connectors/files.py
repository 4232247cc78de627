"""``.sceau`` files: a suite-2 STREAM whose plaintext starts with a small file header.

Plaintext layout (everything below is inside the encrypted stream, so a ``.sceau`` file
shows neither the original name nor the exact size)::

    0..3   magic "SCF" and version 0x01
    4..7   L: length of the JSON that follows, big-endian u32, 2..65536
    8..    canonical JSON (RFC 8785) {"mtime": int seconds or null, "name": str, "size": int}
    8+L..  the file content, exactly ``size`` bytes

Writes are atomic: output goes to a temporary file in the destination directory, is
fsynced and then linked (or, with ``force``, renamed) into place, and the directory is
fsynced; on any error or interruption the temporary file is removed, so no half-written
output is ever visible. An opened file is published only after the whole stream has
authenticated.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Protocol

from sceau.client import DataKey, PrefixedReader, read_stream_header
from sceau.core.b64 import b64u_decode, b64u_encode
from sceau.core.canonical import canonical_json
from sceau.core.envelope import EnvelopeFormatError
from sceau.core.stream import (
    DEFAULT_SEGMENT_SIZE,
    decrypt_stream,
    encrypt_stream,
    read_stream_key_id,
)
from sceau.errors import (
    AccessDenied,
    DecryptionFailed,
    InvalidRequest,
    NotFound,
    SceauError,
)

__all__ = [
    "FILE_MAGIC",
    "SUFFIX",
    "AtomicFile",
    "FileInfo",
    "KeySource",
    "OpenResult",
    "OutputExists",
    "ProtectResult",
    "decode_file_header",
    "describe_failure",
    "encode_file_header",
    "open_file",
    "open_file_stream",
    "protect_file",
    "seal_file_stream",
]

SUFFIX = ".sceau"
FILE_MAGIC = b"SCF\x01"
_PREFIX_LEN = 8
_MAX_HEADER_JSON = 65536
_MAX_NAME_BYTES = 255
_TEMP_PREFIX = ".sceau-"
_TEMP_SUFFIX = ".part"


class OutputExists(InvalidRequest):
    """The output file exists and overwriting was not asked for."""


class KeySource(Protocol):
    """Where data keys come from: :class:`sceau.client.Client` (or a test double)."""

    def generate_data_key(self, *, user: str | None = None, **key_options: Any) -> DataKey: ...

    def get_data_key(self, key_id: str | None = None, *, token: bytes | None = None,
                     user: str | None = None) -> bytes: ...


@dataclass(frozen=True, slots=True)
class FileInfo:
    """What the hidden file header says: original name, size in bytes, mtime (seconds)."""

    name: str
    size: int
    mtime: int | None

    def __post_init__(self) -> None:
        check_file_name(self.name)
        if self.size < 0:
            raise InvalidRequest("file size must not be negative")


def check_file_name(name: str) -> None:
    """Refuse a name that is not a single, plain path component.

    The name inside a ``.sceau`` file is chosen by whoever protected it; it must never
    steer the output outside the chosen directory or into a device or dot-dot entry.
    """
    if (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or any(ord(c) < 32 or ord(c) == 127 for c in name)
        or len(name.encode("utf-8", "surrogatepass")) > _MAX_NAME_BYTES
    ):
        raise InvalidRequest("file name not usable as a single path component")


def encode_file_header(info: FileInfo) -> bytes:
    """The inner header: magic, u32 length, canonical JSON of ``info``."""
    body = canonical_json({"mtime": info.mtime, "name": info.name, "size": info.size})
    return FILE_MAGIC + len(body).to_bytes(4, "big") + body


def _header_length(prefix: bytes) -> int:
    if prefix[:4] != FILE_MAGIC:
        raise InvalidRequest("no file header inside (not made by `sceau file protect`)")
    length = int.from_bytes(prefix[4:8], "big")
    if not 2 <= length <= _MAX_HEADER_JSON:
        raise InvalidRequest("file header inside is malformed")
    return length


def decode_file_header(body: bytes) -> FileInfo:
    """Parse the JSON part of the inner header (authenticated by the stream, but checked)."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest("file header inside is malformed") from None
    if not isinstance(data, dict) or set(data) != {"mtime", "name", "size"}:
        raise InvalidRequest("file header inside is malformed")
    name, size, mtime = data["name"], data["size"], data["mtime"]
    if (
        not isinstance(name, str)
        or type(size) is not int
        or not (mtime is None or type(mtime) is int)
    ):
        raise InvalidRequest("file header inside is malformed")
    return FileInfo(name=name, size=size, mtime=mtime)


class _Counter:
    """A reader that counts the bytes it passes on (to notice a file changing under us)."""

    def __init__(self, src: BinaryIO) -> None:
        self._readinto: Callable[[memoryview | bytearray], int | None] = src.readinto  # type: ignore[attr-defined]
        self.count = 0

    def readinto(self, buf: memoryview | bytearray) -> int:
        n = self._readinto(buf) or 0
        self.count += n
        return n


def seal_file_stream(src: BinaryIO, dst: BinaryIO, data_key: bytes, key_id: bytes,
                     info: FileInfo, *, segment_size: int = DEFAULT_SEGMENT_SIZE,
                     progress: Callable[[int], None] | None = None) -> None:
    """Write the ``.sceau`` bytes of ``src`` (whose size is ``info.size``) to ``dst``.

    Raises :class:`InvalidRequest` if ``src`` did not hold exactly ``info.size`` bytes
    (the file changed while being read): the output would contradict its own header.
    """
    header = encode_file_header(info)
    counter = _Counter(src)
    reader: Any = PrefixedReader(header, counter)  # type: ignore[arg-type]
    skip = len(header)

    def report(done: int) -> None:
        if progress is not None:
            progress(max(0, done - skip))

    encrypt_stream(reader, dst, data_key, key_id, segment_size=segment_size, progress=report)
    if counter.count != info.size:
        raise InvalidRequest("file changed while it was being protected")


class _Unwrap:
    """A sink that takes the inner header off the decrypted stream and passes the rest on."""

    def __init__(self, dst: BinaryIO, on_header: Callable[[FileInfo], None] | None) -> None:
        self._dst = dst
        self._on_header = on_header
        self._head = bytearray()
        self._need: int | None = None
        self.info: FileInfo | None = None
        self.content = 0

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data).cast("B")
        total = len(view)
        if self.info is None:
            view = self._take_header(view)
        while len(view):
            n = self._dst.write(view)
            if n is None:
                n = len(view)
            self.content += n
            view = view[n:]
        return total

    def _take_header(self, view: memoryview) -> memoryview:
        head = self._head
        if self._need is None:
            take = min(len(view), _PREFIX_LEN - len(head))
            head += view[:take]
            view = view[take:]
            if len(head) < _PREFIX_LEN:
                return view
            self._need = _PREFIX_LEN + _header_length(bytes(head))
        take = min(len(view), self._need - len(head))
        head += view[:take]
        view = view[take:]
        if len(head) == self._need:
            self.info = decode_file_header(bytes(head[_PREFIX_LEN:]))
            if self._on_header is not None:
                self._on_header(self.info)
        return view

    def finish(self) -> FileInfo:
        if self.info is None:
            raise InvalidRequest("no file header inside (not made by `sceau file protect`)")
        if self.content != self.info.size:
            raise InvalidRequest("content size does not match the file header inside")
        return self.info


def open_file_stream(src: BinaryIO, dst: BinaryIO, data_key: bytes, *,
                     on_header: Callable[[FileInfo], None] | None = None,
                     progress: Callable[[int], None] | None = None) -> FileInfo:
    """Decrypt ``.sceau`` bytes (from the first header byte) into ``dst``; return the header.

    ``on_header`` is called as soon as the inner header has authenticated (first segment),
    so a caller can refuse early, e.g. when the output would overwrite a file. As with any
    STREAM, ``dst`` receives authentic content before the end is verified: publish it only
    when this returns.
    """
    sink = _Unwrap(dst, on_header)
    decrypt_stream(src, sink, data_key, progress=progress)  # type: ignore[arg-type]
    return sink.finish()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask_mode() -> int:
    # Python has no read-only umask query; set and restore it at once.
    mask = os.umask(0o077)
    os.umask(mask)
    return 0o666 & ~mask


class AtomicFile:
    """A temporary file in ``directory`` that becomes ``target`` only on :meth:`publish`.

    Used as a context manager: leaving the block without publishing (an error, Ctrl-C)
    removes the temporary file. The file is created 0600.
    """

    def __init__(self, directory: Path) -> None:
        fd, name = tempfile.mkstemp(dir=directory, prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX)
        self.path = Path(name)
        self.directory = directory
        self.file: BinaryIO = open(fd, "wb", buffering=0)  # noqa: SIM115 - closed in publish/discard
        self._published = False

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self._published:
            self.discard()

    def publish(self, target: Path, *, overwrite: bool, mode: int | None = None) -> None:
        """Make the content durable, then move it to ``target`` atomically.

        Without ``overwrite`` an existing ``target`` raises :class:`OutputExists`, checked
        by the link itself so that a file appearing meanwhile is not replaced either.
        """
        self.file.flush()
        if mode is not None:
            os.fchmod(self.file.fileno(), mode)
        os.fsync(self.file.fileno())
        self.file.close()
        if overwrite:
            os.replace(self.path, target)
        else:
            try:
                os.link(self.path, target)
            except FileExistsError:
                raise OutputExists(f"{target} exists (use --force to overwrite)") from None
            except OSError:
                # A file system without hard links: check, then rename (a small race).
                if target.exists():
                    raise OutputExists(f"{target} exists (use --force to overwrite)") from None
                os.replace(self.path, target)
            else:
                os.unlink(self.path)
        self._published = True
        _fsync_dir(self.directory)

    def discard(self) -> None:
        """Close and remove the temporary file (idempotent)."""
        self.file.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


@dataclass(frozen=True, slots=True)
class ProtectResult:
    """A protected file: its source, the ``.sceau`` written and the new key's id."""

    source: Path
    output: Path
    key_id: str
    size: int


@dataclass(frozen=True, slots=True)
class OpenResult:
    """An opened file: its ``.sceau`` source, the file written, the key id and header."""

    source: Path
    output: Path
    key_id: str
    info: FileInfo


def protect_file(keys: KeySource, path: Path, *, output: Path | None = None,
                 name: str | None = None, recipients: list[str] | None = None,
                 force: bool = False, keep: bool = False, user: str | None = None,
                 segment_size: int = DEFAULT_SEGMENT_SIZE,
                 progress: Callable[[int], None] | None = None) -> ProtectResult:
    """Protect ``path`` into ``output`` (default ``PATH.sceau``) under a new key.

    The key's ``name`` defaults to the file name; ``recipients`` get ``decrypt``. Without
    ``keep`` the original is removed once the output is durable. Nothing is written and no
    key is created when the output exists without ``force``.
    """
    target = output if output is not None else path.with_name(path.name + SUFFIX)
    if path.is_symlink():
        raise InvalidRequest("is a symbolic link (protect its target instead)")
    with open(path, "rb") as src:
        st = os.fstat(src.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise InvalidRequest("not a regular file")
        if not force and (target.exists() or target.is_symlink()):
            raise OutputExists(f"{target} exists (use --force to overwrite)")
        info = FileInfo(name=path.name, size=st.st_size, mtime=int(st.st_mtime))
        options: dict[str, Any] = {"name": name or path.name}
        if recipients:
            options["recipients"] = list(recipients)
        dk = keys.generate_data_key(user=user, **options)
        key_id = b64u_decode(dk.key_id)
        with AtomicFile(target.parent) as out:
            seal_file_stream(src, out.file, dk.key, key_id, info, segment_size=segment_size,
                             progress=progress)
            out.publish(target, overwrite=force, mode=_umask_mode())
    if not keep:
        path.unlink()
        _fsync_dir(path.parent)
    return ProtectResult(source=path, output=target, key_id=dk.key_id, size=info.size)


def open_file(keys: KeySource, path: Path, *, out_dir: Path | None = None,
              force: bool = False, user: str | None = None,
              progress: Callable[[int], None] | None = None) -> OpenResult:
    """Open a ``.sceau`` file into ``out_dir`` (default: beside it) under its inner name.

    The output appears only after the whole stream authenticated; the original mtime is
    restored and the file is created 0600 (privacy by default).
    """
    directory = out_dir if out_dir is not None else path.parent
    with open(path, "rb") as src:
        header = read_stream_header(src)
        key_id = b64u_encode(read_stream_key_id(header))
        data_key = keys.get_data_key(key_id, user=user)

        def check(info: FileInfo) -> None:
            target = directory / info.name
            if not force and (target.exists() or target.is_symlink()):
                raise OutputExists(f"{target} exists (use --force to overwrite)")

        reader: Any = PrefixedReader(header, src)
        with AtomicFile(directory) as out:
            info = open_file_stream(reader, out.file, data_key, on_header=check,
                                    progress=progress)
            if info.mtime is not None:
                os.utime(out.path, (info.mtime, info.mtime))
            target = directory / info.name
            out.publish(target, overwrite=force)
    return OpenResult(source=path, output=target, key_id=key_id, info=info)


def describe_failure(error: BaseException) -> str:
    """A one-line reason for a failed file, for ``sceau: error: FILE: reason``.

    Crypto failures stay opaque (corrupted, truncated, reordered and foreign-key streams
    look the same); access refusals name the service's reason.
    """
    if isinstance(error, EnvelopeFormatError):
        return f"not a .sceau file or truncated ({error.detail})"
    if isinstance(error, DecryptionFailed):
        return "corrupted or truncated (integrity check failed)"
    if isinstance(error, AccessDenied):
        return f"access denied ({error.reason})"
    if isinstance(error, NotFound):
        return "key not found (unknown to this service)"
    if isinstance(error, InvalidRequest):
        return error.detail
    if isinstance(error, SceauError):
        return error.diagnostics()
    if isinstance(error, OSError):
        return error.strerror or str(error)
    return str(error) or type(error).__name__
