"""Batch items read by ``params.parse_item``: the same values, and the same refusals, as the
pydantic item models give."""

from __future__ import annotations

from typing import Any

import pytest

from sceau.core.b64 import b64u_encode
from sceau.errors import InvalidRequest
from sceau.service.params import DecryptItem, EncryptItem, parse_item, parse_model

DATA = b64u_encode(b"some bytes \x00\xff")
AAD = b64u_encode(b"context")

CASES: list[Any] = [
    {"@": DATA},
    {"@": DATA, "aad": AAD},
    {"@": DATA, "aad": None},
    {"@": ""},
    {"@": DATA + "="},  # padding: not canonical
    {"@": "ab=c"},
    {"@": "a"},  # impossible length
    {"@": "AB"},  # non-zero trailing bits
    {"@": "é"},
    {"@": 7},
    {"@": None},
    {"@": [DATA]},
    {"@": DATA.encode()},
    {"@": DATA, "aad": 1},
    {"@": DATA, "aad": "***"},
    {"@": DATA, "extra": 1},
    {"@": DATA, "aad": AAD, "extra": 1},
    {"aad": AAD},
    {"other": DATA},
    {},
    [DATA],
    DATA,
    None,
]


def _for(model: type[EncryptItem] | type[DecryptItem], case: Any) -> Any:
    name = "plaintext" if model is EncryptItem else "ciphertext"
    if isinstance(case, dict):
        return {(name if k == "@" else k): v for k, v in case.items()}
    return case


@pytest.mark.parametrize("model", [EncryptItem, DecryptItem])
@pytest.mark.parametrize("case", CASES)
def test_parse_item_matches_the_model(model: type[EncryptItem] | type[DecryptItem],
                                      case: Any) -> None:
    raw = _for(model, case)
    try:
        expected = parse_model(model, raw, where="items.3")
    except InvalidRequest as refusal:
        with pytest.raises(InvalidRequest) as info:
            parse_item(model, raw, where="items.3")
        assert info.value.detail == refusal.detail
        return
    data = expected.plaintext if isinstance(expected, EncryptItem) else expected.ciphertext
    assert parse_item(model, raw, where="items.3") == (data, expected.aad)


def test_parse_item_refusals_name_the_member() -> None:
    with pytest.raises(InvalidRequest, match="plaintext"):
        parse_item(EncryptItem, {"plaintext": "a"}, where="items.0")
    with pytest.raises(InvalidRequest, match="must be an object"):
        parse_item(DecryptItem, "x", where="items.1")
