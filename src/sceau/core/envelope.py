"""The binary ciphertext envelope (SPEC §7, §10) and its text armor.

Layout (offsets inclusive as in the SPEC)::

    0..2   magic "SCU"
    3      version = 1
    4      suite: 1 = AES-256-GCM one-shot, 2 = AES-256-GCM STREAM (see sceau.core.stream)
    5..20  key_id (16 bytes)
    suite 1: 21..32 nonce (12) | 33.. ciphertext || tag (16); AAD = bytes 0..32 || aad
    suite 2: 21..36 salt (16) | 37..40 segment size (u32 BE) | 41.. segments

This module does no I/O; the only randomness is the default nonce of :func:`seal_gcm`.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass
from enum import IntEnum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sceau.errors import DecryptionFailed, InvalidRequest

__all__ = [
    "DATA_KEY_LEN",
    "GCM_HEADER_LEN",
    "KEY_ID_LEN",
    "MAGIC",
    "MAX_SEGMENT_SIZE",
    "NONCE_LEN",
    "SALT_LEN",
    "STREAM_HEADER_LEN",
    "TAG_LEN",
    "TOKEN_LEN",
    "VERSION",
    "EnvelopeFormatError",
    "EnvelopeHeader",
    "Suite",
    "armor",
    "dearmor",
    "find_armored",
    "open_gcm",
    "parse_unverified_header",
    "parse_unverified_suite",
    "seal_gcm",
    "seal_gcm_with_token",
    "segment_size_of",
    "token_for",
]

MAGIC = b"SCU"
VERSION = 1


class Suite(IntEnum):
    """Envelope cipher suites. Sceau chooses the suite; a parser accepts only these."""

    GCM = 1
    STREAM = 2


KEY_ID_LEN = 16
NONCE_LEN = 12
TAG_LEN = 16
SALT_LEN = 16
DATA_KEY_LEN = 32
TOKEN_LEN = 21  # magic, version, suite, key_id
GCM_HEADER_LEN = TOKEN_LEN + NONCE_LEN  # 33
STREAM_HEADER_LEN = TOKEN_LEN + SALT_LEN + 4  # 41
# A cap on the header's segment size bounds the memory a reader commits to before any
# authentication: a forged header cannot make us buffer gigabytes.
MAX_SEGMENT_SIZE = 16 * 1024 * 1024

_PREFIX_LEN = 5  # magic, version, suite
_MIN_LEN = {
    Suite.GCM: GCM_HEADER_LEN + TAG_LEN,
    Suite.STREAM: STREAM_HEADER_LEN + TAG_LEN,
}
_DECRYPTION_FAILED = "decryption failed"


class EnvelopeFormatError(InvalidRequest):
    """The envelope header does not parse (bad magic, version, suite, or too short).

    Raised before any cryptography; maps to ``invalid_request``. The detail names the
    problem, never the offending bytes.
    """


@dataclass(frozen=True, slots=True)
class EnvelopeHeader:
    """The unauthenticated header fields of an envelope."""

    version: int
    suite: Suite
    key_id: bytes


def parse_unverified_suite(data: bytes | memoryview) -> Suite:
    """Check magic, version and suite of the first five bytes; return the suite.

    Raises :class:`EnvelopeFormatError`. Nothing is authenticated.
    """
    if len(data) < _PREFIX_LEN:
        raise EnvelopeFormatError("envelope too short")
    if bytes(data[0:3]) != MAGIC:
        raise EnvelopeFormatError("envelope has a bad magic")
    if data[3] != VERSION:
        raise EnvelopeFormatError("envelope version not supported")
    try:
        return Suite(data[4])
    except ValueError:
        raise EnvelopeFormatError("envelope suite not supported") from None


def segment_size_of(header: bytes | memoryview) -> int:
    """The segment size field of a suite-2 header, checked to lie in 1..MAX_SEGMENT_SIZE."""
    size = int.from_bytes(header[37:41], "big")
    if not 1 <= size <= MAX_SEGMENT_SIZE:
        raise EnvelopeFormatError("envelope segment size out of range")
    return size


def parse_unverified_header(data: bytes) -> EnvelopeHeader:
    """Parse the header of an envelope WITHOUT authenticating anything.

    Checks magic, version, suite, that ``data`` holds at least that suite's header plus
    one tag, and for suite 2 that the segment size is in range. The result is only fit
    for choosing the key; nothing in it is trustworthy until the envelope is opened.
    """
    suite = parse_unverified_suite(data)
    if len(data) < _MIN_LEN[suite]:
        raise EnvelopeFormatError("envelope too short")
    if suite is Suite.STREAM:
        segment_size_of(data)
    return EnvelopeHeader(version=VERSION, suite=suite, key_id=bytes(data[_PREFIX_LEN:TOKEN_LEN]))


def token_for(key_id: bytes) -> bytes:
    """Bytes 0..20 of a suite-1 header: what ``generate-data-key`` returns as ``token``."""
    if len(key_id) != KEY_ID_LEN:
        raise ValueError("key_id must be 16 bytes")
    return MAGIC + bytes((VERSION, Suite.GCM)) + bytes(key_id)


def _aead(data_key: bytes) -> AESGCM:
    if len(data_key) != DATA_KEY_LEN:
        raise ValueError("data key must be 32 bytes")
    return AESGCM(data_key)


def seal_gcm_with_token(
    data_key: bytes, token: bytes, iv: bytes, plaintext: bytes, aad: bytes | None
) -> bytes:
    """Seal a suite-1 envelope whose header is ``token || iv``.

    The client-side path of ``generate-data-key``: the service drew ``iv`` once for this
    key, so the caller must seal exactly one plaintext with it. ``aad`` is required;
    ``None`` and ``b""`` are the same (empty) associated data.
    """
    if len(token) != TOKEN_LEN or parse_unverified_suite(token) is not Suite.GCM:
        raise EnvelopeFormatError("token is not a suite-1 envelope prefix")
    if len(iv) != NONCE_LEN:
        raise ValueError("iv must be 12 bytes")
    header = bytes(token) + bytes(iv)
    associated = header + aad if aad else header
    return header + _aead(data_key).encrypt(iv, plaintext, associated)


def seal_gcm(
    data_key: bytes,
    key_id: bytes,
    plaintext: bytes,
    aad: bytes | None,
    *,
    nonce: bytes | None = None,
) -> bytes:
    """Seal ``plaintext`` into a suite-1 envelope under ``data_key``.

    ``aad`` is required (``None`` means empty). ``nonce`` is for known-answer tests only:
    every data key seals few messages, but a random 96-bit nonce per envelope is what
    keeps (key, nonce) pairs unique, so production callers leave it ``None``.
    """
    if nonce is None:
        nonce = os.urandom(NONCE_LEN)
    return seal_gcm_with_token(data_key, token_for(key_id), nonce, plaintext, aad)


def open_gcm(data_key: bytes, envelope: bytes, aad: bytes | None) -> bytes:
    """Open a suite-1 envelope.

    A header that does not parse (or a suite-2 envelope) raises
    :class:`EnvelopeFormatError`; every authentication failure raises the same opaque
    :class:`~sceau.errors.DecryptionFailed`.
    """
    if parse_unverified_header(envelope).suite is not Suite.GCM:
        raise EnvelopeFormatError("envelope suite not accepted here")
    view = memoryview(envelope)
    header = bytes(view[:GCM_HEADER_LEN])
    associated = header + aad if aad else header
    try:
        return _aead(data_key).decrypt(
            view[TOKEN_LEN:GCM_HEADER_LEN], view[GCM_HEADER_LEN:], associated
        )
    except InvalidTag:
        raise DecryptionFailed(_DECRYPTION_FAILED) from None


# --- text armor -------------------------------------------------------------------------------

_BEGIN = "-----BEGIN SCEAU MESSAGE-----"
_END = "-----END SCEAU MESSAGE-----"
_COLUMNS = 64
_STD_LINE = re.compile(r"[A-Za-z0-9+/]{1,64}={0,2}")


def _find_marker(text: str, marker: str, pos: int) -> int:
    """Index of the next ``marker`` that fills a whole line, from ``pos``; -1 if none.

    Markers count only as whole lines, so a quoted reply (``> -----BEGIN ...``) is not
    taken for a block of the message itself. Plain ``str.find`` keeps the scan linear.
    """
    while True:
        i = text.find(marker, pos)
        if i < 0:
            return -1
        j = i + len(marker)
        at_start = i == 0 or text[i - 1] == "\n"
        at_end = j == len(text) or text[j] == "\n" or text.startswith("\r\n", j)
        if at_start and at_end:
            return i
        pos = i + 1


def armor(envelope: bytes) -> str:
    """The envelope as text: BEGIN line, standard base64 at 64 columns, END line (LF)."""
    text = base64.b64encode(envelope).decode("ascii")
    lines = [text[i : i + _COLUMNS] for i in range(0, len(text), _COLUMNS)]
    return "\n".join([_BEGIN, *lines, _END]) + "\n"


def dearmor(text: str) -> bytes:
    """Decode one armored envelope.

    Accepts LF or CRLF line ends and whitespace around the block; anything else (blank or
    over-long lines, headers, bad base64, non-canonical padding bits) raises
    :class:`EnvelopeFormatError`. The envelope itself is not parsed here.
    """
    body = text.strip()
    lines = body.replace("\r\n", "\n").split("\n")
    if "\r" in body.replace("\r\n", "") or len(lines) < 3:
        raise EnvelopeFormatError("armor is malformed")
    if lines[0] != _BEGIN or lines[-1] != _END:
        raise EnvelopeFormatError("armor is malformed")
    payload = lines[1:-1]
    for number, line in enumerate(payload, start=1):
        is_last = number == len(payload)
        # Every line but the last is exactly 64 characters, so one envelope has one armor.
        if _STD_LINE.fullmatch(line) is None or (not is_last and len(line) != _COLUMNS):
            raise EnvelopeFormatError("armor is malformed")
        if not is_last and "=" in line:
            raise EnvelopeFormatError("armor is malformed")
    joined = "".join(payload)
    try:
        envelope = binascii.a2b_base64(joined, strict_mode=True)
    except binascii.Error:
        raise EnvelopeFormatError("armor is malformed") from None
    if base64.b64encode(envelope).decode("ascii") != joined:
        raise EnvelopeFormatError("armor is malformed")
    return envelope


def find_armored(text: str) -> list[tuple[int, int, bytes]]:
    """Every armored block in ``text`` as ``(start, end, envelope)``.

    ``text[start:end]`` runs from the BEGIN marker through the END marker (its line end
    excluded). Markers count only as whole lines. A block that does not decode raises
    :class:`EnvelopeFormatError` rather than being skipped: a damaged block must not pass
    silently for clear text.
    """
    blocks: list[tuple[int, int, bytes]] = []
    pos = 0
    while (start := _find_marker(text, _BEGIN, pos)) >= 0:
        last = _find_marker(text, _END, start + len(_BEGIN))
        if last < 0:
            break
        end = last + len(_END)
        blocks.append((start, end, dearmor(text[start:end])))
        pos = end
    return blocks
