"""CSE and DKE keys in the console, on every backend (SPEC §11, issue 15 "Console").

An administrator signs in to the real console of a real `sceau serve` and works its forms
as a browser without JavaScript would (tests/console/consolekit.py): the key table shows
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
from wskit import Kacls, Vendors

from auditlog import records
from console.consolekit import Console, put_account
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
    listed = json.loads(run_cli("dke", "key", "list", "--json", "--data-dir",
                                str(ws_server.data_dir), env=ws_server.env).stdout)
    entry = next(k for k in listed if k["name"] == name)
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
