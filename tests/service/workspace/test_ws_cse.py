"""Google Workspace CSE over real HTTPS on every backend (SPEC §11): each check, performed
and refused, as Google's client and as an attacker on the internet would call.

Tokens are real JWTs signed by this module's issuers (an identity provider and Google's
Drive token issuer), shaped as Google's reference pages show; their JWKS come from a
loopback HTTPS server. Nothing in Sceau is turned off.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from workspace_support import (
    GOOGLE_DOC_DEK,
    Kacls,
    SigningKey,
    Vendors,
    answered_ok,
    google_error,
)

from audit_support import records
from sceau.core.b64 import b64u_encode
from sceau.core.workspace import parse_wrapped_key, resource_key_hash
from support import Server

ALICE = "alice@example.com"
BOB = "bob@example.com"
VECTORS = json.loads(
    # A copy of shared/vectors/cse-resource-key-hash.json (Google's published vectors).
    (Path(__file__).resolve().parents[2] / "vectors" / "cse-resource-key-hash.json").read_text()
)["vectors"]


def _resource(tag: str) -> str:
    return f"//googleapis.com/drive/files/{tag}-{os.urandom(6).hex()}"


def _key_id(wrapped: str) -> str:
    return b64u_encode(parse_wrapped_key(base64.b64decode(wrapped)).header.key_id)


def test_status_lists_exactly_the_endpoints_that_work(ws_server: Server) -> None:
    status = httpx.get(f"{ws_server.url}/cse/status", verify=ws_server.cert).json()
    assert status["server_type"] == "KACLS"
    assert set(status["operations_supported"]) >= {"wrap", "unwrap", "digest", "status", "certs"}
    certs = httpx.get(f"{ws_server.url}/cse/certs", verify=ws_server.cert).json()
    assert certs["keys"] and all("kid" in k and "d" not in k for k in certs["keys"])


def test_google_example_round_trips(kacls: Kacls, ws_server: Server) -> None:
    """The DEK and reason of Google's wrap example, wrapped by alice, unwrapped by bob."""
    resource = _resource("example")
    wrapped = answered_ok(kacls.wrap(ALICE, resource, GOOGLE_DOC_DEK))["wrapped_key"]
    assert len(base64.b64decode(wrapped)) <= 1024
    assert answered_ok(kacls.unwrap(BOB, resource, wrapped))["key"] == base64.b64encode(
        GOOGLE_DOC_DEK).decode()
    assert answered_ok(kacls.unwrap(ALICE, resource, wrapped, role="writer"))["key"]
    # The per-document key is a normal Sceau key: owner alice, application and name bound.
    rec = [r for r in records(ws_server)
           if r["action"] == "CSE_WRAP" and r["details"]["resource_name"] == resource][-1]
    assert rec["outcome"] == "GRANTED" and rec["user"] == ALICE and rec["app"] == \
        "google-workspace" and rec["key"] == _key_id(wrapped)
    assert rec["details"]["reason"] == "{client:'drive' op:'update'}"
    unwraps = [r for r in records(ws_server)
               if r["action"] == "CSE_UNWRAP" and r["key"] == _key_id(wrapped)]
    assert {r["user"] for r in unwraps} == {ALICE, BOB}


def test_one_key_per_resource(kacls: Kacls) -> None:
    one, two = _resource("one"), _resource("two")
    w1 = answered_ok(kacls.wrap(ALICE, one, os.urandom(32)))["wrapped_key"]
    w1b = answered_ok(kacls.wrap(ALICE, one, os.urandom(32)))["wrapped_key"]
    w2 = answered_ok(kacls.wrap(ALICE, two, os.urandom(32)))["wrapped_key"]
    assert _key_id(w1) == _key_id(w1b) != _key_id(w2)


@pytest.mark.parametrize("vector", VECTORS, ids=["no-perimeter", "perimeter1"])
def test_resource_key_hash_vectors(vector: dict[str, str], kacls: Kacls) -> None:
    dek = bytes.fromhex(vector["dek_hex"])
    expected = bytes.fromhex(vector["resource_key_hash_hex"])
    assert resource_key_hash(dek, vector["resource_name"], vector["perimeter_id"]) == expected
    # The same through /digest, with the vector's resource, perimeter and DEK.
    resource = vector["resource_name"] + os.urandom(4).hex()
    wrapped = answered_ok(kacls.wrap(ALICE, resource, dek, perimeter=vector["perimeter_id"]))
    digest = answered_ok(kacls.post("digest", {
        "authorization": kacls.authz(BOB, "verifier", resource, vector["perimeter_id"]),
        "wrapped_key": wrapped["wrapped_key"], "reason": "check"}))
    assert base64.b64decode(digest["resource_key_hash"]) == resource_key_hash(
        dek, resource, vector["perimeter_id"])


