"""Seal payloads of the sealed rows, byte for byte (``sceau.core.rowseal``).

Rows in existing databases carry seals over these exact bytes: however the row models
derive what their seal covers, the payload of each kind must stay what it is here.
"""

from __future__ import annotations

from typing import Any

import pytest

from sceau.core.rowseal import SealedRow, payload_of
from sceau.store.accounts import AccountRow, ConsoleSessionRow
from sceau.store.applications import AppKeyRow, AppRow
from sceau.store.approvals import ApprovalRow
from sceau.store.nodes import AuditNodeRow
from sceau.store.workspace import CseAdminRow, DkeKeyRow, DkeVersionRow
from sceau.vocab import AppKeyStatus, AppStatus

ROWS: dict[str, tuple[Any, str]] = {
    "account": (
        AccountRow("alice@example.com", "$argon2id$h", "admin", "active", True, "SECRET", 1, 2,
                   "password", 3),
        '{"fields":{"auth":"password","created_at":1,"must_change_password":true,'
        '"password_hash":"$argon2id$h","revision":3,"role":"admin","status":"active",'
        '"totp_secret":"SECRET","updated_at":2},"id":"alice@example.com","kind":"account",'
        '"v":1}',
    ),
    "console_session": (
        ConsoleSessionRow("ab" * 32, "alice@example.com", "c" * 43, 10, 20, "10.1.2.3"),
        '{"fields":{"created_at":10,"csrf":"' + "c" * 43 + '","ip":"10.1.2.3",'
        '"username":"alice@example.com"},"id":"' + "ab" * 32 + '","kind":"console_session",'
        '"v":1}',
    ),
    "application": (
        AppRow("app-1", "App", ("*@example.com", "bob@example.org"), AppStatus.ENABLED,
               {"kty": "EC", "crv": "P-256"}, 5, 9, 2),
        '{"fields":{"created_at":5,"enc_jwk":{"crv":"P-256","kty":"EC"},"name":"App",'
        '"revision":2,"status":"enabled","users":["*@example.com","bob@example.org"]},'
        '"id":"app-1","kind":"application","v":1}',
    ),
    "app_key": (
        AppKeyRow("kid-1", "app-1", "ES256", {"kty": "EC", "x": "1"}, AppKeyStatus.ACTIVE, 6,
                  None, 3),
        '{"fields":{"added_at":6,"alg":"ES256","app_id":"app-1","jwk":{"kty":"EC","x":"1"},'
        '"retired_at":null,"revision":3,"status":"active"},"id":"kid-1","kind":"app_key",'
        '"v":1}',
    ),
    "approval": (
        ApprovalRow("a" * 32, "key.enable", '{"approvals":[],"params":{}}', "Enable",
                    "alice@example.com", 11, 12, "pending", None, None, 2),
        '{"fields":{"action":"key.enable","decided_at":null,"decided_by":null,'
        '"expires_at":12,"payload":"{\\"approvals\\":[],\\"params\\":{}}","requested_at":11,'
        '"requested_by":"alice@example.com","revision":2,"status":"pending",'
        '"summary":"Enable"},"id":"' + "a" * 32 + '","kind":"approval","v":1}',
    ),
    "audit_node": (
        AuditNodeRow("n1", "server", 13),
        '{"fields":{"kind":"server","registered_at":13},"id":"n1","kind":"audit_node","v":1}',
    ),
    "cse_admin": (
        CseAdminRow("admin@example.com", "alice@example.com", 14, 2),
        '{"fields":{"added_at":14,"added_by":"alice@example.com","revision":2},'
        '"id":"admin@example.com","kind":"cse_admin","v":1}',
    ),
    "dke_key": (
        DkeKeyRow("dke-1", bytes(range(16)), 15, 2),
        '{"fields":{"created_at":15,"key_id":"000102030405060708090a0b0c0d0e0f",'
        '"revision":2},"id":"dke-1","kind":"dke_key","v":1}',
    ),
    "dke_key_version": (
        DkeVersionRow("dke-1", "k1", "nnnn", 65537, "active", 16, None, 2),
        '{"fields":{"created_at":16,"e":65537,"n":"nnnn","retired_at":null,"revision":2,'
        '"status":"active"},"id":"dke-1/k1","kind":"dke_key_version","v":1}',
    ),
}


@pytest.mark.parametrize("kind", sorted(ROWS))
def test_row_seal_payload_bytes_are_stable(kind: str) -> None:
    row, expected = ROWS[kind]
    sealed: SealedRow = row
    assert str(sealed.seal_kind()) == kind
    assert payload_of(sealed) == expected.encode()
