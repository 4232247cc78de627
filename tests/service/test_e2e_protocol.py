"""Every protocol refusal of SPEC §3 over HTTPS: its code, no change, and its audit record."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwcrypto import jwk as jwcrypto_jwk

from audit_support import count_rows, records
from sceau.core.b64 import b64u_encode
from sceau.jose.client import sign_request, wrap_for_service
from sceau.vocab import AppStatus
from support import Server, TestApp

USER = "alice@example.com"


def _segment(obj: dict[str, Any]) -> str:
    return b64u_encode(json.dumps(obj, separators=(",", ":")).encode())


def forge(app: TestApp, aud: str, *, header: dict[str, Any] | None = None,
          claims: dict[str, Any] | None = None, op: str = "encrypt",
          sign: Callable[[bytes], bytes] | None = None) -> tuple[str, str]:
    """A request token with chosen header/claims overrides; returns (token, jti)."""
    now = int(time.time())
    jti = b64u_encode(secrets.token_bytes(16))
    h = {"alg": app.identity.alg, "kid": app.identity.kid, "typ": "sceau-req+jwt", **(header or {})}
    c = {"iss": app.app_id, "sub": USER, "aud": aud, "iat": now, "exp": now + 60, "jti": jti,
         "op": op, "params": {"plaintext": b64u_encode(b"x")}, **(claims or {})}
    signing_input = f"{_segment(h)}.{_segment(c)}".encode()
    signature = (sign or app.identity.sign)(signing_input)
    return f"{signing_input.decode()}.{b64u_encode(signature)}", jti


def post(server: Server, token: str, op: str = "encrypt") -> httpx.Response:
    return httpx.post(f"{server.url}/v1/{op}", content=token,
                      headers={"Content-Type": "application/jose"}, verify=server.cert)


def _public_pem(app: TestApp) -> bytes:
    key = jwcrypto_jwk.JWK(**app.sign_public)
    pem: bytes = key.export_to_pem()
    return pem


CASES: dict[str, tuple[Callable[[Server, TestApp], tuple[str, str]], str, bool]] = {
    # name: (make token, expected code, audited with req = jti?)
    "bad-signature": (lambda s, a: (lambda t: (t[0][:-6] + ("A" if t[0][-6] != "A" else "B")
                                               + t[0][-5:], t[1]))(forge(a, s.url)),
                      "invalid_token", False),
    "alg-none": (lambda s, a: forge(a, s.url, header={"alg": "none"}, sign=lambda _d: b""),
                 "invalid_token", False),
    "hs256-with-public-key": (
        lambda s, a: forge(a, s.url, header={"alg": "HS256"},
                           sign=lambda d: hmac.new(_public_pem(a), d, hashlib.sha256).digest()),
        "invalid_token", False),
    "wrong-typ": (lambda s, a: forge(a, s.url, header={"typ": "JWT"}), "invalid_token", False),
    "response-typ": (lambda s, a: forge(a, s.url, header={"typ": "sceau-resp+jwt"}),
                     "invalid_token", False),
    "wrong-aud": (lambda s, a: forge(a, "https://other.example:8443"), "invalid_token", True),
    "aud-array": (lambda s, a: forge(a, s.url, claims={"aud": [s.url]}), "invalid_token", True),
    "wrong-op": (lambda s, a: forge(a, s.url, op="decrypt"), "invalid_token", True),
    "expired": (lambda s, a: forge(a, s.url, claims={"iat": int(time.time()) - 400,
                                                     "exp": int(time.time()) - 100}),
                "token_expired", True),
    "exp-too-far": (lambda s, a: forge(a, s.url, claims={"exp": int(time.time()) + 301}),
                    "invalid_token", True),
    "iat-in-future": (lambda s, a: forge(a, s.url, claims={"iat": int(time.time()) + 120,
                                                           "exp": int(time.time()) + 180}),
                      "invalid_token", True),
    "unknown-kid": (lambda s, a: forge(a, s.url, header={"kid": "no-such-kid"}),
                    "unknown_application", False),
    "extra-header": (lambda s, a: forge(a, s.url, header={"jku": "https://evil.example/k"}),
                     "invalid_token", False),
    "malformed": (lambda s, a: ("not.a.token!", ""), "invalid_token", False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_protocol_refusal(server: Server, app: TestApp, case: str) -> None:
    make, code, with_jti = CASES[case]
    token, jti = make(server, app)
    keys_before = count_rows(server, "keys")
    response = post(server, token)
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["code"] == code, problem
    assert problem["type"] == f"urn:sceau:error:{code}"
    assert response.status_code == 401
    assert "Traceback" not in response.text
    assert count_rows(server, "keys") == keys_before
    identified = case not in ("unknown-kid", "malformed")
    matching = [r for r in records(server) if r["reason"] == code and r["app"] == app.app_id
                and (r["req"] == jti if with_jti else r["req"] is None)]
    if identified:
        assert matching and matching[-1]["outcome"] == "DENIED"
    if case == "unknown-kid":
        assert not [r for r in records(server) if r["reason"] == "unknown_application"]


def test_replayed_jti(server: Server, app: TestApp) -> None:
    token, jti = forge(app, server.url)
    assert post(server, token).status_code == 200
    keys_before = count_rows(server, "keys")
    again = post(server, token)
    assert again.status_code == 401 and again.json()["code"] == "replayed_request"
    assert count_rows(server, "keys") == keys_before
    replays = [r for r in records(server) if r["req"] == jti]
    assert [r["outcome"] for r in replays] == ["GRANTED", "DENIED"]
    assert replays[1]["reason"] == "replayed_request"


def test_disabled_application(server: Server) -> None:
    from sceau import admin

    victim = server.register_app("to-disable")
    with server.admin_session() as session:
        admin.set_application_status(session, victim.app_id, AppStatus.DISABLED)
    token, jti = forge(victim, server.url)
    response = post(server, token)
    assert response.status_code == 403 and response.json()["code"] == "application_disabled"
    rec = [r for r in records(server) if r["req"] == jti][-1]
    assert rec["outcome"] == "DENIED" and rec["app"] == victim.app_id


def test_user_not_allowed(server: Server) -> None:
    scoped = server.register_app("scoped", users=("*@example.com",))
    ok, _ = forge(scoped, server.url, claims={"sub": "carol@EXAMPLE.com"})
    assert post(server, ok).status_code == 200
    token, jti = forge(scoped, server.url, claims={"sub": "eve@evil-example.com"})
    response = post(server, token)
    assert response.status_code == 403 and response.json()["code"] == "user_not_allowed"
    assert [r for r in records(server) if r["req"] == jti][-1]["reason"] == "user_not_allowed"


def test_wrong_jwe_key(server: Server, app: TestApp) -> None:
    jws = sign_request(app.identity, sub=USER, aud=server.url, op="encrypt",
                       params={"plaintext": "eA"}, now=int(time.time()))
    other = rsa.generate_private_key(65537, 3072)
    wrong = jwcrypto_jwk.JWK.from_pyca(other.public_key()).export_public(as_dict=True)
    jwks = httpx.get(f"{server.url}/.well-known/jwks.json", verify=server.cert).json()
    real_kid = next(k["kid"] for k in jwks["keys"] if k.get("use") == "enc")
    wrong.update(kid=real_kid, alg="RSA-OAEP-256", use="enc")
    response = post(server, wrap_for_service(jws, wrong))
    assert response.status_code == 401 and response.json()["code"] == "invalid_token"


def test_wrong_content_type_and_oversize(server: Server, app: TestApp) -> None:
    token, _ = forge(app, server.url)
    r = httpx.post(f"{server.url}/v1/encrypt", content=token,
                   headers={"Content-Type": "application/json"}, verify=server.cert)
    assert r.status_code == 400 and r.json()["code"] == "invalid_request"
    big = b"a" * (17 * 1024 * 1024)
    r = httpx.post(f"{server.url}/v1/encrypt", content=big,
                   headers={"Content-Type": "application/jose"}, verify=server.cert)
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large"


@pytest.mark.parametrize("ctype", ["application/jose; charset=utf-8", "Application/JOSE",
                                   "application/jose ;x=y"])
def test_content_type_with_parameters_or_case_is_accepted(server: Server, app: TestApp,
                                                           ctype: str) -> None:
    token, _ = forge(app, server.url)
    r = httpx.post(f"{server.url}/v1/encrypt", content=token, headers={"Content-Type": ctype},
                   verify=server.cert)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/jose"
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert int(r.headers["content-length"]) == len(r.content) and r.content.count(b".") == 2


@pytest.mark.parametrize("headers", [{}, {"Content-Type": "application/jose-x"},
                                     {"Content-Type": "text/plain, application/jose"}])
def test_missing_or_other_content_type_is_refused(server: Server, app: TestApp,
                                                  headers: dict[str, str]) -> None:
    token, jti = forge(app, server.url)
    r = httpx.post(f"{server.url}/v1/encrypt", content=token, headers=headers,
                   verify=server.cert)
    assert r.status_code == 400 and r.json()["code"] == "invalid_request"
    assert r.json()["detail"] == "Content-Type must be application/jose"
    assert r.json()["request_id"] and r.headers["cache-control"] == "no-store"
    assert not [rec for rec in records(server) if rec["req"] == jti]


def test_unknown_operation(server: Server) -> None:
    r = httpx.post(f"{server.url}/v1/steal-keys", content=b"x",
                   headers={"Content-Type": "application/jose"}, verify=server.cert)
    assert r.status_code == 404 and r.json()["code"] == "not_found"


def test_disabled_key_app_status_is_rechecked_every_call(server: Server) -> None:
    """An app key retired in the store is refused at once, whatever any cache holds."""
    from sceau import admin

    rotating = server.register_app("rotating")
    first, _ = forge(rotating, server.url)
    assert post(server, first).status_code == 200
    with server.admin_session() as session:
        admin.retire_app_key(session, rotating.app_id, rotating.identity.kid)
    second, _ = forge(rotating, server.url)
    response = post(server, second)
    assert response.status_code == 401 and response.json()["code"] == "unknown_application"