def test_per_document_revocation(kacls: Kacls, ws_server: Server) -> None:
    """Wrap as alice, unwrap as bob; alice disables the resource's key through the API;
    bob's next unwrap is refused (403, Google's body); enabled again, it works again."""
    resource = _resource("revoke")
    wrapped = answered_ok(kacls.wrap(ALICE, resource, os.urandom(32)))["wrapped_key"]
    assert answered_ok(kacls.unwrap(BOB, resource, wrapped))
    app = ws_server.register_app("cse-admin-app", users=("*@example.com",))
    key_id = _key_id(wrapped)
    with ws_server.client(app, user=ALICE) as client:
        assert client.describe_key(key_id)["application"] == "google-workspace"
        client.disable_key(key_id)
        body = google_error(kacls.unwrap(BOB, resource, wrapped), 403)
        assert "key_disabled" in body["details"]
        google_error(kacls.wrap(ALICE, resource, os.urandom(32)), 403)  # no new wraps either
        accesses = client.list_accesses(key_id)["accesses"]
        assert any(a["action"] == "CSE_UNWRAP" and a["user"] == BOB
                   and a["outcome"] == "DENIED" for a in accesses)
        client.enable_key(key_id)
        assert answered_ok(kacls.unwrap(BOB, resource, wrapped))
        # Crypto-shredding: destroyed, the document can never be opened again.
        client.destroy_key(key_id)
    assert "key_destroyed" in google_error(kacls.unwrap(BOB, resource, wrapped), 403)["details"]


# --- every check, performed and refused -------------------------------------------------------


def _other_key_token(issuer: Any, claims: dict[str, Any]) -> str:
    return issuer.token(claims, key=SigningKey(issuer.key.kid, SigningKey.rsa().private))


def _cases(kacls: Kacls, resource: str) -> dict[str, tuple[dict[str, str], int]]:
    """Name -> (unwrap body members replacing the good ones, expected status)."""
    v = kacls.vendors
    good_authn = {"aud": v.audience, "email": BOB}
    good_authz = {"aud": "cse-authorization", "email": BOB, "role": "reader",
                  "resource_name": resource, "perimeter_id": "", "kacls_url": kacls.kacls_url}

    def authn(**changes: Any) -> dict[str, str]:
        claims = {**good_authn, **changes}
        return {"authentication": v.idp.token({k: x for k, x in claims.items()
                                               if x is not None})}

    def authz(**changes: Any) -> dict[str, str]:
        claims = {**good_authz, **changes}
        return {"authorization": v.google.token({k: x for k, x in claims.items()
                                                 if x is not None})}

    return {
        "authn wrong aud": (authn(aud="other-client"), 401),
        "authn missing aud": (authn(aud=None), 401),
        "authn wrong iss": (authn(iss="https://evil.example"), 401),
        "authn missing iss": ({"authentication": v.idp.token(good_authn, drop=("iss",))}, 401),
        "authn bad signature": ({"authentication": _other_key_token(v.idp, good_authn)}, 401),
        "authn expired": (authn(exp=1_000_000), 401),
        "authn missing exp": ({"authentication": v.idp.token(good_authn, drop=("exp",))}, 401),
        "authz wrong aud": (authz(aud="cse-authorization-x"), 401),
        "authz missing aud": (authz(aud=None), 401),
        "authz wrong iss": (authz(iss="gsuitecse-tokenissuer-evil@example.com"), 401),
        "authz signed by the IdP": ({"authorization": v.idp.token(good_authz)}, 401),
        "authz bad signature": ({"authorization": _other_key_token(v.google, good_authz)}, 401),
        "authz expired": (authz(exp=1_000_000), 401),
        "authz missing exp": ({"authorization": v.google.token(good_authz, drop=("exp",))}, 401),
        "email mismatch": (authz(email="mallory@example.com"), 403),
        "google_email takes precedence over email":
            (authn(email=BOB, google_email="mallory@example.com"), 403),
        "guest google-visitor (not configured)": (authz(email_type="google-visitor"), 403),
        "guest customer-idp (not configured)": (authz(email_type="customer-idp"), 403),
        "wrong kacls_url": (authz(kacls_url="https://evil.example/cse"), 403),
        "missing kacls_url": (authz(kacls_url=None), 403),
        "role verifier": (authz(role="verifier"), 403),
        "role migrator": (authz(role="migrator"), 403),
        "role upgrader": (authz(role="upgrader"), 403),
        "unknown role": (authz(role="owner"), 403),
        "resource_name mismatch": (authz(resource_name=resource + "-other"), 403),
        "perimeter_id mismatch": (authz(perimeter_id="perimeter2"), 403),
        "delegated token": (authz(delegated_to="robot@example.com"), 403),
    }


