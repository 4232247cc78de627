"""Microsoft DKE over real HTTPS on every backend (SPEC §11).

Keys are made with the CLI inside the server's keystore; Office's side is played by the
`cryptography` library (RSA-OAEP-256 with the published public key) and by Entra-shaped
bearer tokens signed by this module's issuer.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from workspace_support import SigningKey, Vendors

from audit_support import records
from support import Server, run_cli

ALLOWED = "*@contoso.example"


def _cli(server: Server, *args: str) -> Any:
    out = run_cli("dke", "key", *args, "--data-dir", str(server.data_dir), env=server.env)
    text = out.stdout.decode()
    return json.loads(text) if text.startswith(("{", "[")) else text


@pytest.fixture(scope="module")
def dke_key(ws_server: Server) -> dict[str, Any]:
    made: dict[str, Any] = _cli(ws_server, "create", "contoso-confidential",
                                "--allow", ALLOWED, "--allow", "Guest@Partner.example")
    return made


def _public(server: Server, name: str) -> tuple[str, rsa.RSAPublicKey]:
    doc = httpx.get(f"{server.url}/dke/{name}", verify=server.cert).json()
    key = doc["key"]
    assert key["kty"] == "RSA" and key["alg"] == "RS256" and key["e"] == 65537
    assert doc["cache"]["exp"][4] == "-" and "T" in doc["cache"]["exp"]
    n = int.from_bytes(base64.b64decode(key["n"]), "big")
    assert n.bit_length() == 2048
    return key["kid"], rsa.RSAPublicNumbers(key["e"], n).public_key()


def _encrypt(public: rsa.RSAPublicKey, data: bytes) -> str:
    ciphertext = public.encrypt(data, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()),
                                                   algorithm=hashes.SHA256(), label=None))
    return base64.b64encode(ciphertext).decode()


def _token(vendors: Vendors, **claims: Any) -> str:
    body = {"aud": vendors.dke_audience, "upn": "alice@contoso.example",
            "tid": "00000000-0000-0000-0000-00000000cafe", "ver": "1.0", **claims}
    return vendors.entra.token({k: v for k, v in body.items() if v is not None},
                               header={"typ": "JWT", "alg": "RS256",
                                       "x5t": vendors.entra.key.kid,
                                       "kid": vendors.entra.key.kid})


def _decrypt(server: Server, kid: str, value: str, token: str | None,
             alg: str = "RSA-OAEP-256") -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    path = kid.split("/dke/", 1)[1]
    return httpx.post(f"{server.url}/dke/{path}/decrypt", json={"alg": alg, "value": value},
                      headers=headers, verify=server.cert)


def test_round_trip_with_an_independent_rsa_oaep(ws_server: Server, vendors: Vendors,
                                                 dke_key: dict[str, Any]) -> None:
    kid, public = _public(ws_server, "contoso-confidential")
    assert kid == f"{ws_server.url}/dke/contoso-confidential/{dke_key['keyid']}"
    secret = os.urandom(32)
    response = _decrypt(ws_server, kid, _encrypt(public, secret), _token(vendors))
    assert response.status_code == 200, response.text
    assert base64.b64decode(response.json()["value"]) == secret
    rec = [r for r in records(ws_server) if r["action"] == "DKE_DECRYPT"][-1]
    assert (rec["outcome"], rec["user"], rec["key"]) == (
        "GRANTED", "alice@contoso.example", dke_key["key_id"])
    # email, then upn, then preferred_username name the caller, case-insensitively.
    for claims in ({"email": "Bob@CONTOSO.example", "upn": "x@elsewhere.example"},
                   {"upn": None, "preferred_username": "guest@partner.example"}):
        again = _decrypt(ws_server, kid, _encrypt(public, secret), _token(vendors, **claims))
        assert again.status_code == 200, (claims, again.text)


def _challenge(vendors: Vendors) -> str:
    return (f'Bearer resource="{vendors.dke_audience}", '
            'authorization="https://login.microsoftonline.com/common/oauth2/authorize", '
            'realm="dke.sceau.test"')


BAD_TOKENS = {
    "no token": lambda v: None,
    "wrong audience": lambda v: _token(v, aud="https://other.example"),
    "unknown issuer": lambda v: _token(v, iss="https://sts.windows.net/other-tenant/"),
    "expired": lambda v: _token(v, exp=1_000_000),
    "bad signature": lambda v: v.entra.token(
        {"aud": v.dke_audience, "upn": "alice@contoso.example"},
        key=SigningKey(v.entra.key.kid, SigningKey.rsa().private)),
    "not a JWT": lambda v: "garbage",
}


@pytest.mark.parametrize("case", list(BAD_TOKENS))
def test_401_with_the_challenge(case: str, ws_server: Server, vendors: Vendors,
                                dke_key: dict[str, Any]) -> None:
    kid, public = _public(ws_server, "contoso-confidential")
    response = _decrypt(ws_server, kid, _encrypt(public, b"x" * 32), BAD_TOKENS[case](vendors))
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == _challenge(vendors)
    assert "value" not in response.json()


def test_403_outside_the_allowed_principals(ws_server: Server, vendors: Vendors,
                                            dke_key: dict[str, Any]) -> None:
    kid, public = _public(ws_server, "contoso-confidential")
    for who in ("mallory@evil.example", "alice@sub.contoso.example",
                "alice@contoso.example.evil.org"):
        response = _decrypt(ws_server, kid, _encrypt(public, b"y" * 32),
                            _token(vendors, upn=who))
        assert response.status_code == 403, response.text
        assert response.json()["reason"] == "not_authorized"
    rec = [r for r in records(ws_server) if r["action"] == "DKE_DECRYPT"][-1]
    assert rec["outcome"] == "DENIED" and rec["user"] == "alice@contoso.example.evil.org"


@pytest.mark.parametrize("alg", ["RSA1_5", "RSA-OAEP", "dir", ""])
def test_400_for_another_alg(alg: str, ws_server: Server, vendors: Vendors,
                             dke_key: dict[str, Any]) -> None:
    kid, public = _public(ws_server, "contoso-confidential")
    response = _decrypt(ws_server, kid, _encrypt(public, b"z" * 32), _token(vendors), alg=alg)
    assert response.status_code == 400, response.text


def test_disable_rotate_retire(ws_server: Server, vendors: Vendors,
                               dke_key: dict[str, Any]) -> None:
    """Per-document revocation for DKE: disabling the key refuses the next decryption."""
    kid, public = _public(ws_server, "contoso-confidential")
    value = _encrypt(public, b"document key")
    assert _decrypt(ws_server, kid, value, _token(vendors)).status_code == 200
    _cli(ws_server, "disable", "contoso-confidential")
    refused = _decrypt(ws_server, kid, value, _token(vendors))
    assert refused.status_code == 403 and refused.json()["reason"] == "key_disabled"
    _cli(ws_server, "enable", "contoso-confidential")
    assert _decrypt(ws_server, kid, value, _token(vendors)).status_code == 200
    # Rotate: a new keyid is published; the old one still decrypts until retired.
    rotated = _cli(ws_server, "rotate", "contoso-confidential")
    new_kid, new_public = _public(ws_server, "contoso-confidential")
    assert new_kid.endswith(rotated["keyid"]) and new_kid != kid
    assert _decrypt(ws_server, new_kid, _encrypt(new_public, b"new"),
                    _token(vendors)).status_code == 200
    assert _decrypt(ws_server, kid, value, _token(vendors)).status_code == 200
    with pytest.raises(AssertionError, match="rotate first"):
        _cli(ws_server, "retire", "contoso-confidential", rotated["keyid"])
    _cli(ws_server, "retire", "contoso-confidential", dke_key["keyid"])
    gone = _decrypt(ws_server, kid, value, _token(vendors))
    assert gone.status_code == 403, gone.text
    listed = _cli(ws_server, "list", "--json")
    entry = next(k for k in listed if k["name"] == "contoso-confidential")
    assert entry["status"] == "active"
    assert {v["keyid"]: v["status"] for v in entry["versions"]} == {
        dke_key["keyid"]: "retired", rotated["keyid"]: "active"}
    assert sorted(entry["allow"]) == sorted([ALLOWED, "guest@partner.example"])
    actions = {r["action"] for r in records(ws_server)}
    assert {"DKE_KEY_CREATE", "DKE_KEY_DISABLE", "DKE_KEY_ENABLE", "DKE_KEY_ROTATE",
            "DKE_KEY_RETIRE"} <= actions


def test_unknown_keys_and_versions(ws_server: Server, vendors: Vendors,
                                   dke_key: dict[str, Any]) -> None:
    assert httpx.get(f"{ws_server.url}/dke/no-such-key", verify=ws_server.cert
                     ).status_code == 404
    response = httpx.post(f"{ws_server.url}/dke/contoso-confidential/{'0' * 32}/decrypt",
                          json={"alg": "RSA-OAEP-256",
                                "value": base64.b64encode(b"\0" * 256).decode()},
                          headers={"authorization": f"Bearer {_token(vendors)}"},
                          verify=ws_server.cert)
    assert response.status_code == 404


def test_a_tampered_ciphertext_is_refused_without_detail(ws_server: Server, vendors: Vendors,
                                                         dke_key: dict[str, Any]) -> None:
    _cli(ws_server, "create", "tamper-check", "--allow", ALLOWED)
    kid, public = _public(ws_server, "tamper-check")
    raw = bytearray(base64.b64decode(_encrypt(public, b"k" * 32)))
    raw[100] ^= 1
    response = _decrypt(ws_server, kid, base64.b64encode(bytes(raw)).decode(), _token(vendors))
    assert response.status_code == 409, response.text
    assert response.json()["detail"] == "decryption failed"
