"""Atheris fuzz target for the envelope parsers (``make fuzz``; never collected by pytest).

Feeds arbitrary bytes to everything that parses ciphertext before authenticating it: the
suite-1 header parser and opener, the armor decoder and the suite-2 STREAM decryptor, plus
byte-level mutations of valid envelopes. The only acceptable outcomes are a result or a
:class:`~sceau.errors.SceauError` (``invalid_request`` / ``integrity_failure``); anything
else — ``IndexError``, ``struct.error``, a ``ValueError`` from a primitive, a hang — is a
bug. :func:`one_input` is importable without atheris, so the security suite also runs it
under hypothesis for a bounded time.

    .venv/bin/python tests/fuzz/fuzz_envelope.py -max_total_time=60
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable

from sceau.core.envelope import dearmor, open_gcm, parse_unverified_header, seal_gcm
from sceau.core.stream import StreamDecryptor, decrypt_stream, encrypt_stream
from sceau.errors import SceauError

KEY = bytes(range(32))
KEY_ID = bytes(range(100, 116))
SALT = bytes(16)
AAD = b"fuzz-aad"
VALID_GCM = seal_gcm(KEY, KEY_ID, b"fuzz plaintext " * 4, AAD, nonce=bytes(12))


def _valid_stream() -> bytes:
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(b"s" * 100), out, KEY, KEY_ID, segment_size=16, salt=SALT)
    return out.getvalue()


VALID_STREAM = _valid_stream()


def _mutate(base: bytes, data: bytes) -> bytes:
    """A valid envelope edited by ``data``: flips at chosen offsets, then cut or extended."""
    out = bytearray(base)
    for i in range(0, len(data) - 1, 2):
        out[data[i] % len(out)] ^= data[i + 1] or 1
    if data and data[0] & 1:
        del out[data[-1] % len(out):]
    elif data and data[0] & 2:
        out += data
    return bytes(out)


def _open_stream(envelope: bytes) -> bytes:
    header, body = envelope[:41], envelope[41:]
    decryptor = StreamDecryptor(KEY, header)
    plain = decryptor.update(body)
    return plain + decryptor.finalize()


def one_input(data: bytes) -> None:
    """Run every parser on ``data``; raise only if something other than SceauError escapes,
    or if a modified envelope opens."""
    gcm, stream = _mutate(VALID_GCM, data), _mutate(VALID_STREAM, data)
    # (parser, input, the one input that may open: None when any outcome is fine)
    candidates: list[tuple[Callable[[bytes], object], bytes, bytes | None]] = [
        (parse_unverified_header, data, None),
        (lambda d: dearmor(d.decode("utf-8", "replace")), data, None),
        (lambda d: open_gcm(KEY, d, AAD), data, VALID_GCM),
        (lambda d: open_gcm(KEY, d, AAD), gcm, VALID_GCM),
        (_open_stream, data, VALID_STREAM),
        (_open_stream, stream, VALID_STREAM),
        (lambda d: decrypt_stream(io.BytesIO(d), io.BytesIO(), KEY), stream, VALID_STREAM),
    ]
    for parse, value, only in candidates:
        try:
            parse(value)
        except SceauError:
            continue
        if only is not None and value != only:
            raise AssertionError("a modified envelope opened")


def main() -> None:
    import atheris  # only needed here: pip install atheris

    atheris.instrument_all()
    atheris.Setup(sys.argv, lambda data: one_input(bytes(data)))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
