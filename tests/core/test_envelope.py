"""Suite-1 envelopes, header parsing and text armor (SPEC §7, §10; SECURITY-CASES 23, 24)."""

from __future__ import annotations

import base64
import hashlib
import hmac as std_hmac
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from sceau.core.envelope import (
    GCM_HEADER_LEN,
    KEY_ID_LEN,
    MAGIC,
    NONCE_LEN,
    STREAM_HEADER_LEN,
    TAG_LEN,
    TOKEN_LEN,
    VERSION,
    EnvelopeFormatError,
    EnvelopeHeader,
    Suite,
    armor,
    dearmor,
    find_armored,
    open_gcm,
    parse_unverified_header,
    seal_gcm,
    seal_gcm_with_token,
    token_for,
)
from sceau.errors import DecryptionFailed, InvalidRequest

VECTORS = Path(__file__).resolve().parent.parent / "vectors"
SUITE1: list[dict[str, Any]] = json.loads((VECTORS / "suite1.json").read_text())["vectors"]
SUITE2: list[dict[str, Any]] = json.loads((VECTORS / "suite2.json").read_text())["vectors"]
DERIVATION: list[dict[str, Any]] = json.loads((VECTORS / "derivation.json").read_text())["vectors"]

KEY = bytes(range(32))
KEY_ID = bytes(range(0xA0, 0xB0))
NONCE = bytes(range(0xC0, 0xCC))
AAD = b"invoice-2026-0042"
SMALL = seal_gcm(KEY, KEY_ID, b"hello", AAD, nonce=NONCE)  # 33 + 5 + 16 = 54 bytes
STREAM_ENVELOPE = bytes.fromhex(SUITE2[0]["envelope"])


def _aad(vector: dict[str, Any]) -> bytes | None:
    return None if vector["aad"] is None else bytes.fromhex(vector["aad"])


def _reference_seal(key: bytes, key_id: bytes, nonce: bytes, pt: bytes, aad: bytes) -> bytes:
    """SPEC §7 suite 1 written out from the primitives, independent of the module."""
    header = b"SCU" + b"\x01" + b"\x01" + key_id + nonce
    return header + AESGCM(key).encrypt(nonce, pt, header + aad)


def test_layout_constants() -> None:
    assert (MAGIC, VERSION, int(Suite.GCM), int(Suite.STREAM)) == (b"SCU", 1, 1, 2)
    assert (KEY_ID_LEN, NONCE_LEN, TAG_LEN, TOKEN_LEN) == (16, 12, 16, 21)
    assert (GCM_HEADER_LEN, STREAM_HEADER_LEN) == (33, 41)


# --- known answers ------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", SUITE1, ids=[v["name"] for v in SUITE1])
def test_suite1_vector(vector: dict[str, Any]) -> None:
    key, key_id = bytes.fromhex(vector["data_key"]), bytes.fromhex(vector["key_id"])
    nonce, pt = bytes.fromhex(vector["nonce"]), bytes.fromhex(vector["plaintext"])
    envelope, aad = bytes.fromhex(vector["envelope"]), _aad(vector)
    assert _reference_seal(key, key_id, nonce, pt, aad or b"") == envelope
    assert seal_gcm(key, key_id, pt, aad, nonce=nonce) == envelope
    assert seal_gcm_with_token(key, token_for(key_id), nonce, pt, aad) == envelope
    assert open_gcm(key, envelope, aad) == pt
    assert parse_unverified_header(envelope) == EnvelopeHeader(1, Suite.GCM, key_id)
    assert armor(envelope) == vector["armored"]
    assert dearmor(vector["armored"]) == envelope


def test_none_and_empty_aad_are_the_same() -> None:
    by_name = {v["name"]: v for v in SUITE1}
    assert (
        by_name["empty aad equals no aad"]["envelope"]
        == (by_name["short plaintext, no aad"]["envelope"])
    )


@pytest.mark.parametrize("vector", DERIVATION, ids=[v["name"] for v in DERIVATION])
def test_derivation_vector(vector: dict[str, Any]) -> None:
    master = bytes.fromhex(vector["master_key"])
    message = b"sceau/dk/v1" + bytes.fromhex(vector["key_id"]) + bytes.fromhex(vector["seed"])
    mac = crypto_hmac.HMAC(master, hashes.SHA256())
    mac.update(message)
    derived = mac.finalize()
    assert derived.hex() == vector["data_key"]
    assert std_hmac.new(master, message, hashlib.sha256).hexdigest() == vector["data_key"]


