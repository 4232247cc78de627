"""Suite 2 STREAM (SPEC §7, §10; SECURITY-CASES 23): vectors, round trips, tampering."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, BinaryIO, cast

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from sceau.core import stream
from sceau.core.envelope import EnvelopeFormatError
from sceau.core.stream import (
    DEFAULT_SEGMENT_SIZE,
    MAX_SEGMENT_SIZE,
    StreamDecryptor,
    StreamEncryptor,
    decrypt_stream,
    encrypt_stream,
    read_stream_key_id,
    stream_header,
    stream_subkey,
)
from sceau.errors import DecryptionFailed

VECTORS = Path(__file__).resolve().parent.parent / "vectors"
SUITE2: list[dict[str, Any]] = json.loads((VECTORS / "suite2.json").read_text())["vectors"]

KEY = bytes(range(32))
KEY_ID = bytes(range(0xA0, 0xB0))
SALT = bytes(range(0xD0, 0xE0))
SIZE = 16


# --- an independent reference (SPEC §7 written out from the primitives) --------------------------


def _ref_seal_segments(key: bytes, header: bytes, segments: list[tuple[bytes, bool]]) -> bytes:
    """Seal arbitrary segments with arbitrary last flags: lets tests build malicious streams."""
    subkey = HKDF(
        algorithm=SHA256(), length=32, salt=header[21:37], info=b"sceau/stream/v1" + header
    ).derive(key)
    aead = AESGCM(subkey)
    body = b"".join(
        aead.encrypt(i.to_bytes(11, "big") + (b"\x01" if last else b"\x00"), piece, None)
        for i, (piece, last) in enumerate(segments)
    )
    return header + body


def _ref_encrypt(key: bytes, key_id: bytes, salt: bytes, size: int, plaintext: bytes) -> bytes:
    header = b"SCU\x01\x02" + key_id + salt + size.to_bytes(4, "big")
    pieces = [plaintext[i : i + size] for i in range(0, len(plaintext), size)] or [b""]
    return _ref_seal_segments(
        key, header, [(p, i == len(pieces) - 1) for i, p in enumerate(pieces)]
    )


def _encrypt(plaintext: bytes, size: int = SIZE, salt: bytes = SALT) -> bytes:
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(plaintext), out, KEY, KEY_ID, segment_size=size, salt=salt)
    return out.getvalue()


def _decrypt(envelope: bytes, key: bytes = KEY) -> bytes:
    out = io.BytesIO()
    assert decrypt_stream(io.BytesIO(envelope), out, key) == len(out.getvalue())
    return out.getvalue()


def _incremental_encrypt(plaintext: bytes, size: int, chunk: int) -> bytes:
    enc = StreamEncryptor(KEY, KEY_ID, segment_size=size, salt=SALT)
    parts = [enc.header]
    parts += [enc.update(plaintext[i : i + chunk]) for i in range(0, len(plaintext), chunk)]
    parts.append(enc.finalize())
    return b"".join(parts)


def _incremental_decrypt(envelope: bytes, chunk: int, key: bytes = KEY) -> bytes:
    dec = StreamDecryptor(key, envelope[:41])
    body = envelope[41:]
    parts = [dec.update(body[i : i + chunk]) for i in range(0, len(body), chunk)]
    parts.append(dec.finalize())
    return b"".join(parts)


# --- known answers ------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", SUITE2, ids=[v["name"] for v in SUITE2])
def test_suite2_vector(vector: dict[str, Any]) -> None:
    key, key_id = bytes.fromhex(vector["data_key"]), bytes.fromhex(vector["key_id"])
    salt, size = bytes.fromhex(vector["salt"]), vector["segment_size"]
    plaintext, envelope = bytes.fromhex(vector["plaintext"]), bytes.fromhex(vector["envelope"])
    header = stream_header(key_id, salt, size)
    assert header.hex() == vector["header"]
    assert stream_subkey(key, header).hex() == vector["subkey"]
    assert _ref_encrypt(key, key_id, salt, size, plaintext) == envelope
    out = io.BytesIO()
    n = encrypt_stream(io.BytesIO(plaintext), out, key, key_id, segment_size=size, salt=salt)
    assert (n, out.getvalue()) == (len(plaintext), envelope)
    enc = StreamEncryptor(key, key_id, segment_size=size, salt=salt)
    assert enc.header + b"".join(enc.update(bytes([b])) for b in plaintext) + enc.finalize() == (
        envelope
    )
    assert _decrypt(envelope, key) == plaintext
    assert _incremental_decrypt(envelope, 1, key) == plaintext
    assert read_stream_key_id(envelope) == key_id
    assert len(envelope) == 41 + len(plaintext) + 16 * vector["segments"]


# --- round trips --------------------------------------------------------------------------------


def _boundary_lengths(size: int) -> list[int]:
    return sorted({0, 1, size - 1, size, size + 1, 2 * size - 1, 2 * size, 2 * size + 1, 3 * size})


@pytest.mark.parametrize(
    ("size", "length"),
    [(size, n) for size in (1, 2, 16, 100) for n in _boundary_lengths(size)],
)
def test_round_trip_at_segment_boundaries(size: int, length: int) -> None:
    plaintext = bytes(i % 251 for i in range(length))
    envelope = _encrypt(plaintext, size)
    assert envelope == _ref_encrypt(KEY, KEY_ID, SALT, size, plaintext)
    segments = max(1, -(-length // size))
    assert len(envelope) == 41 + length + 16 * segments
    assert _decrypt(envelope) == plaintext
    assert _incremental_encrypt(plaintext, size, 7) == envelope
    assert _incremental_decrypt(envelope, 5) == plaintext


@settings(max_examples=60, deadline=None)
@given(
    size=st.sampled_from([1, 3, 16, 64, 1000]),
    data=st.data(),
    enc_chunk=st.integers(1, 300),
    dec_chunk=st.integers(1, 300),
)
def test_round_trip_random(size: int, data: st.DataObject, enc_chunk: int, dec_chunk: int) -> None:
    k = data.draw(st.integers(0, 4))
    length = data.draw(
        st.sampled_from([0, k * size, k * size + 1, max(0, k * size - 1)]) | st.integers(0, 3000)
    )
    plaintext = data.draw(st.binary(min_size=length, max_size=length))
    envelope = _encrypt(plaintext, size)
    assert _incremental_encrypt(plaintext, size, enc_chunk) == envelope
    assert _decrypt(envelope) == plaintext
    assert _incremental_decrypt(envelope, dec_chunk) == plaintext


@pytest.mark.parametrize("length", [0, 1, 63, 64, 65, 127, 128, 129, 200])
def test_many_chunks_in_the_file_loop(monkeypatch: pytest.MonkeyPatch, length: int) -> None:
    # Shrink the I/O chunk to 4 segments so lengths around chunk multiples exercise the
    # look-ahead that decides which chunk holds the last segment.
    monkeypatch.setattr(stream, "_CHUNK_TARGET", 4 * SIZE)
    plaintext = bytes(range(256))[:length]
    envelope = _encrypt(plaintext)
    assert envelope == _ref_encrypt(KEY, KEY_ID, SALT, SIZE, plaintext)
    assert _decrypt(envelope) == plaintext


def test_default_and_maximum_segment_sizes() -> None:
    for size in (DEFAULT_SEGMENT_SIZE, MAX_SEGMENT_SIZE):
        plaintext = b"x" * 1000
        envelope = _encrypt(plaintext, size)
        assert int.from_bytes(envelope[37:41], "big") == size
        assert _decrypt(envelope) == plaintext


def test_random_salt_by_default() -> None:
    first = StreamEncryptor(KEY, KEY_ID)
    second = StreamEncryptor(KEY, KEY_ID)
    assert first.header[21:37] != second.header[21:37]
    assert first.header[37:41] == DEFAULT_SEGMENT_SIZE.to_bytes(4, "big")


class _Trickle(io.RawIOBase):
    """A source that hands out at most 7 bytes per read."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        n = min(7, len(buf), len(self._data))
        buf[:n] = self._data[:n]
        self._data = self._data[n:]
        return n