CASE_NAMES = [
    "authn wrong aud", "authn missing aud", "authn wrong iss", "authn missing iss",
    "authn bad signature", "authn expired", "authn missing exp",
    "authz wrong aud", "authz missing aud", "authz wrong iss", "authz signed by the IdP",
    "authz bad signature", "authz expired", "authz missing exp",
    "email mismatch", "google_email takes precedence over email",
    "guest google-visitor (not configured)", "guest customer-idp (not configured)",
    "wrong kacls_url", "missing kacls_url", "role verifier", "role migrator", "role upgrader",
    "unknown role", "resource_name mismatch", "perimeter_id mismatch", "delegated token",
]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_every_unwrap_check_refuses(case: str, kacls: Kacls, ws_server: Server) -> None:
    resource = _resource("checks")
    wrapped = answered_ok(kacls.wrap(ALICE, resource, os.urandom(32)))["wrapped_key"]
    good = {"wrapped_key": wrapped, "authentication": kacls.authn(BOB),
            "authorization": kacls.authz(BOB, "reader", resource), "reason": "read"}
    assert answered_ok(kacls.post("unwrap", good))  # the control: the good request is served
    cases = _cases(kacls, resource)
    assert list(cases) == CASE_NAMES
    changes, status = cases[case]
    body = google_error(kacls.post("unwrap", {**good, **changes}), status)
    assert "key" not in body
    last = [r for r in records(ws_server) if r["action"] == "CSE_UNWRAP"][-1]
    assert last["outcome"] == "DENIED" and last["app"] == "google-workspace"


ACCEPTED = {
    "email case differs": ({"email": "Bob@Example.COM"}, {"email": BOB}),
    "google_email names the user, email an alias": (
        {"email": "b.alias@idp.example", "google_email": BOB}, {"email": BOB}),
    "email_type google (explicit)": ({"email": BOB}, {"email": BOB, "email_type": "google"}),
    "kacls_url with a trailing slash": ({"email": BOB}, {"email": BOB, "kacls_url": "/"}),
    "role writer may unwrap": ({"email": BOB}, {"email": BOB, "role": "writer"}),
}


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_tokens_shaped_as_google_documents_are_accepted(case: str, kacls: Kacls) -> None:
    resource = _resource("accept")
    wrapped = answered_ok(kacls.wrap(ALICE, resource, os.urandom(32)))["wrapped_key"]
    authn_claims, authz_claims = ACCEPTED[case]
    authz_claims = dict(authz_claims)
    if authz_claims.get("kacls_url") == "/":
        authz_claims["kacls_url"] = kacls.kacls_url + "/"
    role = authz_claims.pop("role", "reader")
    email = authz_claims.pop("email")
    response = kacls.post("unwrap", {
        "wrapped_key": wrapped,
        "authentication": kacls.vendors.idp.token({"aud": kacls.vendors.audience,
                                                   **authn_claims}),
        "authorization": kacls.authz(email, role, resource, **authz_claims),
    })
    assert answered_ok(response)["key"]


ROLE_TABLE = [
    ("wrap", "writer", 200), ("wrap", "upgrader", 200), ("wrap", "reader", 403),
    ("wrap", "verifier", 403), ("wrap", "migrator", 403),
    ("unwrap", "reader", 200), ("unwrap", "writer", 200), ("unwrap", "verifier", 403),
    ("unwrap", "upgrader", 403), ("unwrap", "migrator", 403),
    ("digest", "verifier", 200), ("digest", "reader", 200), ("digest", "writer", 200),
    ("digest", "upgrader", 403), ("digest", "migrator", 403),
]


@pytest.mark.parametrize(("op", "role", "status"), ROLE_TABLE)
def test_every_role_per_endpoint(op: str, role: str, status: int, kacls: Kacls) -> None:
    resource = _resource("roles")
    wrapped = answered_ok(kacls.wrap(ALICE, resource, os.urandom(32)))["wrapped_key"]
    authz = kacls.authz(ALICE, role, resource)
    body: dict[str, str] = {"authorization": authz, "reason": "roles"}
    if op == "wrap":
        body.update(key=base64.b64encode(os.urandom(32)).decode(),
                    authentication=kacls.authn(ALICE))
    else:
        body["wrapped_key"] = wrapped
        if op == "unwrap":
            body["authentication"] = kacls.authn(ALICE)
    response = kacls.post(op, body)
    if status == 200:
        answered_ok(response)
    else:
        google_error(response, status)


