"""CSE and DKE keys in the console, on every backend (SPEC §11, issue 15 "Console").

An administrator signs in to the real console of a real `sceau serve` and works its forms
as a browser without JavaScript would (tests/console_support.py): the key table shows
the workspace keys with their application and resource name, its filters find them, and
disabling one there refuses the very next unwrap or decryption. Destroying a DKE key's
record there destroys its RSA private keys in the keystore as well.

Sign-in: password only. On this branch the console asks a second factor of accounts that
enrolled one; the admin made here has not.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from workspace_support import Kacls, Vendors

from audit_support import records
from console_support import Console, put_account
from sceau.core.b64 import b64u_encode
from sceau.core.workspace import parse_wrapped_key
from sceau.errors import IntegrityFailure
from sceau.vocab import Role
from support import Server, run_cli

ALICE = "alice@example.com"
BOB = "bob@example.com"
ADMIN = "ws-admin"
ADMIN_PASSWORD = "quiet-harbour-lantern-42"


@pytest.fixture(scope="module")
def admin(ws_server: Server) -> Iterator[Console]:
    """A console session of an administrator (the account written as the host operator
    would, sealed with the server's keystore, with its second factor)."""
    put_account(ws_server, ADMIN, ADMIN_PASSWORD, Role.ADMIN)
    console = Console(ws_server)
    signed_in = console.login(ADMIN, ADMIN_PASSWORD)
    assert signed_in.status_code == 303, signed_in.text
    yield console
    console.close()


def _rows(page: httpx.Response) -> list[dict[str, str]]:
    """The key table's rows: key id, status, owner, name, application."""
    assert page.status_code == 200, page.text[:500]
    body = page.text.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    rows = []
    for tr in re.findall(r"<tr>(.*?)</tr>", body, re.S):
        cells = [html.unescape(re.sub(r"<[^>]+>", "", c)).strip()
                 for c in re.findall(r"<td[^>]*>(.*?)</td>", tr, re.S)]
        if len(cells) >= 6:
            rows.append({"key_id": cells[1], "status": cells[2], "owner": cells[3],
                         "name": cells[4], "application": cells[5]})
    return rows


def _find(admin: Console, **filters: str) -> list[dict[str, str]]:
    return _rows(admin.http.get("/console/keys", params=filters))


# --- DKE, as Office would call it -------------------------------------------------------------


def _dke_create(server: Server, name: str) -> dict[str, Any]:
    out = run_cli("dke", "key", "create", name, "--allow", "*@contoso.example",
                  "--data-dir", str(server.data_dir), env=server.env)
    made: dict[str, Any] = json.loads(out.stdout)
    return made


def _dke_encrypt(server: Server, name: str, data: bytes) -> tuple[str, str]:
    """(kid path, RSA-OAEP-256 ciphertext) with the key's published public key."""
    key = httpx.get(f"{server.url}/dke/{name}", verify=server.cert).json()["key"]
    public = rsa.RSAPublicNumbers(key["e"], int.from_bytes(base64.b64decode(key["n"]),
                                                           "big")).public_key()
    value = public.encrypt(data, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()),
                                              algorithm=hashes.SHA256(), label=None))
    return key["kid"].split("/dke/", 1)[1], base64.b64encode(value).decode()


def _dke_decrypt(server: Server, vendors: Vendors, path: str, value: str) -> httpx.Response:
    token = vendors.entra.token({"aud": vendors.dke_audience, "upn": "ann@contoso.example"})
    return httpx.post(f"{server.url}/dke/{path}/decrypt",
                      json={"alg": "RSA-OAEP-256", "value": value},
                      headers={"authorization": f"Bearer {token}"}, verify=server.cert)


def _key_page(key_id: str) -> str:
    return f"/console/keys/{key_id}"


# --- the tests -----------------------------------------------------------------------------------