class _ReadOnly:
    """A source with only read(), no readinto()."""

    def __init__(self, data: bytes) -> None:
        self._io = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self._io.read(min(n, 5))


class _ShortWriter:
    """A sink that accepts at most 10 bytes per write and copies what it takes."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, buf: Any) -> int:
        taken = bytes(buf[:10])
        self.data += taken
        return len(taken)


@pytest.mark.parametrize("source", [_Trickle, _ReadOnly])
def test_short_reads_and_short_writes(source: Any) -> None:
    plaintext = bytes(range(200))
    expected = _ref_encrypt(KEY, KEY_ID, SALT, SIZE, plaintext)
    sink = _ShortWriter()
    assert (
        encrypt_stream(
            source(plaintext), cast(BinaryIO, sink), KEY, KEY_ID, segment_size=SIZE, salt=SALT
        )
        == 200
    )
    assert bytes(sink.data) == expected
    sink = _ShortWriter()
    assert decrypt_stream(source(expected), cast(BinaryIO, sink), KEY) == 200
    assert bytes(sink.data) == plaintext


def test_non_blocking_source_without_data_is_refused() -> None:
    class _Empty:
        def readinto(self, buf: Any) -> None:
            return None

    with pytest.raises(ValueError):
        encrypt_stream(_Empty(), io.BytesIO(), KEY, KEY_ID)  # type: ignore[arg-type]


def test_progress_reports_cumulative_plaintext(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream, "_CHUNK_TARGET", 4 * SIZE)
    plaintext = bytes(300)
    seen: list[int] = []
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(plaintext), out, KEY, KEY_ID, segment_size=SIZE, progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 300 and len(seen) > 1
    seen.clear()
    decrypt_stream(io.BytesIO(out.getvalue()), io.BytesIO(), KEY, progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 300 and len(seen) > 1


# --- malformed headers (invalid_request) ----------------------------------------------------------

GOOD = _ref_encrypt(KEY, KEY_ID, SALT, SIZE, bytes(range(40)))  # 41 + 3 segments: 16, 16, 8


def _with(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


BAD_HEADERS = [
    (GOOD[:40], "shorter than a header"),
    (b"", "empty"),
    (_with(GOOD, 0, b"SCV"), "bad magic"),
    (_with(GOOD, 3, b"\x02"), "version 2"),
    (_with(GOOD, 4, b"\x01"), "suite 1"),
    (_with(GOOD, 4, b"\x07"), "unknown suite"),
    (_with(GOOD, 37, b"\x00\x00\x00\x00"), "segment size 0"),
    (_with(GOOD, 37, (MAX_SEGMENT_SIZE + 1).to_bytes(4, "big")), "segment size over the cap"),
    (_with(GOOD, 37, b"\xff\xff\xff\xff"), "segment size 2**32 - 1"),
]


@pytest.mark.parametrize(("data", "why"), BAD_HEADERS, ids=[w for _, w in BAD_HEADERS])
def test_bad_header_is_a_format_error(data: bytes, why: str) -> None:
    with pytest.raises(EnvelopeFormatError):
        decrypt_stream(io.BytesIO(data), io.BytesIO(), KEY)
    with pytest.raises(EnvelopeFormatError):
        StreamDecryptor(KEY, data[:41])
    with pytest.raises(EnvelopeFormatError):
        read_stream_key_id(data[:41])


# --- tampering (integrity_failure, opaque) -------------------------------------------------------


def _expected_for_flip(offset: int, mask: int) -> type[Exception]:
    if offset < 5:
        return EnvelopeFormatError
    if 37 <= offset < 41:
        size = int.from_bytes(_with(GOOD, offset, bytes([GOOD[offset] ^ mask]))[37:41], "big")
        if not 1 <= size <= MAX_SEGMENT_SIZE:
            return EnvelopeFormatError
    # Key id, salt and segment size are bound through the HKDF info; the rest by the tags.
    return DecryptionFailed


def _check_released_is_authentic(envelope: bytes, plaintext: bytes) -> None:
    """Decrypt ``envelope`` expecting failure; what reached dst is an authentic prefix."""
    out = io.BytesIO()
    with pytest.raises(DecryptionFailed):
        decrypt_stream(io.BytesIO(envelope), out, KEY)
    released = out.getvalue()
    assert plaintext.startswith(released)
    assert len(released) % SIZE == 0


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
@pytest.mark.parametrize("offset", range(len(GOOD)))
def test_every_byte_flipped_is_refused(offset: int, mask: int) -> None:
    tampered = bytearray(GOOD)
    tampered[offset] ^= mask
    expected = _expected_for_flip(offset, mask)
    with pytest.raises(expected):
        decrypt_stream(io.BytesIO(bytes(tampered)), io.BytesIO(), KEY)
    with pytest.raises(expected):
        _incremental_decrypt(bytes(tampered), 3)
    if expected is DecryptionFailed:
        _check_released_is_authentic(bytes(tampered), bytes(range(40)))


@pytest.mark.parametrize("length", range(len(GOOD)))
def test_truncation_at_every_length_is_refused(length: int) -> None:
    expected = EnvelopeFormatError if length < 41 else DecryptionFailed
    with pytest.raises(expected):
        decrypt_stream(io.BytesIO(GOOD[:length]), io.BytesIO(), KEY)
    if length >= 41:
        _check_released_is_authentic(GOOD[:length], bytes(range(40)))


def _segments(envelope: bytes, size: int = SIZE) -> list[bytes]:
    body = envelope[41:]
    unit = size + 16
    return [body[i : i + unit] for i in range(0, len(body), unit)]


def _join(segments: list[bytes]) -> bytes:
    return GOOD[:41] + b"".join(segments)


S0, S1, S2 = _segments(GOOD)
HEADER = GOOD[:41]
PT = bytes(range(40))
TAMPERED = [
    (_join([S0, S1]), "missing last segment"),
    (_join([S0, S2]), "middle segment dropped"),
    (_join([S1, S0, S2]), "segments swapped"),
    (_join([S0, S0, S1, S2]), "segment duplicated"),
    (_join([S0, S1, S2, S2]), "last segment repeated"),
    (GOOD + b"\x00", "one trailing byte"),
    (GOOD + bytes(16), "trailing tag-sized bytes"),
    (GOOD + GOOD, "a second stream appended"),
    (HEADER, "header only"),
    (HEADER + bytes(15), "tail shorter than a tag"),
    (
        _ref_seal_segments(KEY, HEADER, [(PT[:16], False), (PT[16:32], False), (PT[32:], False)]),
        "no segment flagged last",
    ),
    (
        _ref_seal_segments(KEY, HEADER, [(PT[:16], True), (PT[16:32], False), (PT[32:], True)]),
        "first segment flagged last",
    ),
    (
        _ref_seal_segments(KEY, HEADER, [(PT[:16], False), (PT[16:32], True), (b"", True)]),
        "empty last segment after a full one",
    ),
    (
        _ref_seal_segments(KEY, HEADER, [(PT[:16], False), (PT[16:32], False), (b"", True)]),
        "empty last segment after full ones",
    ),
    (
        _ref_seal_segments(KEY, HEADER, [(PT[:5], False), (PT[5:], True)]),
        "short segment before the last",
    ),
    (
        _ref_seal_segments(KEY, HEADER, [(b"", False), (PT[:8], True)]),
        "empty non-last segment",
    ),
]


@pytest.mark.parametrize(("envelope", "why"), TAMPERED, ids=[w for _, w in TAMPERED])
def test_tampered_stream_is_refused(envelope: bytes, why: str) -> None:
    with pytest.raises(DecryptionFailed) as info:
        decrypt_stream(io.BytesIO(envelope), io.BytesIO(), KEY)
    assert info.value.detail == "decryption failed"
    for chunk in (1, 17, 1000):
        with pytest.raises(DecryptionFailed):
            _incremental_decrypt(envelope, chunk)
    _check_released_is_authentic(envelope, PT)


def test_wrong_key_is_refused() -> None:
    with pytest.raises(DecryptionFailed):
        decrypt_stream(io.BytesIO(GOOD), io.BytesIO(), bytes(32))


def test_decryptor_refuses_use_after_failure() -> None:
    dec = StreamDecryptor(KEY, HEADER)
    with pytest.raises(DecryptionFailed):
        dec.update(S1 + S0)
    with pytest.raises(DecryptionFailed):
        dec.update(S2)
    with pytest.raises(DecryptionFailed):
        dec.finalize()


def test_decryptor_refuses_use_after_finalize() -> None:
    dec = StreamDecryptor(KEY, HEADER)
    assert dec.update(S0 + S1 + S2) + dec.finalize() == PT
    with pytest.raises(DecryptionFailed):
        dec.update(b"\x00")


def test_encryptor_refuses_use_after_finalize() -> None:
    enc = StreamEncryptor(KEY, KEY_ID, segment_size=SIZE, salt=SALT)
    enc.finalize()
    with pytest.raises(ValueError):
        enc.update(b"x")
    with pytest.raises(ValueError):
        enc.finalize()


def test_segment_counter_cannot_wrap() -> None:
    enc = StreamEncryptor(KEY, KEY_ID, segment_size=1, salt=SALT)
    enc._index = (1 << 88) - 1  # as if 2**88 - 1 segments had been written
    assert len(enc.update(b"ab")) == 17  # the segment numbered 2**88 - 1 is the last possible
    with pytest.raises(ValueError):
        enc.finalize()
    dec = StreamDecryptor(KEY, HEADER)
    dec._index = 1 << 88
    with pytest.raises(DecryptionFailed):
        dec.update(S0 + S1)


@pytest.mark.parametrize(
    ("key_id", "salt", "size"),
    [
        (KEY_ID[:15], SALT, SIZE),
        (KEY_ID, SALT + b"\x00", SIZE),
        (KEY_ID, SALT, 0),
        (KEY_ID, SALT, MAX_SEGMENT_SIZE + 1),
        (KEY_ID, SALT, -1),
    ],
    ids=["short key id", "long salt", "size 0", "size over the cap", "negative size"],
)
def test_bad_encryption_parameters(key_id: bytes, salt: bytes, size: int) -> None:
    with pytest.raises(ValueError):
        stream_header(key_id, salt, size)
    with pytest.raises(ValueError):
        StreamEncryptor(KEY, key_id, segment_size=size, salt=salt)


def test_bad_key_length_is_a_caller_bug() -> None:
    with pytest.raises(ValueError):
        StreamEncryptor(KEY[:16], KEY_ID)
    with pytest.raises(ValueError):
        StreamDecryptor(KEY + b"\x00", HEADER)
    with pytest.raises(ValueError):
        StreamDecryptor(KEY, GOOD[:42])


def test_vectors_in_format_doc_match_the_json() -> None:
    flat = "".join((VECTORS.parent.parent / "docs" / "format.md").read_text().split())
    for vector in SUITE2:
        assert vector["envelope"] in flat, vector["name"]
        assert vector["subkey"] in flat, vector["name"]
