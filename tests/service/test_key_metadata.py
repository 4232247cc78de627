"""The metadata view of a key record, as results carry it, and its documented model.

Results are compact JSON in member order, so the order is part of the wire format.
"""

from __future__ import annotations

import hashlib
import json

from core.test_seal_payload import RECORD
from sceau.service import keyops
from sceau.service.params import KeyMetadata

VIEW = (
    '{"key_id": "AAECAwQFBgcICQoLDA0ODw", "owner": "owner@example.com", "application": "app-1", '
    '"name": "Payroll \\u00e9t\\u00e9 \\"Q3\\"", "tag": "hr", "status": "disabled", '
    '"created_at": "2027-01-15T08:00:00Z", "expires_at": "2027-01-16T08:00:00Z", '
    '"not_before": "2027-01-15T08:01:40Z", "not_after": null, "destroy_at": null, '
    '"destroyed_at": null, "master_version": 3, "authorizations": [{"principal": '
    '"zed@example.com", "rights": ["decrypt", "manage"], "status": "active", "not_before": '
    'null, "not_after": "2027-01-15T08:08:20Z", "added_by": "owner@example.com", "added_at": '
    '"2027-01-15T08:00:01Z"}, {"principal": "*@example.org", "rights": ["decrypt"], '
    '"status": "disabled", "not_before": "2027-01-15T08:00:02Z", "not_after": null, '
    '"added_by": "owner@example.com", "added_at": "2027-01-15T08:00:03Z"}], "rules": '
    '{"allowed_networks": ["10.0.0.0/8"], "max_decryptions": 5}, "decryptions": 7, '
    '"revision": 4}'
)


def test_metadata_view_members_and_order() -> None:
    assert json.dumps(keyops.metadata(RECORD, 1_800_000_050)) == VIEW


def test_metadata_model_documents_the_view() -> None:
    schema = KeyMetadata.model_json_schema()
    assert list(schema["properties"]) == list(json.loads(VIEW))
    assert schema["required"] == list(json.loads(VIEW))
    # The whole JSON schema (types, nullability, titles) as /openapi.json publishes it. (An
    # entry's status became the AuthorizationStatus enum, same two values, in the redesign.)
    text = json.dumps(schema, sort_keys=True).encode()
    assert hashlib.sha256(text).hexdigest() == (
        "68bee0b904ee39551bc8019dfaa94df5e7b3ab4c9d1ef009e439338eb040e4b1"
    )