def test_workspace_keys_in_the_key_table_and_disabled_there(
        admin: Console, kacls: Kacls, vendors: Vendors, ws_server: Server) -> None:
    tag = os.urandom(4).hex()
    resource = f"//googleapis.com/drive/files/console-{tag}"
    dek = os.urandom(32)
    wrapped = kacls.wrap(ALICE, resource, dek).json()["wrapped_key"]
    cse_key = b64u_encode(parse_wrapped_key(base64.b64decode(wrapped)).header.key_id)
    dke_name = f"console-label-{tag}"
    dke_key = _dke_create(ws_server, dke_name)["key_id"]
    path, value = _dke_encrypt(ws_server, dke_name, b"document key")

    # The table shows each with its application and resource name; the filters find them.
    assert _find(admin, application="google-workspace", name=resource) == [
        {"key_id": cse_key, "status": "active", "owner": ALICE, "name": resource,
         "application": "google-workspace"}]
    assert _find(admin, application="microsoft-dke", name=dke_name) == [
        {"key_id": dke_key, "status": "active", "owner": "dke key service",
         "name": dke_name, "application": "microsoft-dke"}]
    assert _find(admin, person=ALICE, name=f"console-{tag}") == _find(
        admin, application="google-workspace", name=resource)
    # A filter that does not match finds nothing (the control of the two above).
    assert _find(admin, application="google-workspace", name=dke_name) == []
    assert _find(admin, application="microsoft-dke", name=resource) == []

    # Bob reads the document and Office opens the DKE item...
    assert kacls.unwrap(BOB, resource, wrapped).status_code == 200
    assert _dke_decrypt(ws_server, vendors, path, value).status_code == 200
    # ...an administrator disables both keys on their console pages...
    for key_id in (cse_key, dke_key):
        done = admin.post(f"{_key_page(key_id)}/status", {"action": "disable"},
                          page=_key_page(key_id))
        assert done.status_code == 303, done.text[:500]
    # ...and the very next call is refused, with the key's reason.
    refused = kacls.unwrap(BOB, resource, wrapped)
    assert refused.status_code == 403 and "key_disabled" in refused.json()["details"]
    denied = _dke_decrypt(ws_server, vendors, path, value)
    assert denied.status_code == 403 and denied.json()["reason"] == "key_disabled"
    assert [r["status"] for r in _find(admin, name=f"-{tag}")] == ["disabled", "disabled"]
    trail = records(ws_server)
    assert {(r["action"], r["key"], r["user"]) for r in trail if r["action"] == "DISABLE_KEY"
            } >= {("DISABLE_KEY", cse_key, ADMIN), ("DISABLE_KEY", dke_key, ADMIN)}

    # Enabled again from the table (bulk form): both serve again.
    done = admin.post("/console/keys/bulk", {"action": "enable",
                                             "key_id": [cse_key, dke_key]},
                      page="/console/keys")
    assert done.status_code == 303 and "bulk:2:0" in done.headers["location"]
    assert base64.b64decode(kacls.unwrap(BOB, resource, wrapped).json()["key"]) == dek
    assert base64.b64decode(_dke_decrypt(ws_server, vendors, path, value)
                            .json()["value"]) == b"document key"


def test_destroying_a_dke_key_destroys_its_private_keys(
        admin: Console, vendors: Vendors, ws_server: Server) -> None:
    name = f"console-shred-{os.urandom(4).hex()}"
    made = _dke_create(ws_server, name)
    old_path, old_value = _dke_encrypt(ws_server, name, b"under the first version")
    rotated = json.loads(run_cli("dke", "key", "rotate", name, "--data-dir",
                                 str(ws_server.data_dir), env=ws_server.env).stdout)
    path, value = _dke_encrypt(ws_server, name, b"under the second version")
    # Both versions decrypt, over HTTPS and in the keystore itself.
    sent = {made["keyid"]: (old_path, old_value), rotated["keyid"]: (path, value)}
    for keyid, (kid_path, ciphertext) in sent.items():
        assert kid_path.endswith(keyid)
        assert _dke_decrypt(ws_server, vendors, kid_path, ciphertext).status_code == 200
    with ws_server.admin_session() as session:
        for keyid, (_, ciphertext) in sent.items():
            assert session.keystore.dke_decrypt(f"{name}.{keyid}",
                                                base64.b64decode(ciphertext))

    key_id = made["key_id"]
    wrong = admin.post(f"{_key_page(key_id)}/destroy", {"confirm": key_id,
                                                        "password": "not-the-password"},
                       page=_key_page(key_id))
    assert wrong.status_code != 200 or "receipt" not in wrong.text.lower()
    assert _dke_decrypt(ws_server, vendors, path, value).status_code == 200  # the control
    receipt = admin.post(f"{_key_page(key_id)}/destroy", {"confirm": key_id,
                                                          "password": ADMIN_PASSWORD},
                         page=_key_page(key_id))
    assert receipt.status_code == 200, receipt.text[:500]

    for kid_path, ciphertext in sent.values():
        refused = _dke_decrypt(ws_server, vendors, kid_path, ciphertext)
        assert refused.status_code == 403 and refused.json()["reason"] == "key_destroyed"
    entry = _dke_entry(ws_server, name)
    assert {v["keyid"]: v["status"] for v in entry["versions"]} == {
        k: "retired" for k in sent}
    rec = [r for r in records(ws_server)
           if r["action"] == "DESTROY_KEY" and r["key"] == key_id][-1]
    assert rec["outcome"] == "GRANTED"
    assert sorted(rec["details"]["dke_versions_destroyed"]) == sorted(sent)
    # The private keys are gone from the keystore itself, not only refused by policy.
    with ws_server.admin_session() as session:
        for keyid, (_, ciphertext) in sent.items():
            with pytest.raises(IntegrityFailure, match="unknown DKE key"):
                session.keystore.dke_decrypt(f"{name}.{keyid}", base64.b64decode(ciphertext))


