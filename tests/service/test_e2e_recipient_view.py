"""What `list-keys` shows a recipient: id, name, owner, status and its own authorization.

A key is shared with an exact recipient, a domain pattern, a carved-out member of that
domain and a `manage` holder, and carries a tag, rules and networks. Each caller lists it:
owner and manager get the whole metadata (as `describe-key`), everybody else exactly the
recipient view, with no other principal, rule, network, tag or application anywhere in the
result, and filters on the hidden members do not reveal them (docs/policy.md).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from sceau.cli.main import cli
from sceau.client import Client
from support import Server, TestApp

RUN = "7c1e5a09"  # fixed: test ids must be the same in every pytest-xdist worker
OWNER = f"owner-{RUN}@example.com"
BOB = f"bob-{RUN}@example.com"
DOMAIN = f"team-{RUN}.example"
PATTERN = f"*@{DOMAIN}"
MEMBER = f"member@{DOMAIN}"
CARVED = f"carved@{DOMAIN}"
MANAGER = f"manager-{RUN}@example.com"
STRANGER = f"eve-{RUN}@example.org"
TAG = f"hr-case-{RUN}"
NETWORK = "10.77.66.0/24"
RECIPIENT_MEMBERS = {"key_id", "name", "owner", "status", "authorizations"}
ENTRY_MEMBERS = {"principal", "rights", "status", "not_before", "not_after"}


@pytest.fixture(scope="module")
def shared(server: Server, app: TestApp) -> str:
    """The shared key, made and configured by its owner."""
    not_after = int(time.time()) + 86_400
    with server.client(app, OWNER) as owner:
        key_id, _ = owner.encrypt(b"shared", name=f"Budget {RUN}", tag=TAG,
                                  recipients=[BOB, PATTERN],
                                  rules={"allowed_networks": [NETWORK], "max_decryptions": 7})
        owner.add_authorization(key_id, CARVED, ["decrypt"], not_after=not_after)
        owner.disable_authorization(key_id, CARVED)
        owner.add_authorization(key_id, MANAGER, ["decrypt", "manage"])
    return key_id


def listed(server: Server, app: TestApp, user: str, **filters: Any) -> dict[str, Any]:
    """``user``'s whole list-keys result (every page), by key id."""
    with server.client(app, user) as c:
        return {k["key_id"]: k for k in c.iter_keys(**filters)}


def others_of(user: str) -> list[str]:
    """Strings a view for ``user`` must not contain: every other principal and the policy."""
    principals = {OWNER, BOB, PATTERN, CARVED, MANAGER} - {user, OWNER}
    return [*principals, TAG, NETWORK, "max_decryptions", "allowed_networks", "added_by"]


@pytest.mark.parametrize(
    ("user", "own_principal", "own_rights", "own_status"),
    [
        (BOB, BOB, ["decrypt"], "active"),
        # Matched through the pattern: that entry is its own authorization.
        (MEMBER, PATTERN, ["decrypt"], "active"),
        # An exact entry governs alone (policy precedence): the disabled one, not the pattern.
        (CARVED, CARVED, ["decrypt"], "disabled"),
    ],
)
def test_recipient_sees_only_what_it_needs(server: Server, app: TestApp, shared: str,
                                           user: str, own_principal: str,
                                           own_rights: list[str], own_status: str) -> None:
    view = listed(server, app, user)[shared]
    assert set(view) == RECIPIENT_MEMBERS
    assert view["key_id"] == shared and view["name"] == f"Budget {RUN}"
    assert view["owner"] == OWNER and view["status"] == "active"
    [entry] = view["authorizations"]
    assert set(entry) == ENTRY_MEMBERS
    assert (entry["principal"], entry["rights"], entry["status"]) == (
        own_principal, own_rights, own_status)
    assert (entry["not_after"] is not None) == (user == CARVED)
    text = json.dumps(view)
    for hidden in others_of(own_principal) + [app.app_id]:
        assert hidden not in text, hidden


