"""End to end over HTTPS: the key management operations, list-keys, list-accesses, the CLI.

Every refusal of the issue's "bad input" list answers ``invalid_request`` naming the member,
leaves the key unchanged (same revision) and is audited DENIED. An unknown key and a key the
caller may not manage give the same ``not_found``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from audit_support import last_record
from sceau.cli.main import cli, main
from sceau.client import Client
from sceau.core.b64 import b64u_encode
from sceau.errors import AccessDenied, InvalidRequest, NotFound
from sceau.vocab import Reason
from support import Server, TestApp

OWNER = "kim@example.com"
BOB = "bob@example.com"
CAROL = "carol@example.com"
STRANGER = "eve@example.org"


def uid() -> str:
    return os.urandom(4).hex()


def rfc(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@pytest.fixture(scope="module")
def owner(server: Server, app: TestApp) -> Iterator[Client]:
    client = server.client(app, OWNER)
    yield client
    client.close()


# --- changes ---------------------------------------------------------------------------------


def test_update_key_changes_fields_and_audits_them(server: Server, owner: Client) -> None:
    key_id, _ = owner.encrypt(b"x", name="draft")
    before = owner.describe_key(key_id)
    t = int(time.time())
    meta = owner.update_key(key_id, name="final", tag="legal", not_before=rfc(t - 60),
                            not_after=t + 3600, rules={"max_decryptions": 3,
                                                       "allowed_networks": ["127.0.0.0/8"]})
    assert meta["name"] == "final" and meta["tag"] == "legal"
    assert meta["not_before"] == rfc(t - 60) and meta["not_after"] == rfc(t + 3600)
    assert meta["rules"] == {"max_decryptions": 3, "allowed_networks": ["127.0.0.0/8"]}
    assert meta["revision"] == before["revision"] + 1
    rec = last_record(server, action="UPDATE_KEY", key=key_id)
    assert rec["outcome"] == "GRANTED" and rec["details"]["revision"] == meta["revision"]
    assert rec["details"]["changed"]["name"] == "final"
    # rules are replaced whole; an explicit null removes a bound
    meta = owner.update_key(key_id, rules={}, not_after=None)
    assert meta["rules"] == {} and meta["not_after"] is None
    assert meta["not_before"] == rfc(t - 60)


def test_disable_enable(server: Server, owner: Client) -> None:
    key_id, env = owner.encrypt(b"switch")
    assert owner.disable_key(key_id)["status"] == "disabled"
    with pytest.raises(AccessDenied) as exc:
        owner.decrypt(env)
    assert exc.value.reason == Reason.KEY_DISABLED
    # management still works on a disabled key
    assert owner.update_key(key_id, tag="t")["tag"] == "t"
    assert owner.enable_key(key_id)["status"] == "active"
    assert owner.decrypt(env) == b"switch"
    assert last_record(server, action="ENABLE_KEY", key=key_id)["outcome"] == "GRANTED"


def test_authorization_lifecycle(server: Server, app: TestApp, owner: Client) -> None:
    key_id, env = owner.encrypt(b"shared")
    meta = owner.add_authorization(key_id, BOB, ["decrypt"])
    assert [a["principal"] for a in meta["authorizations"]] == [BOB]
    assert meta["authorizations"][0]["added_by"] == OWNER
    with server.client(app, BOB) as bob:
        assert bob.decrypt(env) == b"shared"
        with pytest.raises(NotFound):  # decrypt without manage: not a manager
            bob.disable_key(key_id)
        owner.disable_authorization(key_id, BOB)
        with pytest.raises(AccessDenied) as exc:
            bob.decrypt(env)
        assert exc.value.reason == Reason.AUTHORIZATION_DISABLED
        owner.enable_authorization(key_id, BOB)
        assert bob.decrypt(env) == b"shared"
        owner.remove_authorization(key_id, BOB)
        with pytest.raises(AccessDenied) as exc:
            bob.decrypt(env)
        assert exc.value.reason == Reason.NOT_AUTHORIZED
    rec = last_record(server, action="ADD_AUTHORIZATION", key=key_id)
    assert rec["details"]["principal"] == BOB and rec["details"]["rights"] == ["decrypt"]


def test_manage_right_allows_management_not_decrypt(server: Server, app: TestApp,
                                                    owner: Client) -> None:
    key_id, env = owner.encrypt(b"managed")
    owner.add_authorization(key_id, CAROL, ["manage"])
    with server.client(app, CAROL) as carol:
        assert carol.describe_key(key_id)["owner"] == OWNER
        carol.add_authorization(key_id, BOB, ["decrypt"])
        assert carol.disable_key(key_id)["status"] == "disabled"
        assert carol.list_accesses(key_id)["accesses"]
        with pytest.raises(AccessDenied) as exc:
            carol.decrypt(env)
        assert exc.value.reason == Reason.KEY_DISABLED  # listed: sees the key's state
        carol.enable_key(key_id)
        with pytest.raises(AccessDenied) as exc:
            carol.decrypt(env)
        assert exc.value.reason == Reason.NOT_AUTHORIZED  # manage is not decrypt
    assert last_record(server, action="ADD_AUTHORIZATION", key=key_id)["user"] == CAROL


# --- bad input -----------------------------------------------------------------------------------

NOW = int(time.time())
BAD_INPUT: list[tuple[str, str, dict[str, Any], str]] = [
    ("existing principal", "add-authorization", {"principal": BOB, "rights": ["decrypt"]},
     "principal"),
    ("owner as principal", "add-authorization", {"principal": OWNER, "rights": ["decrypt"]},
     "principal"),
    ("remove the owner", "remove-authorization", {"principal": OWNER}, "principal"),
    ("remove a stranger", "remove-authorization", {"principal": STRANGER}, "principal"),
    ("disable the owner", "disable-authorization", {"principal": OWNER}, "principal"),
    ("bad pattern", "add-authorization", {"principal": "*@com", "rights": ["decrypt"]},
     "principal"),
    ("right outside the set", "add-authorization", {"principal": CAROL, "rights": ["read"]},
     "rights"),
    ("no rights", "add-authorization", {"principal": CAROL, "rights": []}, "rights"),
    ("grant window inverted", "add-authorization",
     {"principal": CAROL, "rights": ["decrypt"], "not_before": NOW + 100, "not_after": NOW + 100},
     "not_after"),
    ("key window inverted", "update-key", {"not_before": NOW + 100, "not_after": NOW + 50},
     "not_after"),
    ("key window inverted against stored bound", "update-key", {"not_after": NOW - 7200},
     "not_after"),
    ("CIDR that does not parse", "update-key", {"rules": {"allowed_networks": ["10.0.0.300/8"]}},
     "allowed_networks"),
    ("CIDR with host bits", "update-key", {"rules": {"allowed_networks": ["10.0.0.1/8"]}},
     "allowed_networks"),
    ("negative max_decryptions", "update-key", {"rules": {"max_decryptions": -1}},
     "max_decryptions"),
    ("unknown rule", "update-key", {"rules": {"max_uses": 1}}, "max_uses"),
    ("expires_at in the past", "update-key", {"expires_at": NOW - 10}, "expires_at"),
    ("expires_at removed", "update-key", {"expires_at": None}, "expires_at"),
    ("nothing to update", "update-key", {}, "params"),
    ("unknown member", "update-key", {"colour": "red"}, "colour"),
    ("bad time", "update-key", {"not_after": "tomorrow"}, "not_after"),
    ("pending_days out of range", "destroy-key", {"pending_days": 31}, "pending_days"),
    ("cancel a key not pending", "cancel-destruction", {}, "key_id"),
    ("bad cursor", "list-accesses", {"cursor": "!!"}, "cursor"),
    ("forged cursor", "list-accesses", {"cursor": b64u_encode(b"-1")}, "cursor"),
]


@pytest.fixture(scope="module")
def victim(owner: Client) -> str:
    """A key with one authorization and a data window, target of every bad input."""
    key_id, _ = owner.encrypt(b"victim")
    owner.add_authorization(key_id, BOB, ["decrypt"])
    owner.update_key(key_id, not_before=NOW - 3600)
    return key_id


@pytest.mark.parametrize(("case", "op", "params", "member"), BAD_INPUT,
                         ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_refused_unchanged_and_audited(server: Server, owner: Client, victim: str,
                                                   case: str, op: str, params: dict[str, Any],
                                                   member: str) -> None:
    before = owner.describe_key(victim)
    with pytest.raises(InvalidRequest) as exc:
        owner.call(op, {"key_id": victim, **params}, keep_null=True)
    assert member in exc.value.detail, exc.value.detail
    after = owner.describe_key(victim)
    assert after == before  # nothing changed, not even the revision
    rec = last_record(server, action=op.upper().replace("-", "_"), user=OWNER)
    assert rec["outcome"] == "DENIED" and rec["reason"] == "invalid_request"
    assert rec["req"] is not None


# --- who may see a key --------------------------------------------------------------------------

MANAGEMENT: list[tuple[str, dict[str, Any]]] = [
    ("describe-key", {}),
    ("update-key", {"name": "mine now"}),
    ("enable-key", {}),
    ("disable-key", {}),
    ("destroy-key", {}),
    ("cancel-destruction", {}),
    ("add-authorization", {"principal": STRANGER, "rights": ["decrypt", "manage"]}),
    ("remove-authorization", {"principal": BOB}),
    ("enable-authorization", {"principal": BOB}),
    ("disable-authorization", {"principal": BOB}),
    ("list-accesses", {}),
]


@pytest.mark.parametrize(("op", "params"), MANAGEMENT, ids=[m[0] for m in MANAGEMENT])
def test_stranger_and_recipient_get_the_unknown_key_answer(
    server: Server, app: TestApp, owner: Client, victim: str, op: str, params: dict[str, Any]
) -> None:
    before = owner.describe_key(victim)
    answers = []
    for user, key_id in ((STRANGER, victim), (BOB, victim),
                         (STRANGER, b64u_encode(os.urandom(16)))):
        with server.client(app, user) as c, pytest.raises(NotFound) as exc:
            c.call(op, {"key_id": key_id, **params})
        answers.append((exc.value.code, exc.value.detail))
    assert len(set(answers)) == 1 and answers[0][0] == "not_found"
    assert owner.describe_key(victim) == before
    rec = last_record(server, key=victim, user=STRANGER)
    assert rec["outcome"] == "DENIED" and rec["reason"] == "not_found"


def test_unknown_key_times_like_a_hidden_one(server: Server, app: TestApp, victim: str) -> None:
    """Same timing class: no order-of-magnitude gap between unknown and hidden keys."""
    unknown = b64u_encode(os.urandom(16))

    def median(key_id: str) -> float:
        samples = []
        with server.client(app, STRANGER) as c:
            for _ in range(7):
                started = time.perf_counter()
                with pytest.raises(NotFound):
                    c.describe_key(key_id)
                samples.append(time.perf_counter() - started)
        return sorted(samples)[3]

    hidden_t, unknown_t = median(victim), median(unknown)
    assert 0.2 < hidden_t / unknown_t < 5


# --- list-keys -----------------------------------------------------------------------------------


def test_list_keys_filters(server: Server, app: TestApp) -> None:
    run = uid()
    me = f"lister-{run}@list-{run}.test"
    other = f"owner-{run}@elsewhere.test"
    second = server.register_app(f"second-{run}")
    t0 = int(time.time())
    with server.client(app, me) as c, server.client(app, other) as o:
        expiring, _ = c.encrypt(b"e", name="short lived", expires_at=t0 + 2)
        report, _ = c.encrypt(b"r", name=f"Quarterly REPORT {run}", tag=f"fin-{run}")
        minutes, _ = c.encrypt(b"m", name="minutes", tag=f"hr-{run}")
        off, _ = c.encrypt(b"d", name="switched off")
        c.disable_key(off)
        shared, _ = o.encrypt(b"s", name="shared with me", recipients=[me])
        domain, _ = o.encrypt(b"p", name=f"for the domain {run}",
                              recipients=[f"*@LIST-{run}.test"])
        hidden, _ = o.encrypt(b"h", name=f"not for me {run}")
        with server.client(second, me) as c2:
            via_second, _ = c2.encrypt(b"2", name="second app")
        mine = {expiring, report, minutes, off, via_second}

        def ids(**filters: Any) -> set[str]:
            return {k["key_id"] for k in c.iter_keys(**filters)}

        time.sleep(max(0.0, t0 + 2.2 - time.time()))
        assert ids() == mine | {shared, domain}
        assert hidden not in ids()
        assert ids(role="owner") == mine
        assert ids(role="recipient") == {shared, domain}
        assert ids(status="expired") == {expiring}
        assert ids(status="disabled") == {off}
        assert ids(status="active") == mine - {expiring, off} | {shared, domain}
        assert ids(name="report") == {report}
        assert ids(name=run.upper()) == {report, domain}
        assert ids(tag=f"fin-{run}") == {report}
        assert ids(application=second.app_id) == {via_second}
        assert ids(created_from=t0 + 3600) == set()
        assert ids(created_to=rfc(t0 - 3600)) == set()
        assert ids(created_from=rfc(t0), created_to=int(time.time())) == ids()
        listed = {k["key_id"]: k for k in c.list_keys()["keys"]}
        assert listed[expiring]["status"] == "expired"
        # another user on the same domain sees the pattern grant, a subdomain user does not
        with server.client(app, f"x@list-{run}.test") as x:
            assert {k["key_id"] for k in x.iter_keys()} == {domain}
        with server.client(app, f"x@sub.list-{run}.test") as x:
            assert list(x.iter_keys()) == []
    rec = last_record(server, action="LIST_KEYS", user=me)
    assert rec["outcome"] == "GRANTED" and rec["req"] is not None


def test_list_keys_pagination(server: Server, app: TestApp) -> None:
    me = f"pager-{uid()}@example.com"
    with server.client(app, me) as c:
        made = {c.encrypt(b"p")[0] for _ in range(7)}
        pages = []
        cursor = None
        while True:
            page = c.list_keys(limit=3, cursor=cursor)
            pages.append([k["key_id"] for k in page["keys"]])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        with pytest.raises(InvalidRequest, match="cursor"):
            c.list_keys(cursor="AAAA")
    flat = [k for p in pages for k in p]
    assert [len(p) for p in pages] == [3, 3, 1]
    assert len(flat) == len(set(flat)) == 7 and set(flat) == made


def test_list_accesses_newest_first_with_cursor(server: Server, app: TestApp,
                                                owner: Client) -> None:
    key_id, env = owner.encrypt(b"watched")
    for _ in range(3):
        owner.decrypt(env)
    with server.client(app, STRANGER) as s, pytest.raises(AccessDenied):
        s.decrypt(env)
    first = owner.list_accesses(key_id, limit=2)
    second = owner.list_accesses(key_id, limit=100, cursor=first["next_cursor"])
    seqs = [r["seq"] for r in first["accesses"] + second["accesses"]]
    assert seqs == sorted(seqs, reverse=True) and len(seqs) == len(set(seqs))
    actions = [r["action"] for r in first["accesses"] + second["accesses"]]
    # newest first: this call's predecessor (the first page) ... down to ENCRYPT
    assert actions[-1] == "ENCRYPT" and actions.count("DECRYPT") == 4
    assert all(r["key"] == key_id for r in first["accesses"] + second["accesses"])
    assert second["next_cursor"] is None
    assert any(r["user"] == STRANGER and r["outcome"] == "DENIED" for r in second["accesses"]
               + first["accesses"])


# --- CLI -----------------------------------------------------------------------------------------


def test_cli_key_commands(server: Server, app: TestApp, tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI in-process (CliRunner, then the `sceau` entry point for error output)."""
    profile = server.profile(app, tmp_path / "profile.json", user=OWNER)
    env = {"SCEAU_PROFILE": str(profile)}
    runner = CliRunner()
    with server.client(app, OWNER) as c:
        # one id in 64 begins with '-': test_cli_takes_a_key_id_beginning_with_a_dash
        key_id, envelope = c.encrypt(b"cli", name="cli doc")

    def invoke(*args: str, input: str | None = None) -> Any:
        return runner.invoke(cli, ["key", *args], env=env, input=input)

    def as_json(*args: str) -> Any:
        result = invoke(*args, "--json")
        assert result.exit_code == 0, (result.output, result.exception)
        return json.loads(result.stdout)

    meta = as_json("grant", key_id, BOB, "--rights", "decrypt,manage", "--not-after",
                   rfc(int(time.time()) + 3600))
    assert meta["authorizations"][0]["rights"] == ["decrypt", "manage"]
    meta = as_json("update", key_id, "--tag", "cli-tag", "--max-decryptions", "9",
                   "--networks", "127.0.0.0/8", "-u", BOB)  # Bob may manage now
    assert meta["tag"] == "cli-tag"
    assert meta["rules"] == {"max_decryptions": 9, "allowed_networks": ["127.0.0.0/8"]}
    meta = as_json("update", key_id, "--networks", "any")  # merged: the budget stays
    assert meta["rules"] == {"max_decryptions": 9}
    assert as_json("grant-disable", key_id, BOB)["authorizations"][0]["status"] == "disabled"
    assert as_json("grant-enable", key_id, BOB)["authorizations"][0]["status"] == "active"
    assert as_json("revoke", key_id, BOB)["authorizations"] == []
    assert as_json("disable", key_id)["status"] == "disabled"
    assert as_json("enable", key_id)["status"] == "active"
    listed = as_json("list", "--name", "CLI DOC", "--all")
    assert [k["key_id"] for k in listed["keys"]] == [key_id]
    assert as_json("accesses", key_id, "--limit", "1")["next_cursor"] is not None
    table = invoke("show", key_id)
    assert table.exit_code == 0 and "cli-tag" in table.stdout
    assert invoke("list").exit_code == 0
    assert invoke("show", "not-a-key").exit_code == 2  # refused before any network call
    # destroy asks first; "no" leaves the key alone
    refused = invoke("destroy", key_id, input="n\n")
    assert refused.exit_code != 0
    assert as_json("show", key_id)["status"] == "active"
    done = as_json("destroy", key_id, "--yes")
    assert done["key_id"] == key_id and done["receipt"].count(".") == 2
    with server.client(app, OWNER) as c, pytest.raises(AccessDenied):
        c.decrypt(envelope)
    # the real entry point prints one line with the stable code and exits 1
    monkeypatch.setattr(sys, "argv", ["sceau", "key", "disable", key_id])
    monkeypatch.setenv("SCEAU_PROFILE", str(profile))
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("sceau: error: access_denied") and "key_destroyed" in err