# --- the Workspace page: DKE keys and cse_admin ------------------------------------------------

ADMIN2 = "ws-admin-2"
ADMIN2_PASSWORD = "second-pair-of-eyes-7"


def _workspace(admin: Console) -> str:
    page = admin.http.get("/console/workspace")
    assert page.status_code == 200, page.text[:500]
    return page.text


def _dke_list(server: Server) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = json.loads(run_cli(
        "dke", "key", "list", "--json", "--data-dir", str(server.data_dir),
        env=server.env).stdout)
    return listed


def _dke_entry(server: Server, name: str) -> dict[str, Any]:
    return next(k for k in _dke_list(server) if k["name"] == name)


def test_dke_key_create_rotate_retire_disable_from_the_console(
        admin: Console, vendors: Vendors, ws_server: Server) -> None:
    name = f"console-made-{os.urandom(4).hex()}"
    page = "/console/workspace"
    bad = admin.post(f"{page}/dke", {"name": "no spaces allowed", "allow": "*@contoso.example"},
                     page=page)
    assert bad.status_code == 400 and "name:" in html.unescape(bad.text)
    none = admin.post(f"{page}/dke", {"name": name, "allow": ""}, page=page)
    assert none.status_code == 400
    assert all(k["name"] != name for k in _dke_list(ws_server))
    made = admin.post(f"{page}/dke", {"name": name, "allow": "*@contoso.example"}, page=page)
    assert made.status_code == 303 and made.headers["location"].endswith("done=dke_created")
    entry = _dke_entry(ws_server, name)
    assert entry["status"] == "active" and entry["allow"] == ["*@contoso.example"]
    assert name in _workspace(admin) and entry["key_id"] in _workspace(admin)
    first = entry["versions"][0]["keyid"]
    old_path, old_value = _dke_encrypt(ws_server, name, b"before the rotation")
    assert _dke_decrypt(ws_server, vendors, old_path, old_value).status_code == 200

    rotated = admin.post(f"{page}/dke/{name}/rotate", {}, page=page)
    assert rotated.status_code == 303
    versions = _dke_entry(ws_server, name)["versions"]
    assert len(versions) == 2 and versions[0]["keyid"] == first
    path, value = _dke_encrypt(ws_server, name, b"after the rotation")
    assert path.endswith(versions[1]["keyid"])

    # Retiring destroys a private key: the admin's password first; never the current one.
    wrong = admin.post(f"{page}/dke/{name}/retire", {"keyid": first, "password": "nope"},
                       page=page)
    assert wrong.status_code == 403
    assert _dke_decrypt(ws_server, vendors, old_path, old_value).status_code == 200
    current = admin.post(f"{page}/dke/{name}/retire",
                         {"keyid": versions[1]["keyid"], "password": ADMIN_PASSWORD}, page=page)
    assert current.status_code == 400 and "rotate first" in html.unescape(current.text)
    retired = admin.post(f"{page}/dke/{name}/retire",
                         {"keyid": first, "password": ADMIN_PASSWORD}, page=page)
    assert retired.status_code == 303, retired.text[:500]
    assert _dke_decrypt(ws_server, vendors, old_path, old_value).status_code != 200
    assert _dke_decrypt(ws_server, vendors, path, value).status_code == 200

    disabled = admin.post(f"{page}/dke/{name}/status", {"action": "disable"}, page=page)
    assert disabled.status_code == 303
    refused = _dke_decrypt(ws_server, vendors, path, value)
    assert refused.status_code == 403 and refused.json()["reason"] == "key_disabled"
    assert admin.post(f"{page}/dke/{name}/status", {"action": "enable"},
                      page=page).status_code == 303
    assert _dke_decrypt(ws_server, vendors, path, value).status_code == 200
    done = {(r["action"], r["outcome"]) for r in records(ws_server)
            if r.get("details", {}).get("dke_key") == name and r["user"] == ADMIN}
    assert {("DKE_KEY_CREATE", "GRANTED"), ("DKE_KEY_ROTATE", "GRANTED"),
            ("DKE_KEY_RETIRE", "GRANTED"), ("DKE_KEY_DISABLE", "GRANTED"),
            ("DKE_KEY_ENABLE", "GRANTED")} <= done