def test_the_whole_result_names_no_other_principal(server: Server, app: TestApp,
                                                  shared: str) -> None:
    with server.client(app, BOB) as c:
        result = c.list_keys()
    assert shared in {k["key_id"] for k in result["keys"]}
    text = json.dumps(result)
    for hidden in others_of(BOB) + [app.app_id]:
        assert hidden not in text, hidden


@pytest.mark.parametrize("user", [OWNER, MANAGER])
def test_owner_and_manager_keep_the_full_view(server: Server, app: TestApp, shared: str,
                                              user: str) -> None:
    view = listed(server, app, user)[shared]
    with server.client(app, user) as c:
        assert view == c.describe_key(shared)
    assert view["tag"] == TAG and view["application"] == app.app_id
    assert view["rules"] == {"allowed_networks": [NETWORK], "max_decryptions": 7}
    assert {a["principal"] for a in view["authorizations"]} == {BOB, PATTERN, CARVED, MANAGER}


def test_a_disabled_manage_entry_gives_the_recipient_view(server: Server, app: TestApp) -> None:
    with server.client(app, OWNER) as owner:
        key_id, _ = owner.encrypt(b"m", tag=TAG, recipients=[BOB])
        owner.add_authorization(key_id, MANAGER, ["decrypt", "manage"])
        owner.disable_authorization(key_id, MANAGER)
    view = listed(server, app, MANAGER)[key_id]
    assert set(view) == RECIPIENT_MEMBERS
    assert [(a["principal"], a["rights"], a["status"]) for a in view["authorizations"]] == [
        (MANAGER, ["decrypt", "manage"], "disabled")]
    assert BOB not in json.dumps(view)


def test_a_stranger_lists_nothing_of_it(server: Server, app: TestApp, shared: str) -> None:
    assert shared not in listed(server, app, STRANGER)


def test_filters_on_hidden_members_do_not_reveal_them(server: Server, app: TestApp,
                                                      shared: str) -> None:
    assert shared in listed(server, app, BOB)  # listed without the filter
    assert shared not in listed(server, app, BOB, tag=TAG)
    assert shared not in listed(server, app, BOB, application=app.app_id)
    assert shared in listed(server, app, OWNER, tag=TAG)
    assert shared in listed(server, app, MANAGER, application=app.app_id)
    # Visible members still filter the recipient's view.
    assert shared in listed(server, app, BOB, name=f"budget {RUN}", status="active")


def test_hidden_filter_pages_skip_recipient_keys(server: Server, app: TestApp) -> None:
    """Pages under a hidden-member filter fill from the caller's own keys only."""
    me = f"pager-{RUN}@example.com"
    tag = f"mixed-{RUN}"
    with server.client(app, OWNER) as owner:
        theirs = {owner.encrypt(b"t", tag=tag, recipients=[me])[0] for _ in range(4)}
    with server.client(app, me) as c:
        mine = {c.encrypt(b"m", tag=tag)[0] for _ in range(3)}
        pages = _pages(c, tag=tag, limit=2)
    flat = [k for page in pages for k in page]
    assert len(flat) == len(set(flat)) and set(flat) == mine
    assert all(len(page) <= 2 for page in pages) and not set(flat) & theirs
    assert set(listed(server, app, me)) >= mine | theirs


def _pages(c: Client, **filters: Any) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor = None
    while True:
        page = c.list_keys(cursor=cursor, **filters)
        pages.append([k["key_id"] for k in page["keys"]])
        cursor = page["next_cursor"]
        if cursor is None:
            return pages


def test_cli_lists_a_recipient_view(server: Server, app: TestApp, shared: str,
                                    tmp_path: Path) -> None:
    profile = server.profile(app, tmp_path / "bob.json", user=BOB)
    result = CliRunner().invoke(cli, ["key", "list"],
                                env={"SCEAU_PROFILE": str(profile), "COLUMNS": "400"})
    assert result.exit_code == 0, (result.output, result.exception)
    line = next(ln for ln in result.stdout.splitlines() if shared in ln)
    assert "yours: decrypt" in line and TAG not in result.stdout
