"""The key record's seal payload, byte for byte (SPEC §5).

Existing records carry seals over these exact bytes: any change to how the payload is built
must leave them identical, or every stored key stops verifying.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from sceau.core.model import Authorization, KeyRecord, Rules
from sceau.vocab import AuthorizationStatus, KeyStatus, Right

RECORD = KeyRecord(
    key_id=bytes(range(16)), seed=bytes(range(32)), master_version=3, owner="owner@example.com",
    application="app-1", name='Payroll été "Q3"', tag="hr", created_at=1_800_000_000,
    expires_at=1_800_086_400, not_before=1_800_000_100, not_after=None,
    status=KeyStatus.DISABLED, destroy_at=None, destroyed_at=None,
    authorizations=(
        Authorization("zed@example.com", frozenset({Right.DECRYPT, Right.MANAGE}),
                      AuthorizationStatus.ACTIVE, None, 1_800_000_500, "owner@example.com",
                      1_800_000_001),
        Authorization("*@example.org", frozenset({Right.DECRYPT}), AuthorizationStatus.DISABLED,
                      1_800_000_002, None, "owner@example.com", 1_800_000_003),
    ),
    rules=Rules(("10.0.0.0/8",), 5), decryptions=7, revision=4, seal=b"x" * 32,
)

PAYLOAD = (
    '{"application":"app-1","authorizations":[{"added_at":1800000003,"added_by":'
    '"owner@example.com","not_after":null,"not_before":1800000002,"principal":"*@example.org",'
    '"rights":["decrypt"],"status":"disabled"},{"added_at":1800000001,"added_by":'
    '"owner@example.com","not_after":1800000500,"not_before":null,"principal":'
    '"zed@example.com","rights":["decrypt","manage"],"status":"active"}],"created_at":'
    '1800000000,"decryptions":7,"destroy_at":null,"destroyed_at":null,"expires_at":1800086400,'
    '"key_id":"000102030405060708090a0b0c0d0e0f","master_version":3,"name":"Payroll été '
    '\\"Q3\\"","not_after":null,"not_before":1800000100,"owner":"owner@example.com",'
    '"revision":4,"rules":{"allowed_networks":["10.0.0.0/8"],"max_decryptions":5},'
    '"seed_sha256":"630dcd2966c4336691125448bbb25b4ff412a49c732db2c8abc1b8581bd710dd",'
    '"status":"disabled","tag":"hr","v":1}'
)


def test_payload_bytes_are_stable() -> None:
    assert RECORD.seal_payload() == PAYLOAD.encode()


def test_payload_does_not_depend_on_the_order_of_authorizations() -> None:
    swapped = dataclasses.replace(RECORD, authorizations=RECORD.authorizations[::-1])
    assert swapped.seal_payload() == RECORD.seal_payload()


CHANGES: dict[str, Any] = {
    "key_id": bytes(16), "seed": None, "master_version": 4, "owner": "other@example.com",
    "application": "app-2", "name": None, "tag": None, "created_at": 1, "expires_at": 2,
    "not_before": None, "not_after": 3, "status": KeyStatus.ACTIVE, "destroy_at": 4,
    "destroyed_at": 5, "authorizations": (), "rules": Rules(), "decryptions": 8,
    "revision": 5,
}


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_payload_covers_every_field_but_the_seal(field: str) -> None:
    """Whatever a database edit changes in a record, its seal no longer verifies."""
    assert {f.name for f in dataclasses.fields(KeyRecord)} == set(CHANGES) | {"seal"}
    changed = dataclasses.replace(RECORD, **{field: CHANGES[field]})
    assert changed.seal_payload() != RECORD.seal_payload()
    assert dataclasses.replace(RECORD, seal=b"y" * 32).seal_payload() == RECORD.seal_payload()