def test_cse_admin_granted_in_the_console_once_a_second_admin_approves(
        admin: Console, kacls: Kacls, ws_server: Server) -> None:
    holder = f"takeout-{os.urandom(3).hex()}@example.com"
    resource = f"//googleapis.com/drive/files/console-priv-{os.urandom(4).hex()}"
    dek = os.urandom(32)
    wrapped = kacls.wrap(ALICE, resource, dek).json()["wrapped_key"]
    page = "/console/workspace"
    # (A lone admin is never offered the grant: tests/service/console/test_console_duty.py.)
    # A second admin: the grant is a request, and it runs only once the other approves.
    put_account(ws_server, ADMIN2, ADMIN2_PASSWORD, Role.ADMIN)
    other = Console(ws_server).as_account(ADMIN2, ADMIN2_PASSWORD)
    try:
        assert 'id="grant-cse-admin"' in _workspace(admin)
        assert kacls.privileged_unwrap(holder, resource, wrapped).status_code == 403
        pattern = admin.post(f"{page}/cse-admins",
                             {"email": "*@example.com", "password": ADMIN_PASSWORD}, page=page)
        assert pattern.status_code == 400 and "not a pattern" in html.unescape(pattern.text)
        asked = admin.post(f"{page}/cse-admins", {"email": holder, "password": ADMIN_PASSWORD},
                           page=page)
        assert asked.status_code == 303, asked.text[:500]
        approval_id = asked.headers["location"].rsplit("request=", 1)[1]
        assert kacls.privileged_unwrap(holder, resource, wrapped).status_code == 403
        own = admin.post(f"/console/approvals/{approval_id}/approve",
                         {"password": ADMIN_PASSWORD}, page="/console/approvals")
        assert "Refused" in own.text or own.status_code == 403
        assert kacls.privileged_unwrap(holder, resource, wrapped).status_code == 403
        approved = other.post(f"/console/approvals/{approval_id}/approve",
                              {"password": ADMIN2_PASSWORD}, page="/console/approvals")
        assert approved.status_code == 200 and "the action ran" in approved.text
        granted = kacls.privileged_unwrap(holder, resource, wrapped)
        assert granted.status_code == 200, granted.text
        assert base64.b64decode(granted.json()["key"]) == dek
        grant = [r for r in records(ws_server) if r["action"] == "CSE_ADMIN_ADD"][-1]
        assert grant["outcome"] == "GRANTED" and grant["details"]["email"] == holder
        assert grant["user"] == ADMIN2
        assert grant["details"]["approval"]["requested_by"] == ADMIN
        assert holder in _workspace(admin)

        # Withdrawing closes the path at once, without an approval.
        gone = admin.post(f"{page}/cse-admins/remove", {"email": holder}, page=page)
        assert gone.status_code == 303
        assert kacls.privileged_unwrap(holder, resource, wrapped).status_code == 403
    finally:
        other.close()
