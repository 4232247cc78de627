"""Strict canonical base64url: what is accepted, what is refused, and round trips."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sceau.core.b64 import MalformedBase64, b64u_decode, b64u_encode

GOOD = [
    ("", b""),
    ("AA", b"\x00"),
    ("AAE", b"\x00\x01"),
    ("AAEC", b"\x00\x01\x02"),
    ("-_8", b"\xfb\xff"),
    ("_w", b"\xff"),
    ("__8", b"\xff\xff"),
    ("Zm9vYmFy", b"foobar"),  # RFC 4648 §10
    ("Zm9vYmE", b"fooba"),
    ("Zm9vYg", b"foob"),
]

BAD = [
    ("Zg==", "padding"),
    ("Zg=", "partial padding"),
    ("Zm9v=", "padding after a full group"),
    ("Zm 9v", "inner space"),
    (" Zm9v", "leading space"),
    ("Zm9v\n", "trailing newline"),
    ("Zm9v\t", "tab"),
    ("Zm9v+w", "standard alphabet plus"),
    ("Zm9v/w", "standard alphabet slash"),
    ("Zm9v.w", "dot"),
    ("Zm9vé", "non-ASCII"),
    ("Zm9v\x00", "NUL"),
    ("A", "length 1 mod 4"),
    ("AAAAA", "length 5"),
    ("Zh", "non-canonical bits, 2-char tail"),
    ("_x", "non-canonical bits, 2-char tail high"),
    ("AAF", "non-canonical bits, 3-char tail"),
    ("__9", "non-canonical bits, 3-char tail high"),
]


@pytest.mark.parametrize(("text", "data"), GOOD)
def test_known_values_decode_and_encode(text: str, data: bytes) -> None:
    assert b64u_decode(text) == data
    assert b64u_decode(text.encode("ascii")) == data
    assert b64u_encode(data) == text


@pytest.mark.parametrize(("text", "why"), BAD)
def test_malformed_is_refused(text: str, why: str) -> None:
    with pytest.raises(MalformedBase64):
        b64u_decode(text)


@pytest.mark.parametrize(("text", "why"), [b for b in BAD if b[0].isascii()])
def test_malformed_bytes_are_refused(text: str, why: str) -> None:
    with pytest.raises(MalformedBase64):
        b64u_decode(text.encode("ascii"))


def test_malformed_is_a_value_error_and_does_not_echo_input() -> None:
    secret = "c2VjcmV0LXRva2Vu=="
    with pytest.raises(ValueError) as info:
        b64u_decode(secret)
    assert secret not in str(info.value)


def test_wrong_type_is_refused() -> None:
    with pytest.raises(TypeError):
        b64u_decode(bytearray(b"AA"))  # type: ignore[arg-type]


@given(st.binary(max_size=200))
def test_round_trip(data: bytes) -> None:
    text = b64u_encode(data)
    assert "=" not in text
    assert b64u_decode(text) == data
    assert text == base64.urlsafe_b64encode(data).decode().rstrip("=")


@given(
    st.text(
        alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", max_size=40
    )
)
def test_accepted_text_is_exactly_the_canonical_encoding(text: str) -> None:
    try:
        data = b64u_decode(text)
    except MalformedBase64:
        # Refused only for an impossible length or non-zero unused bits.
        padded = text + "=" * (-len(text) % 4)
        assert len(text) % 4 == 1 or b64u_encode(base64.urlsafe_b64decode(padded)) != text
    else:
        assert b64u_encode(data) == text
