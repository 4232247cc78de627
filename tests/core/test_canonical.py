"""RFC 8785 (JCS) examples for sceau.core.canonical.canonical_json."""

from __future__ import annotations

import json
import math
import struct

import pytest

from sceau.core.canonical import canonical_json

# RFC 8785 §3.2.2: the sample input, as JSON text, and its canonical form.
RFC_SAMPLE_INPUT = r"""{
  "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
  "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
  "literals": [null, true, false]
}"""
RFC_SAMPLE_OUTPUT = (
    '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
    '"string":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
)

# RFC 8785 §3.2.3: property sorting by UTF-16 code units (the emoji, a surrogate pair
# D83D DE00, sorts before U+FB33 although its code point is larger).
RFC_SORTING_INPUT = r"""{
  "\u20ac": "Euro Sign",
  "\r": "Carriage Return",
  "\ufb33": "Hebrew Letter Dalet With Dagesh",
  "1": "One",
  "\ud83d\ude00": "Emoji: Grinning Face",
  "\u0080": "Control",
  "\u00f6": "Latin Small Letter O With Diaeresis"
}"""
RFC_SORTING_ORDER = ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]

# RFC 8785 Appendix B: IEEE-754 bit patterns and their serialization.
APPENDIX_B = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


def test_rfc_sample() -> None:
    assert canonical_json(json.loads(RFC_SAMPLE_INPUT)) == RFC_SAMPLE_OUTPUT.encode("utf-8")


def test_rfc_sorting_by_utf16_code_units() -> None:
    out = canonical_json(json.loads(RFC_SORTING_INPUT)).decode("utf-8")
    keys = list(json.loads(out))
    assert keys == RFC_SORTING_ORDER
    # Only U+0000..U+001F are escaped; U+0080 and above stay literal UTF-8.
    assert out.startswith('{"\\r":"Carriage Return","1":"One","\u0080":"Control"')


@pytest.mark.parametrize(("bits", "expected"), APPENDIX_B)
def test_rfc_appendix_b_numbers(bits: str, expected: str) -> None:
    (value,) = struct.unpack(">d", bytes.fromhex(bits))
    assert canonical_json(value) == expected.encode("ascii")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1e30, "1e+30"),
        (4.50, "4.5"),
        (2e-3, "0.002"),
        (1e-7, "1e-7"),
        (-0.0, "0"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (10, "10"),
        (-1, "-1"),
    ],
)
def test_number_forms(value: float, expected: str) -> None:
    assert canonical_json(value) == expected.encode("ascii")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("\u000f", '"\\u000f"'),
        ("\n\t\b\f\r", '"\\n\\t\\b\\f\\r"'),
        ('"\\', '"\\"\\\\"'),
        ("/", '"/"'),
        ("\u2028\u00e9\U0001f600", '"\u2028\u00e9\U0001f600"'),
        ("\x7f", '"\x7f"'),
    ],
)
def test_string_escapes(value: str, expected: str) -> None:
    assert canonical_json(value) == expected.encode("utf-8")


def test_nested_objects_are_sorted_and_compact() -> None:
    value = {"b": [1, {"z": None, "a": True}], "a": {"y": "x"}}
    assert canonical_json(value) == b'{"a":{"y":"x"},"b":[1,{"a":true,"z":null}]}'


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 2**53 + 1, {1: "x"}])
def test_values_outside_i_json_are_refused(value: object) -> None:
    with pytest.raises(ValueError):
        canonical_json(value)


# --- the fast path must agree with the reference implementation -----------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.text()
)
_DOCS = st.recursive(
    _SCALARS,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(_DOCS)
def test_fast_path_equals_reference(doc: object) -> None:
    import rfc8785

    from sceau.core.canonical import canonical_json

    assert canonical_json(doc) == rfc8785.dumps(doc)