def test_unknown_kid_refreshes_the_issuer_keys_once(kacls: Kacls, vendors: Vendors) -> None:
    resource = _resource("rotate")
    wrapped = answered_ok(kacls.wrap(ALICE, resource, os.urandom(32)))["wrapped_key"]
    before = vendors.jwks.hits.get("idp-jwks", 0)
    import time

    time.sleep(1.1)  # past jwks_refresh_min_s
    vendors.idp.rotate()
    vendors.publish()
    assert answered_ok(kacls.unwrap(BOB, resource, wrapped))  # signed with the new kid
    assert vendors.jwks.hits["idp-jwks"] == before + 1
    # A kid the issuer never published: refused, after at most one more fetch.
    stranger = vendors.idp.token({"aud": vendors.audience, "email": BOB},
                                 key=SigningKey.rsa())
    google_error(kacls.unwrap(BOB, resource, wrapped, authn=stranger), 401)
    assert vendors.jwks.hits["idp-jwks"] <= before + 2


def test_malformed_bodies_are_400(kacls: Kacls) -> None:
    resource = _resource("malformed")
    good = {"key": base64.b64encode(os.urandom(32)).decode(),
            "authentication": kacls.authn(ALICE),
            "authorization": kacls.authz(ALICE, "writer", resource)}
    assert answered_ok(kacls.post("wrap", good))
    for body in ({**good, "key": "not base64!"}, {**good, "key": ""},
                 {**good, "key": base64.b64encode(os.urandom(129)).decode()},
                 {**good, "authentication": 5}, {"key": good["key"]},
                 {**good, "reason": "x" * 2000}):
        google_error(kacls.post("wrap", body), 400)
    with httpx.Client(verify=kacls.cert) as client:
        assert client.post(f"{kacls.base}/cse/wrap", content=b"[1,").status_code == 400
        assert client.post(f"{kacls.base}/cse/wrap", content=b"{" * 10000).status_code == 400
        assert client.post(f"{kacls.base}/cse/nosuchop", json={}).status_code == 404


def test_tampered_wrapped_key_is_refused(kacls: Kacls) -> None:
    resource = _resource("tamper")
    made = answered_ok(kacls.wrap(ALICE, resource, os.urandom(32)))
    wrapped = base64.b64decode(made["wrapped_key"])
    flipped = bytearray(wrapped)
    flipped[-1] ^= 1
    body = google_error(kacls.unwrap(BOB, resource, base64.b64encode(bytes(flipped)).decode()),
                    409)
    assert "key" not in body
    # The perimeter in the clear, edited: the envelope no longer authenticates either.
    other = answered_ok(kacls.wrap(ALICE, resource, os.urandom(32), perimeter="p1"))["wrapped_key"]
    raw = bytearray(base64.b64decode(other))
    raw[5:7] = b"p2"
    google_error(kacls.unwrap(BOB, resource, base64.b64encode(bytes(raw)).decode(),
                          perimeter="p2"), 409)


def test_cors_allows_google_only(kacls: Kacls) -> None:
    google = "https://client-side-encryption.google.com"
    with httpx.Client(verify=kacls.cert) as client:
        pre = client.options(f"{kacls.base}/cse/unwrap", headers={
            "origin": google, "access-control-request-method": "POST",
            "access-control-request-headers": "content-type"})
        assert pre.status_code == 204
        assert pre.headers["access-control-allow-origin"] == google
        assert "POST" in pre.headers["access-control-allow-methods"]
        evil = client.options(f"{kacls.base}/cse/unwrap", headers={
            "origin": "https://evil.example", "access-control-request-method": "POST"})
        assert "access-control-allow-origin" not in evil.headers
    resource = _resource("cors")
    body = {"key": base64.b64encode(os.urandom(32)).decode(),
            "authentication": kacls.authn(ALICE),
            "authorization": kacls.authz(ALICE, "writer", resource)}
    granted = kacls.post("wrap", body, origin=google)
    assert granted.status_code == 200
    assert granted.headers["access-control-allow-origin"] == google
    refused = kacls.post("wrap", {**body, "authentication": kacls.authn(ALICE)},
                         origin="https://evil.example")
    google_error(refused, 403)
    assert "access-control-allow-origin" not in refused.headers


def test_no_secret_in_errors_or_audit(kacls: Kacls, ws_server: Server) -> None:
    resource = _resource("secrets")
    dek = os.urandom(32)
    wrapped = answered_ok(kacls.wrap(ALICE, resource, dek))["wrapped_key"]
    authn = kacls.authn(BOB)
    answered_ok(kacls.unwrap(BOB, resource, wrapped, authn=authn))
    refused = kacls.unwrap(BOB, resource + "x", wrapped, authn=authn).text
    trail = json.dumps(records(ws_server))
    for secret in (base64.b64encode(dek).decode(), authn, authn.split(".")[2]):
        assert secret not in trail and secret not in refused
    assert secret not in ws_server.log()
