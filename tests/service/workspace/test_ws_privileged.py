"""CSE privileged endpoints and rewrap, on every backend (SPEC §11).

Privileged calls by a non-admin, by a forged admin row, and by a real cse_admin granted
with the host CLI; rewrap from a listed and an unlisted KACLS URL (no request forgery).
The "original KACLS" is a loopback HTTPS stand-in for another vendor's service: it checks
the KACLS JWT Sceau sends against Sceau's own /cse/certs before answering.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from workspace_support import Kacls, Vendors

from audit_support import records
from sceau.core.b64 import b64u_decode
from sceau.core.workspace import resource_key_hash
from support import Server, run_cli

ALICE = "alice@example.com"
ADMIN = "carol.admin@example.com"


def _resource(tag: str) -> str:
    return f"//googleapis.com/drive/files/{tag}-{os.urandom(6).hex()}"


def test_privileged_calls_need_cse_admin(kacls: Kacls, ws_server: Server) -> None:
    resource = _resource("takeout")
    dek = os.urandom(32)
    wrapped = kacls.wrap(ALICE, resource, dek, perimeter="perimeter1").json()["wrapped_key"]
    # Not an admin: refused, audited.
    refused = kacls.privileged_unwrap(ADMIN, resource, wrapped)
    assert refused.status_code == 403, refused.text
    assert "key" not in refused.json()
    last = [r for r in records(ws_server) if r["action"] == "CSE_PRIVILEGED_UNWRAP"][-1]
    assert (last["outcome"], last["user"]) == ("DENIED", ADMIN)
    # The host operator grants cse_admin with the CLI: audited.
    run_cli("cse", "admins", "add", ADMIN, "--data-dir", str(ws_server.data_dir),
            env=ws_server.env)
    grant = [r for r in records(ws_server) if r["action"] == "CSE_ADMIN_ADD"][-1]
    assert grant["details"]["email"] == ADMIN and grant["outcome"] == "GRANTED"
    listed = run_cli("cse", "admins", "list", "--json", "--data-dir",
                     str(ws_server.data_dir), env=ws_server.env)
    assert [a["email"] for a in json.loads(listed.stdout) if a["sealed"]] == [ADMIN]
    granted = kacls.privileged_unwrap(ADMIN, resource, wrapped)
    assert granted.status_code == 200, granted.text
    assert base64.b64decode(granted.json()["key"]) == dek
    last = [r for r in records(ws_server) if r["action"] == "CSE_PRIVILEGED_UNWRAP"][-1]
    assert last["details"]["perimeter_id"] == "perimeter1"  # restored from the wrapped key
    # The resource name still binds, and the key's status still applies.
    assert kacls.privileged_unwrap(ADMIN, resource + "x", wrapped).status_code == 403
    # privilegedwrap: a new resource's key is owned by the admin.
    other = _resource("admin-made")
    made = kacls.post("privilegedwrap", {
        "authentication": kacls.authn(ADMIN), "key": base64.b64encode(dek).decode(),
        "resource_name": other, "perimeter_id": "", "reason": "import"})
    assert made.status_code == 200, made.text
    assert base64.b64decode(kacls.unwrap("dave@example.com", other, made.json()["wrapped_key"])
                            .json()["key"]) == dek
    wrap_rec = [r for r in records(ws_server) if r["action"] == "CSE_PRIVILEGED_WRAP"][-1]
    app = ws_server.register_app("priv-check", users=(ADMIN,))
    with ws_server.client(app, user=ADMIN) as client:
        assert client.describe_key(wrap_rec["key"])["owner"] == ADMIN
    # Withdrawn: refused at the next call.
    run_cli("cse", "admins", "remove", ADMIN, "--data-dir", str(ws_server.data_dir),
            env=ws_server.env)
    assert kacls.privileged_unwrap(ADMIN, resource, wrapped).status_code == 403


def test_a_forged_cse_admin_row_grants_nothing(kacls: Kacls, ws_server: Server) -> None:
    """A database writer without the keystore inserts an admin row: integrity_failure."""
    import sqlalchemy as sa

    from sceau.store.db import create_engines

    resource = _resource("forged")
    wrapped = kacls.wrap(ALICE, resource, os.urandom(32)).json()["wrapped_key"]
    mallory = "mallory@example.com"
    engines = create_engines(ws_server.config().database_url)
    try:
        with engines.write.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO cse_admins (email, added_by, added_at, revision, seal) "
                "VALUES (:e, 'root', 1, 1, :s)"), {"e": mallory, "s": b"\0" * 32})
    finally:
        engines.dispose()
    refused = kacls.privileged_unwrap(mallory, resource, wrapped)
    assert refused.status_code == 409 and "key" not in refused.json()
    last = [r for r in records(ws_server) if r["action"] == "CSE_PRIVILEGED_UNWRAP"][-1]
    assert last["reason"] == "integrity_failure" and last["user"] == mallory


# --- rewrap ----------------------------------------------------------------------------------


def _verify_kacls_jwt(token: str, certs: dict[str, Any]) -> dict[str, Any]:
    """Check a KACLS JWT with the JWKS Sceau publishes at /cse/certs (independent code)."""
    head_b64, body_b64, sig_b64 = token.split(".")
    header = json.loads(b64u_decode(head_b64))
    jwk = next(k for k in certs["keys"] if k["kid"] == header["kid"])
    data, sig = f"{head_b64}.{body_b64}".encode(), b64u_decode(sig_b64)
    if jwk["kty"] == "OKP":
        Ed25519PublicKey.from_public_bytes(b64u_decode(jwk["x"])).verify(sig, data)
    else:
        pub = ec.EllipticCurvePublicNumbers(int.from_bytes(b64u_decode(jwk["x"]), "big"),
                                            int.from_bytes(b64u_decode(jwk["y"]), "big"),
                                            ec.SECP256R1()).public_key()
        pub.verify(encode_dss_signature(int.from_bytes(sig[:32], "big"),
                                        int.from_bytes(sig[32:], "big")),
                   data, ec.ECDSA(hashes.SHA256()))
    claims: dict[str, Any] = json.loads(b64u_decode(body_b64))
    return claims


@pytest.fixture()
def old_kacls(vendors: Vendors, ws_server: Server) -> dict[str, Any]:
    """The original KACLS: answers privilegedunwrap only to a valid KACLS JWT from Sceau."""
    state: dict[str, Any] = {"dek": os.urandom(32), "claims": None}
    certs = httpx.get(f"{ws_server.url}/cse/certs", verify=ws_server.cert).json()

    def privileged_unwrap(method: str, path: str, body: bytes) -> tuple[int, Any]:
        request = json.loads(body)
        try:
            state["claims"] = _verify_kacls_jwt(request["authentication"], certs)
        except Exception:  # noqa: BLE001 - any failure is a refusal of the stand-in
            return 401, {"code": 401, "message": "bad token", "details": ""}
        state["request"] = request
        return 200, {"key": base64.b64encode(state["dek"]).decode()}

    vendors.jwks.documents["old-kacls/privilegedunwrap"] = privileged_unwrap
    return state


def test_rewrap_from_a_listed_kacls(kacls: Kacls, vendors: Vendors, old_kacls: dict[str, Any]
                                    ) -> None:
    resource = _resource("migrate")
    original = vendors.jwks.url("old-kacls")
    response = kacls.post("rewrap", {
        "authorization": kacls.authz(ALICE, "migrator", resource),
        "original_kacls_url": original + "/", "wrapped_key": "b2xkLWthY2xzLXdyYXBwZWQ=",
        "reason": "{client:'drive' op:'migrate'}"})
    assert response.status_code == 200, response.text
    body = response.json()
    dek = old_kacls["dek"]
    assert base64.b64decode(body["resource_key_hash"]) == resource_key_hash(dek, resource, "")
    claims = old_kacls["claims"]
    assert claims["resource_name"] == resource and claims["kacls_url"] == original
    assert claims["iss"] == kacls.kacls_url
    assert old_kacls["request"]["wrapped_key"] == "b2xkLWthY2xzLXdyYXBwZWQ="
    # The DEK now lives under this resource's Sceau key.
    assert base64.b64decode(kacls.unwrap(ALICE, resource, body["wrapped_key"])
                            .json()["key"]) == dek


@pytest.mark.parametrize("url", [
    "https://127.0.0.1:9/unlisted", "https://metadata.google.internal/computeMetadata/v1",
    "http://127.0.0.1:1/", "file:///etc/passwd"])
def test_rewrap_from_an_unlisted_kacls_sends_nothing(url: str, kacls: Kacls,
                                                     vendors: Vendors) -> None:
    before = len(vendors.jwks.requests)
    resource = _resource("forgery")
    response = kacls.post("rewrap", {
        "authorization": kacls.authz(ALICE, "migrator", resource),
        "original_kacls_url": url, "wrapped_key": "eA==", "reason": "x"})
    assert response.status_code == 403, response.text
    # Nothing was fetched: the JWKS were cached already, and no KACLS call went out.
    assert len(vendors.jwks.requests) == before


def test_rewrap_needs_the_migrator_role(kacls: Kacls, vendors: Vendors,
                                        old_kacls: dict[str, Any]) -> None:
    resource = _resource("no-migrator")
    before = len(vendors.jwks.requests)
    response = kacls.post("rewrap", {
        "authorization": kacls.authz(ALICE, "writer", resource),
        "original_kacls_url": vendors.jwks.url("old-kacls"), "wrapped_key": "eA==",
        "reason": "x"})
    assert response.status_code == 403
    assert len(vendors.jwks.requests) == before
