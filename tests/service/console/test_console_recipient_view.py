"""The console's key table and key page for a `user` account that may only use a key.

Such an account sees the key's id, name, owner, status and its own authorization, like the
API's `list-keys` recipient view; the owner (and a `manage` holder, and admin or auditor
accounts) keep everything (docs/policy.md).
"""

from __future__ import annotations

import pytest

from console_support import PASSWORD, Console, put_account
from sceau.vocab import Role
from support import Server

RUN = "7c1e5a09"  # fixed: test ids must be the same in every pytest-xdist worker
OWNER = f"olga-{RUN}@example.com"
BOB = f"bob-{RUN}@example.net"
DOMAIN = f"crew-{RUN}.example"
PATTERN = f"*@{DOMAIN}"
MEMBER = f"dora@{DOMAIN}"
MANAGER = f"max-{RUN}@example.com"
TAG = f"legal-hold-{RUN}"
NETWORK = "10.55.44.0/24"


@pytest.fixture(scope="module")
def key(server: Server) -> dict[str, str]:
    app = server.register_app(f"app-{RUN}")
    with server.client(app, OWNER) as owner:
        key_id, _ = owner.encrypt(b"x", name=f"Contract {RUN}", tag=TAG,
                                  recipients=[BOB, PATTERN],
                                  rules={"allowed_networks": [NETWORK], "max_decryptions": 3})
        owner.add_authorization(key_id, MANAGER, ["decrypt", "manage"])
    for account in (OWNER, BOB, MEMBER, MANAGER):
        put_account(server, account, PASSWORD, Role.USER)
    return {"key_id": key_id, "app_id": app.app_id}


def hidden_from(own: str, app_id: str) -> list[str]:
    """What a recipient's pages must not contain: other principals and the key's policy."""
    others = {BOB, PATTERN, MANAGER} - {own}
    return [*others, TAG, NETWORK, app_id, "Max decryptions", "Allowed networks", "Added by"]


@pytest.mark.parametrize(("account", "own"), [(BOB, BOB), (MEMBER, PATTERN)])
def test_recipient_pages_show_only_its_own_authorization(console: Console, key: dict[str, str],
                                                         account: str, own: str) -> None:
    assert console.login(account, PASSWORD).status_code == 303
    table = console.http.get("/console/keys").text
    page = console.http.get(f"/console/keys/{key['key_id']}")
    assert page.status_code == 200
    assert key["key_id"] in table and f"Contract {RUN}" in table and OWNER in table
    assert f"Contract {RUN}" in page.text and OWNER in page.text
    assert f'<td class="principal">{own}</td>' in page.text
    assert page.text.count('<td class="principal">') == 1
    assert 'id="recipient-view"' in page.text
    for text, where in ((table, "table"), (page.text, "page")):
        for hidden in hidden_from(own, key["app_id"]):
            assert hidden not in text, (hidden, where)
    # No management for a recipient, and a filter on a hidden member does not find the key.
    assert "Add an authorization" not in page.text and "Destroy key" not in page.text
    assert key["key_id"] not in console.http.get(f"/console/keys?tag={TAG}").text
    assert key["key_id"] not in console.http.get(
        f"/console/keys?application={key['app_id']}").text


@pytest.mark.parametrize("account", [OWNER, MANAGER])
def test_owner_and_manager_pages_show_everything(console: Console, key: dict[str, str],
                                                 account: str) -> None:
    assert console.login(account, PASSWORD).status_code == 303
    page = console.http.get(f"/console/keys/{key['key_id']}").text
    for shown in (BOB, PATTERN, MANAGER, TAG, NETWORK, key["app_id"], "Added by"):
        assert shown in page, shown
    assert 'id="recipient-view"' not in page
    table = console.http.get(f"/console/keys?tag={TAG}").text
    assert key["key_id"] in table and key["app_id"] in table


def test_admin_sees_everything(admin: Console, key: dict[str, str]) -> None:
    page = admin.http.get(f"/console/keys/{key['key_id']}").text
    for shown in (BOB, PATTERN, MANAGER, TAG, NETWORK):
        assert shown in page, shown
