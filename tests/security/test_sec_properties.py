"""Property tests of the parsers that see hostile bytes first (hypothesis, bounded).

Envelope and STREAM parsing run through the atheris target's ``one_input`` (so the fuzz
target cannot rot) plus a segment-reordering property; canonical JSON's fast path is
checked against the rfc8785 reference implementation; the strict JSON parser and the JWS guard must
refuse arbitrary and mutated input only with their own error types. The policy decision
property lives with the policy tests (tests/core/test_policy.py::test_decide_use_total).
"""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import rfc8785
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sceau.core.canonical import canonical_json
from sceau.core.stream import decrypt_stream, encrypt_stream
from sceau.errors import DecryptionFailed, InvalidToken, SceauError
from sceau.jose.guard import MalformedJson, parse_unverified_jws, strict_json_loads

BOUNDED = settings(max_examples=300, deadline=None, database=None,
                   suppress_health_check=[HealthCheck.too_slow])


def _load_fuzz_target() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "fuzz" / "fuzz_envelope.py"
    spec = importlib.util.spec_from_file_location("fuzz_envelope", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FUZZ = _load_fuzz_target()


# --- envelopes -------------------------------------------------------------------------------


@BOUNDED
@given(st.binary(max_size=256))
def test_envelope_parsers_fail_only_with_sceau_errors(data: bytes) -> None:
    FUZZ.one_input(data)


@pytest.mark.parametrize("seed", [b"", b"\x00", b"SCU\x01\x01", b"SCU\x01\x02" + bytes(40)])
def test_fuzz_target_seeds(seed: bytes) -> None:
    FUZZ.one_input(seed)


def test_fuzz_target_catches_an_opened_modified_envelope(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """The oracle has teeth: a parser that opens anything is reported."""
    monkeypatch.setattr(FUZZ, "open_gcm", lambda *_a: b"opened")
    with pytest.raises(AssertionError, match="modified envelope opened"):
        FUZZ.one_input(b"\x01\x02")


def _segments() -> tuple[bytes, list[bytes]]:
    envelope = FUZZ.VALID_STREAM
    header, body = envelope[:41], envelope[41:]
    unit = 16 + 16  # segment size 16 plus the tag
    return header, [body[i:i + unit] for i in range(0, len(body), unit)]


@BOUNDED
@given(st.data())
def test_stream_segments_reordered_dropped_or_repeated_are_refused(data: st.DataObject) -> None:
    header, segments = _segments()
    indices = data.draw(st.lists(st.integers(0, len(segments) - 1), min_size=0,
                                 max_size=len(segments) + 2))
    if indices == list(range(len(segments))):
        return
    envelope = header + b"".join(segments[i] for i in indices)
    with pytest.raises(DecryptionFailed):
        decrypt_stream(io.BytesIO(envelope), io.BytesIO(), FUZZ.KEY)


def test_stream_fixture_round_trips() -> None:
    out = io.BytesIO()
    assert decrypt_stream(io.BytesIO(FUZZ.VALID_STREAM), out, FUZZ.KEY) == 100
    assert out.getvalue() == b"s" * 100
    again = io.BytesIO()
    encrypt_stream(io.BytesIO(b"s" * 100), again, FUZZ.KEY, FUZZ.KEY_ID, segment_size=16,
                   salt=bytes(16))
    assert again.getvalue() == FUZZ.VALID_STREAM


# --- canonical JSON --------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1),
    # Within ±2**53: a float like 2.0**53 is written "9007199254740992", which reads back as
    # an int outside the I-JSON range — a property of the format, not of the encoder.
    st.floats(min_value=-(2.0**53) + 1, max_value=2.0**53 - 1, allow_nan=False),
    st.text(max_size=20),
)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=5)),
    max_leaves=20)


@BOUNDED
@given(json_values)
def test_canonical_json_fast_path_matches_the_reference(value: Any) -> None:
    """canonical_json's json.dumps fast path agrees with the rfc8785 reference, refusals too."""
    try:
        reference = rfc8785.dumps(value)
    except rfc8785.CanonicalizationError:
        with pytest.raises(ValueError):
            canonical_json(value)
        return
    ours = canonical_json(value)
    assert ours == reference
    # Canonical form is a fixed point and parses back to the same value.
    assert canonical_json(json.loads(ours)) == ours
    assert strict_json_loads(ours) == json.loads(ours)


# --- strict JSON and the JWS guard ---------------------------------------------------------------


@BOUNDED
@given(st.binary(max_size=300))
def test_strict_json_refuses_only_with_malformed_json(data: bytes) -> None:
    try:
        strict_json_loads(data)
    except MalformedJson:
        pass


@BOUNDED
@given(json_values)
def test_strict_json_accepts_what_json_writes(value: Any) -> None:
    text = json.dumps(value).encode()
    assert strict_json_loads(text, max_depth=64) == json.loads(text)


GOOD_JWS = b".".join([
    b"eyJhbGciOiJFUzI1NiIsImtpZCI6ImstMSIsInR5cCI6InNjZWF1LXJlcStqd3QifQ",
    b"eyJpc3MiOiJhcHAifQ",
    b"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQ",
])


@BOUNDED
@given(st.one_of(st.binary(max_size=300),
                 st.tuples(st.integers(0, len(GOOD_JWS) - 1), st.integers(1, 255)).map(
                     lambda p: GOOD_JWS[:p[0]] + bytes([GOOD_JWS[p[0]] ^ p[1]])
                     + GOOD_JWS[p[0] + 1:])))
def test_jws_guard_refuses_only_with_invalid_token(token: bytes) -> None:
    try:
        parse_unverified_jws(token, expected_typ="sceau-req+jwt",
                             allowed_algs=frozenset({"ES256"}))
    except InvalidToken:
        pass
    except SceauError as exc:  # pragma: no cover - a wrong error class is a failure
        raise AssertionError(f"unexpected {type(exc).__name__}") from exc


def test_guard_fixture_is_valid() -> None:
    parsed = parse_unverified_jws(GOOD_JWS, expected_typ="sceau-req+jwt",
                                  allowed_algs=frozenset({"ES256"}))
    assert parsed.kid == "k-1" and parsed.claims == {"iss": "app"}