def test_cli_takes_a_key_id_beginning_with_a_dash(server: Server, app: TestApp,
                                                  tmp_path: Path) -> None:
    """An id such as `-Wx...` is an argument, pasted as is or after `--` (POSIX)."""
    profile = server.profile(app, tmp_path / "profile.json", user=OWNER)
    with server.client(app, OWNER) as c:
        key_id, _ = c.encrypt(b"dash", name="dash doc")
        while not key_id.startswith("-"):
            key_id, _ = c.encrypt(b"dash", name="dash doc")
    shown = CliRunner().invoke(cli, ["key", "show", "--json", "--", key_id],
                               env={"SCEAU_PROFILE": str(profile)})
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["key_id"] == key_id
    env = {"SCEAU_PROFILE": str(profile)}
    for args in (["show", key_id, "--json"], ["show", "--json", key_id],
                 ["show", "-p", str(profile), key_id, "--json"]):
        pasted = CliRunner().invoke(cli, ["key", *args], env=env)
        assert pasted.exit_code == 0, pasted.output
        assert json.loads(pasted.stdout)["key_id"] == key_id
    granted = CliRunner().invoke(cli, ["key", "grant", key_id, "bob@example.com", "--json"],
                                 env=env)
    assert granted.exit_code == 0, granted.output
    assert [a["principal"] for a in json.loads(granted.stdout)["authorizations"]] == [
        "bob@example.com"]
    # a dashed word that is an option's value stays that value
    named = CliRunner().invoke(cli, ["key", "update", key_id, "--name", key_id, "--json"],
                               env=env)
    assert named.exit_code == 0, named.output
    assert json.loads(named.stdout)["name"] == key_id