# --- header parsing -----------------------------------------------------------------------------


def _with(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


MALFORMED_HEADERS = [
    (b"", "empty"),
    (b"SC", "shorter than the magic"),
    (b"SCU\x01", "no suite byte"),
    (_with(SMALL, 0, b"XCU"), "bad magic"),
    (_with(SMALL, 0, b"scu"), "lower-case magic"),
    (_with(SMALL, 3, b"\x00"), "version 0"),
    (_with(SMALL, 3, b"\x02"), "version 2"),
    (_with(SMALL, 3, b"\xff"), "version 255"),
    (_with(SMALL, 4, b"\x00"), "suite 0"),
    (_with(SMALL, 4, b"\x03"), "suite 3"),
    (_with(SMALL, 4, b"\xff"), "suite 255"),
    (SMALL[: GCM_HEADER_LEN + TAG_LEN - 1], "suite 1 shorter than header and tag"),
    (STREAM_ENVELOPE[: STREAM_HEADER_LEN + TAG_LEN - 1], "suite 2 shorter than header and tag"),
    (_with(STREAM_ENVELOPE, 37, b"\x00\x00\x00\x00"), "segment size 0"),
    (_with(STREAM_ENVELOPE, 37, (16 * 1024 * 1024 + 1).to_bytes(4, "big")), "segment size huge"),
    (_with(STREAM_ENVELOPE, 37, b"\xff\xff\xff\xff"), "segment size 2**32 - 1"),
]


@pytest.mark.parametrize(("data", "why"), MALFORMED_HEADERS, ids=[w for _, w in MALFORMED_HEADERS])
def test_malformed_header_is_invalid_request(data: bytes, why: str) -> None:
    with pytest.raises(EnvelopeFormatError) as info:
        parse_unverified_header(data)
    assert isinstance(info.value, InvalidRequest)
    assert info.value.code == "invalid_request"
    assert data.hex() not in info.value.detail or not data


def test_stream_header_parses() -> None:
    header = parse_unverified_header(STREAM_ENVELOPE)
    assert header == EnvelopeHeader(1, Suite.STREAM, bytes.fromhex(SUITE2[0]["key_id"]))


def test_minimal_suite1_length_parses() -> None:
    assert parse_unverified_header(SMALL[: GCM_HEADER_LEN + TAG_LEN]).suite is Suite.GCM


# --- opening what was tampered with (SECURITY-CASES 23, 24) --------------------------------------


def _expected_for_flip(offset: int) -> type[Exception]:
    # Magic, version and suite are checked before any cryptography; everything else,
    # key id included (it is in the AAD), only fails authentication.
    return EnvelopeFormatError if offset < 5 else DecryptionFailed


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
@pytest.mark.parametrize("offset", range(len(SMALL)))
def test_every_byte_flipped_is_refused(offset: int, mask: int) -> None:
    tampered = bytearray(SMALL)
    tampered[offset] ^= mask
    with pytest.raises(_expected_for_flip(offset)):
        open_gcm(KEY, bytes(tampered), AAD)


@pytest.mark.parametrize("length", range(len(SMALL)))
def test_truncation_at_every_length_is_refused(length: int) -> None:
    expected = EnvelopeFormatError if length < GCM_HEADER_LEN + TAG_LEN else DecryptionFailed
    with pytest.raises(expected):
        open_gcm(KEY, SMALL[:length], AAD)


@pytest.mark.parametrize("extra", [b"\x00", b"\xff" * 16, SMALL])
def test_extension_is_refused(extra: bytes) -> None:
    with pytest.raises(DecryptionFailed):
        open_gcm(KEY, SMALL + extra, AAD)


@pytest.mark.parametrize(
    ("key", "aad"),
    [
        (bytes(32), AAD),
        (KEY, b"invoice-2026-0043"),
        (KEY, None),
        (KEY, AAD + b"\x00"),
    ],
    ids=["wrong key", "aad of another item", "aad missing", "aad extended"],
)
def test_wrong_key_or_aad_is_refused_with_one_opaque_message(key: bytes, aad: bytes | None) -> None:
    with pytest.raises(DecryptionFailed) as info:
        open_gcm(key, SMALL, aad)
    assert info.value.detail == "decryption failed"
    assert info.value.code == "integrity_failure"


def test_stream_envelope_is_refused_by_open_gcm() -> None:
    with pytest.raises(EnvelopeFormatError):
        open_gcm(KEY, STREAM_ENVELOPE, None)
    suite2_marked = _with(SMALL, 4, b"\x02") + bytes(8)  # long enough for a suite-2 header
    with pytest.raises(EnvelopeFormatError):
        open_gcm(KEY, suite2_marked, AAD)


# --- sealing ------------------------------------------------------------------------------------


def test_random_nonce_by_default() -> None:
    first, second = seal_gcm(KEY, KEY_ID, b"x", None), seal_gcm(KEY, KEY_ID, b"x", None)
    assert first[TOKEN_LEN:GCM_HEADER_LEN] != second[TOKEN_LEN:GCM_HEADER_LEN]
    assert open_gcm(KEY, first, None) == open_gcm(KEY, second, None) == b"x"


@given(plaintext=st.binary(max_size=300), aad=st.none() | st.binary(max_size=40))
def test_round_trip(plaintext: bytes, aad: bytes | None) -> None:
    envelope = seal_gcm(KEY, KEY_ID, plaintext, aad)
    assert len(envelope) == GCM_HEADER_LEN + len(plaintext) + TAG_LEN
    assert envelope[:TOKEN_LEN] == token_for(KEY_ID)
    assert open_gcm(KEY, envelope, aad) == plaintext


def test_token_layout() -> None:
    assert token_for(KEY_ID) == b"SCU\x01\x01" + KEY_ID


@pytest.mark.parametrize(
    ("token", "iv", "key", "error"),
    [
        (token_for(KEY_ID)[:-1], NONCE, KEY, EnvelopeFormatError),
        (token_for(KEY_ID) + b"\x00", NONCE, KEY, EnvelopeFormatError),
        (b"SCU\x01\x02" + KEY_ID, NONCE, KEY, EnvelopeFormatError),
        (b"XCU\x01\x01" + KEY_ID, NONCE, KEY, EnvelopeFormatError),
        (token_for(KEY_ID), NONCE[:-1], KEY, ValueError),
        (token_for(KEY_ID), NONCE, KEY[:16], ValueError),
    ],
    ids=["short token", "long token", "suite-2 token", "bad magic", "short iv", "128-bit key"],
)
def test_seal_with_bad_token_iv_or_key(
    token: bytes, iv: bytes, key: bytes, error: type[Exception]
) -> None:
    with pytest.raises(error):
        seal_gcm_with_token(key, token, iv, b"data", None)


@pytest.mark.parametrize("key_id", [b"", bytes(15), bytes(17)])
def test_token_needs_16_byte_key_id(key_id: bytes) -> None:
    with pytest.raises(ValueError):
        token_for(key_id)


def test_open_with_wrong_key_length_is_a_caller_bug() -> None:
    with pytest.raises(ValueError):
        open_gcm(KEY[:16], SMALL, AAD)


# --- armor --------------------------------------------------------------------------------------

BEGIN, END = "-----BEGIN SCEAU MESSAGE-----", "-----END SCEAU MESSAGE-----"
LONG = seal_gcm(KEY, KEY_ID, bytes(200), None, nonce=NONCE)  # several armor lines
LONG_ARMOR = armor(LONG)


def test_armor_shape() -> None:
    lines = LONG_ARMOR.split("\n")
    assert lines[0] == BEGIN and lines[-2] == END and lines[-1] == ""
    body = lines[1:-2]
    assert all(len(line) == 64 for line in body[:-1]) and 1 <= len(body[-1]) <= 64
    assert base64.b64decode("".join(body)) == LONG


@given(st.binary(min_size=1, max_size=400))
def test_armor_round_trip(envelope: bytes) -> None:
    text = armor(envelope)
    assert dearmor(text) == envelope
    assert dearmor(text.replace("\n", "\r\n")) == envelope
    assert dearmor("\n  \t" + text + "\r\n\n") == envelope


def _replace_body_line(index: int, new: str) -> str:
    lines = LONG_ARMOR.split("\n")
    lines[index] = new
    return "\n".join(lines)


_BODY = LONG_ARMOR.split("\n")[1:-2]
MALFORMED_ARMOR = [
    ("", "empty"),
    (BEGIN + "\n" + END + "\n", "no body"),
    (LONG_ARMOR.replace(BEGIN, "-----BEGIN PGP MESSAGE-----"), "other label"),
    (LONG_ARMOR.replace(END, ""), "missing END"),
    (LONG_ARMOR.replace(BEGIN + "\n", ""), "missing BEGIN"),
    (LONG_ARMOR.replace(BEGIN, BEGIN + " "), "trailing space on marker"),
    (LONG_ARMOR.replace(BEGIN + "\n", BEGIN + "\nVersion: 1\n"), "header line"),
    (LONG_ARMOR.replace(BEGIN + "\n", BEGIN + "\n\n"), "blank line"),
    (_replace_body_line(1, _BODY[0] + _BODY[1][:1]), "line over 64 columns"),
    (_replace_body_line(1, _BODY[0][:-4]), "short non-final line"),
    (_replace_body_line(1, _BODY[0][:-1] + "*"), "bad character"),
    (_replace_body_line(1, _BODY[0][:-1] + "-"), "base64url character"),
    (_replace_body_line(1, _BODY[0][:30] + " " + _BODY[0][31:]), "inner space"),
    (LONG_ARMOR.replace("\n", "\r"), "CR line ends"),
    (LONG_ARMOR.replace(_BODY[0], _BODY[0][:40] + "\r" + _BODY[0][41:]), "lone CR"),
    (armor(b"\xff").replace("/w==", "/x=="), "non-canonical padding bits"),
    (armor(b"\xff").replace("/w==", "/w"), "missing padding"),
    (armor(b"\xff").replace("/w==", "/w="), "short padding"),
    (armor(bytes(6)).replace("AAAAAAAA", "AA==AAAA"), "padding inside a line"),
    (LONG_ARMOR + LONG_ARMOR, "two blocks"),
]


@pytest.mark.parametrize(("text", "why"), MALFORMED_ARMOR, ids=[w for _, w in MALFORMED_ARMOR])
def test_malformed_armor_is_refused(text: str, why: str) -> None:
    with pytest.raises(EnvelopeFormatError):
        dearmor(text)


def test_padding_only_in_the_last_line() -> None:
    # A full 64-column line that ends in padding, followed by another line.
    full = armor(bytes(48))
    assert full.split("\n")[1] == "A" * 64
    text = full.replace("A" * 64, "A" * 62 + "==\nAA==")
    with pytest.raises(EnvelopeFormatError):
        dearmor(text)


def test_find_armored_in_a_mail_body() -> None:
    first, second = SMALL, LONG
    text = (
        "Hello,\n\n"
        + armor(first)
        + "\nand the attachment:\r\n"
        + armor(second).replace("\n", "\r\n")
        + "-- \nsig"
    )
    found = find_armored(text)
    assert [envelope for _, _, envelope in found] == [first, second]
    for start, end, envelope in found:
        assert text[start:end].startswith(BEGIN)
        assert text[start:end].endswith(END)
        assert dearmor(text[start:end]) == envelope


def test_find_armored_ignores_quoted_and_incomplete_blocks() -> None:
    quoted = "\n".join("> " + line for line in armor(SMALL).splitlines())
    assert find_armored("On Monday you wrote:\n" + quoted + "\n") == []
    assert find_armored("plain text") == []
    assert find_armored(armor(SMALL).replace(END, "")) == []


def test_find_armored_refuses_a_damaged_block() -> None:
    damaged = armor(SMALL).replace(BEGIN + "\n", BEGIN + "\n!")
    with pytest.raises(EnvelopeFormatError):
        find_armored("text\n" + damaged)


def test_vectors_in_format_doc_match_the_json() -> None:
    doc = (VECTORS.parent.parent / "docs" / "format.md").read_text()
    flat = "".join(doc.split())
    for vector in SUITE1:
        if vector["name"] != "empty aad equals no aad":  # same envelope as its twin
            assert vector["envelope"] in flat, vector["name"]
    for vector in DERIVATION:
        assert vector["data_key"] in flat, vector["name"]
    assert SUITE1[-1]["armored"] in doc
