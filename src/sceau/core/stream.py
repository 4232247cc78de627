"""Suite 2: AES-256-GCM STREAM for files of any size, in constant memory (SPEC §7, §10).

Layout: a 41-byte header (magic, version, suite 2, key_id, 16-byte salt, segment size as a
big-endian u32), then segments, each ``ciphertext || tag``. The segment size counts
plaintext bytes: every segment but the last carries exactly that many, the last 1..size,
or 0 only when the whole plaintext is empty.

Keys and nonces: the data key never touches a segment. A subkey
``HKDF-SHA256(data_key, salt, info = "sceau/stream/v1" || header)`` seals them, so a fresh
random salt gives a fresh subkey per file and the counter nonces below never repeat under
one key. The header is bound through the HKDF info, which is why segments carry no AAD.
Nonce of segment i = i as 11-byte big-endian || 0x01 for the last segment, 0x00
otherwise: reordering, dropping or duplicating segments changes a nonce; truncating at a
segment boundary leaves no segment flagged last; appending bytes leaves the flagged segment
no longer last. All of these end in the same opaque ``DecryptionFailed``.

Streaming decryption releases the plaintext of each authenticated segment before the end
of the stream is verified (as every STREAM construction must, to run in constant memory).
A caller that must not expose a truncated file writes to a temporary destination and
publishes it only when :func:`decrypt_stream` or :meth:`StreamDecryptor.finalize` returns.

This module opens nothing: callers pass file-like objects. The only randomness is the
default salt.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sceau.core.envelope import (
    DATA_KEY_LEN,
    KEY_ID_LEN,
    MAGIC,
    MAX_SEGMENT_SIZE,
    SALT_LEN,
    STREAM_HEADER_LEN,
    TAG_LEN,
    TOKEN_LEN,
    VERSION,
    EnvelopeFormatError,
    Suite,
    parse_unverified_suite,
    segment_size_of,
)
from sceau.errors import DecryptionFailed

__all__ = [
    "DEFAULT_SEGMENT_SIZE",
    "MAX_SEGMENT_SIZE",
    "StreamDecryptor",
    "StreamEncryptor",
    "decrypt_stream",
    "encrypt_stream",
    "read_stream_key_id",
    "stream_header",
    "stream_subkey",
]

DEFAULT_SEGMENT_SIZE = 65536
STREAM_INFO = b"sceau/stream/v1"
_COUNTER_LEN = 11
# 2**88 segments of at least one byte is far beyond any file; the check exists so that a
# counter can never wrap into a nonce already used.
_MAX_SEGMENTS = 1 << (8 * _COUNTER_LEN)
_MORE = b"\x00"
_LAST = b"\x01"
# encrypt_stream/decrypt_stream move about this much plaintext per read: large enough
# that per-call overhead vanishes, small enough to stay cache- and memory-friendly.
_CHUNK_TARGET = 1 << 20
_DECRYPTION_FAILED = "decryption failed"


def stream_header(key_id: bytes, salt: bytes, segment_size: int) -> bytes:
    """The 41-byte suite-2 header."""
    if len(key_id) != KEY_ID_LEN:
        raise ValueError("key_id must be 16 bytes")
    if len(salt) != SALT_LEN:
        raise ValueError("salt must be 16 bytes")
    if not 1 <= segment_size <= MAX_SEGMENT_SIZE:
        raise ValueError("segment size out of range")
    return (
        MAGIC
        + bytes((VERSION, Suite.STREAM))
        + bytes(key_id)
        + bytes(salt)
        + segment_size.to_bytes(4, "big")
    )


def stream_subkey(data_key: bytes, header: bytes) -> bytes:
    """``HKDF-SHA256(data_key, salt = header[21:37], info = "sceau/stream/v1" || header[0:41])``."""
    if len(data_key) != DATA_KEY_LEN:
        raise ValueError("data key must be 32 bytes")
    if len(header) < STREAM_HEADER_LEN:
        raise ValueError("stream header must be 41 bytes")
    hkdf = HKDF(
        algorithm=SHA256(),
        length=DATA_KEY_LEN,
        salt=bytes(header[TOKEN_LEN : TOKEN_LEN + SALT_LEN]),
        info=STREAM_INFO + bytes(header[:STREAM_HEADER_LEN]),
    )
    return hkdf.derive(data_key)


def _parse_stream_header(header: bytes) -> int:
    """Check a suite-2 header (unauthenticated) and return its segment size."""
    if len(header) < STREAM_HEADER_LEN:
        raise EnvelopeFormatError("envelope too short")
    if parse_unverified_suite(header) is not Suite.STREAM:
        raise EnvelopeFormatError("envelope suite not accepted here")
    return segment_size_of(header)


def read_stream_key_id(header: bytes) -> bytes:
    """The key_id of a suite-2 header (its first 41 bytes at least), unauthenticated.

    Raises :class:`EnvelopeFormatError` if the header does not parse.
    """
    _parse_stream_header(header)
    return bytes(header[5:TOKEN_LEN])


def _nonce(index: int, last: bool) -> bytes:
    return index.to_bytes(_COUNTER_LEN, "big") + (_LAST if last else _MORE)


class StreamEncryptor:
    """Incremental STREAM encryption: :meth:`update` as data arrives, then :meth:`finalize`.

    Write :attr:`header` first, then everything :meth:`update` and :meth:`finalize`
    return, in order. Memory stays below one segment plus whatever one ``update`` returns.
    """

    header: bytes

    def __init__(
        self,
        data_key: bytes,
        key_id: bytes,
        *,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        salt: bytes | None = None,
    ) -> None:
        if salt is None:
            salt = os.urandom(SALT_LEN)
        self.header = stream_header(key_id, salt, segment_size)
        self._aead = AESGCM(stream_subkey(data_key, self.header))
        self._size = segment_size
        self._index = 0
        # Plaintext not sealed yet. At least one byte is always held back (unless nothing
        # came at all) so that finalize() has a non-empty segment to flag as last.
        self._pending = bytearray()
        self._done = False

    def _seal_into(self, plain: memoryview, out: memoryview, *, final: bool) -> int:
        """Seal ``plain`` as consecutive segments into ``out``; return the bytes written.

        All segments are full except, when ``final``, the last one, which is flagged; an
        empty ``plain`` with ``final`` gives the single empty segment of an empty file.
        """
        if self._done:
            raise ValueError("stream already finalized")
        size = self._size
        length = len(plain)
        count = max(1, -(-length // size)) if final else length // size
        if not final and length % size:
            raise ValueError("partial segment before the end of the stream")
        if self._index + count > _MAX_SEGMENTS:
            raise ValueError("stream too long for its segment counter")
        aead = self._aead
        index = self._index
        written = 0
        for k in range(count):
            piece = plain[k * size : (k + 1) * size]
            nonce = _nonce(index + k, final and k == count - 1)
            end = written + len(piece) + TAG_LEN
            written += aead.encrypt_into(nonce, piece, None, out[written:end])
        self._index = index + count
        self._done = final
        return written

    def update(self, data: bytes) -> bytes:
        """Take more plaintext; return the segments complete so far (possibly ``b""``)."""
        if self._done:
            raise ValueError("stream already finalized")
        pending = self._pending
        pending += data
        count = (len(pending) - 1) // self._size if pending else 0
        if count == 0:
            return b""
        take = count * self._size
        out = bytearray(take + count * TAG_LEN)
        with memoryview(pending) as view, memoryview(out) as out_view:
            self._seal_into(view[:take], out_view, final=False)
        del pending[:take]
        return bytes(out)

    def finalize(self) -> bytes:
        """Seal and return the last segment. The encryptor is then spent."""
        pending = self._pending
        out = bytearray(len(pending) + TAG_LEN)
        with memoryview(pending) as view, memoryview(out) as out_view:
            self._seal_into(view, out_view, final=True)
        pending.clear()
        return bytes(out)


class StreamDecryptor:
    """Incremental STREAM decryption: :meth:`update` with the bytes after the header, then
    :meth:`finalize`, which alone proves the stream complete.

    Every failure (bad tag, truncation, a missing last segment, reordering, trailing
    bytes) raises the same :class:`~sceau.errors.DecryptionFailed`, after which the
    decryptor refuses further use.
    """

    def __init__(self, data_key: bytes, header: bytes) -> None:
        if len(header) > STREAM_HEADER_LEN:
            raise ValueError("pass exactly the 41 header bytes")
        self._size = _parse_stream_header(header)
        self._unit = self._size + TAG_LEN
        self._aead = AESGCM(stream_subkey(data_key, header))
        self._index = 0
        # Sealed bytes not opened yet: up to one whole segment is held back, because it
        # may be the last one and must then be opened with the last-segment nonce.
        self._pending = bytearray()
        self._done = False
        self._failed = False

    def _fail(self) -> DecryptionFailed:
        self._failed = True
        # Rebind rather than clear: a memoryview of the old buffer may still be alive.
        self._pending = bytearray()
        return DecryptionFailed(_DECRYPTION_FAILED)

    def _open_into(self, sealed: memoryview, out: memoryview, *, final: bool) -> int:
        """Open consecutive segments from ``sealed`` into ``out``; return bytes written.

        Without ``final`` ``sealed`` holds whole non-last segments; with it, its last
        segment (possibly short) must be flagged last.
        """
        if self._failed or self._done:
            raise DecryptionFailed(_DECRYPTION_FAILED)
        unit = self._unit
        length = len(sealed)
        if final:
            count = -(-length // unit)
            last_len = length - (count - 1) * unit
            # No segment at all, a tail too short to hold a tag, or an empty last segment
            # after others (only an empty file has an empty segment): all malformed.
            if count == 0 or last_len < TAG_LEN:
                raise self._fail()
            if last_len == TAG_LEN and self._index + count > 1:
                raise self._fail()
        else:
            count, rest = divmod(length, unit)
            if rest:
                raise ValueError("partial segment before the end of the stream")
        if self._index + count > _MAX_SEGMENTS:
            raise self._fail()
        aead = self._aead
        index = self._index
        written = 0
        for k in range(count):
            start = k * unit
            piece = sealed[start : start + unit]
            nonce = _nonce(index + k, final and k == count - 1)
            end = written + len(piece) - TAG_LEN
            try:
                written += aead.decrypt_into(nonce, piece, None, out[written:end])
            except InvalidTag:
                raise self._fail() from None
        self._index = index + count
        self._done = final
        return written

    def update(self, data: bytes) -> bytes:
        """Take more sealed bytes; return the plaintext of the segments authenticated so far.

        The returned plaintext is authentic but the stream is not known to be complete
        until :meth:`finalize` returns.
        """
        if self._failed or self._done:
            raise DecryptionFailed(_DECRYPTION_FAILED)
        pending = self._pending
        pending += data
        count = (len(pending) - 1) // self._unit if pending else 0
        if count == 0:
            return b""
        take = count * self._unit
        out = bytearray(count * self._size)
        with memoryview(pending) as view, memoryview(out) as out_view:
            self._open_into(view[:take], out_view, final=False)
        del pending[:take]
        return bytes(out)

    def finalize(self) -> bytes:
        """Open the last segment and return its plaintext; proves the stream complete."""
        pending = self._pending
        out = bytearray(max(0, len(pending) - TAG_LEN))
        with memoryview(pending) as view, memoryview(out) as out_view:
            self._open_into(view, out_view, final=True)
        pending.clear()
        return bytes(out)


def _fill(src: BinaryIO, buf: bytearray) -> int:
    """Read into ``buf`` until it is full or ``src`` is at EOF; return the bytes read."""
    readinto = getattr(src, "readinto", None)
    got = 0
    with memoryview(buf) as view:
        while got < len(buf):
            if readinto is not None:
                n = readinto(view[got:])
            else:
                data = src.read(len(buf) - got)
                n = len(data) if data is not None else None
                if n:
                    view[got : got + n] = data
            if n is None:
                # A non-blocking source with nothing ready: treating it as EOF would
                # silently truncate the file.
                raise ValueError("source returned no data without reaching EOF")
            if n == 0:
                break
            got += n
    return got


def _write_all(dst: BinaryIO, data: memoryview) -> None:
    """Write all of ``data``, looping over the short writes a raw file may do."""
    while len(data):
        n = dst.write(data)
        if n is None or n >= len(data):
            return
        data = data[n:]


def _pump(
    src: BinaryIO,
    dst: BinaryIO,
    chunk: int,
    out_size: int,
    step: Callable[[memoryview, memoryview, bool], int],
    progress: Callable[[int], None] | None,
    count_output: bool,
) -> int:
    """Move ``src`` through ``step`` to ``dst`` in chunks, telling ``step`` which is final.

    Two input buffers let us look one chunk ahead: a chunk is final when it is short or
    the next read finds EOF. Buffers are allocated once, so memory is constant.
    """
    current, ahead = bytearray(chunk), bytearray(chunk)
    out = bytearray(out_size)
    total = 0
    filled = _fill(src, current)
    with memoryview(out) as out_view:
        while True:
            final = filled < chunk
            filled_ahead = 0
            if not final:
                filled_ahead = _fill(src, ahead)
                final = filled_ahead == 0
            with memoryview(current) as view:
                written = step(view[:filled], out_view, final)
            _write_all(dst, out_view[:written])
            total += written if count_output else filled
            if progress is not None:
                progress(total)
            if final:
                return total
            current, ahead = ahead, current
            filled = filled_ahead


def encrypt_stream(
    src: BinaryIO,
    dst: BinaryIO,
    data_key: bytes,
    key_id: bytes,
    *,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    salt: bytes | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Encrypt ``src`` to ``dst`` as a suite-2 envelope; return the plaintext length.

    ``progress``, if given, is called with the cumulative plaintext bytes done so far.
    """
    encryptor = StreamEncryptor(data_key, key_id, segment_size=segment_size, salt=salt)
    segments = max(1, _CHUNK_TARGET // segment_size)
    _write_all(dst, memoryview(encryptor.header))

    def step(plain: memoryview, out: memoryview, final: bool) -> int:
        return encryptor._seal_into(plain, out, final=final)

    return _pump(
        src,
        dst,
        segments * segment_size,
        segments * (segment_size + TAG_LEN),
        step,
        progress,
        count_output=False,
    )


def decrypt_stream(
    src: BinaryIO,
    dst: BinaryIO,
    data_key: bytes,
    *,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Decrypt a suite-2 envelope from ``src`` to ``dst``; return the plaintext length.

    A header that does not parse raises :class:`EnvelopeFormatError`; everything after
    it that does not authenticate raises :class:`~sceau.errors.DecryptionFailed`. On
    failure ``dst`` may hold the plaintext of the segments authenticated before the
    failure (see the module docstring). ``progress`` gets cumulative plaintext bytes.
    """
    header = bytearray(STREAM_HEADER_LEN)
    got = _fill(src, header)
    decryptor = StreamDecryptor(data_key, bytes(header[:got]))
    size = decryptor._size
    segments = max(1, _CHUNK_TARGET // size)

    def step(sealed: memoryview, out: memoryview, final: bool) -> int:
        return decryptor._open_into(sealed, out, final=final)

    return _pump(
        src,
        dst,
        segments * (size + TAG_LEN),
        segments * size,
        step,
        progress,
        count_output=True,
    )
