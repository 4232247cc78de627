"""Helpers for the security suite: hand-made tokens, raw posts, audit reads, refusal checks.

Tokens are forged byte by byte (header and claims as raw JSON bytes when a test needs
duplicate members or non-canonical encodings) and signed with the registered application
key unless a test signs them otherwise.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import sqlalchemy as sa

from sceau.core.b64 import b64u_encode
from sceau.errors import HTTP_STATUS
from sceau.store.audit import iter_audit_lines
from sceau.store.db import create_engines
from support import Server, TestApp

USER = "alice@example.com"
#: Environment for a server on SQLite whatever the caller's SCEAU_DATABASE_URL.
SQLITE = {"SCEAU_DATABASE_URL": ""}
JOSE = {"Content-Type": "application/jose"}


def seg(value: Mapping[str, Any] | bytes) -> str:
    """base64url of a JSON object (compact) or of raw bytes."""
    raw = value if isinstance(value, bytes) else json.dumps(value, separators=(",", ":")).encode()
    return b64u_encode(raw)


def claims_for(app: TestApp, aud: str, op: str = "encrypt",
               overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": app.app_id, "sub": USER, "aud": aud, "iat": now, "exp": now + 60,
        "jti": b64u_encode(secrets.token_bytes(16)), "op": op,
        "params": {"plaintext": b64u_encode(b"x")},
    }
    claims.update(overrides or {})
    return claims


@dataclass(frozen=True)
class Forged:
    token: str
    jti: str | None


def forge(
    app: TestApp,
    aud: str,
    *,
    header: Mapping[str, Any] | bytes | None = None,
    claims: Mapping[str, Any] | bytes | None = None,
    op: str = "encrypt",
    sign: Callable[[bytes], bytes] | None = None,
    drop: tuple[str, ...] = (),
) -> Forged:
    """A request token; ``header``/``claims`` dicts are merged over good values, bytes used as is.

    ``drop`` removes claims; ``sign`` replaces the application's signature function.
    """
    if isinstance(header, bytes):
        header_seg = seg(header)
    else:
        h = {"alg": app.identity.alg, "kid": app.identity.kid, "typ": "sceau-req+jwt",
             **(header or {})}
        header_seg = seg(h)
    jti: str | None
    if isinstance(claims, bytes):
        claims_seg, jti = seg(claims), None
    else:
        c = claims_for(app, aud, op, claims)
        for name in drop:
            c.pop(name, None)
        jti = c.get("jti") if isinstance(c.get("jti"), str) else None
        claims_seg = seg(c)
    signing_input = f"{header_seg}.{claims_seg}".encode()
    signature = (sign or app.identity.sign)(signing_input)
    return Forged(f"{signing_input.decode()}.{b64u_encode(signature)}", jti)


def post(server: Server, body: str | bytes, op: str = "encrypt",
         headers: Mapping[str, str] | None = None, client: httpx.Client | None = None
         ) -> httpx.Response:
    http = client or server.http()
    try:
        return http.post(f"{server.url}/v1/{op}", content=body, headers={**JOSE, **(headers or {})})
    finally:
        if client is None:
            http.close()


def assert_problem(response: httpx.Response, status: int, code: str,
                   never_echo: tuple[str | bytes, ...] = ()) -> dict[str, Any]:
    """An RFC 9457 body with the stable code, its documented status, no trace, no echo."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/problem+json")
    problem: dict[str, Any] = response.json()
    assert problem["code"] == code, problem
    assert problem["type"] == f"urn:sceau:error:{code}"
    assert problem["status"] == status == HTTP_STATUS[code]
    assert set(problem) <= {"type", "title", "status", "code", "detail", "request_id", "reason"}
    text = response.text
    for marker in ("Traceback", "File \"", "sqlalchemy", "sqlite3", "psycopg", "Exception"):
        assert marker not in text, f"{marker!r} leaked: {text[:300]}"
    for secret in never_echo:
        needle = secret.decode(errors="replace") if isinstance(secret, bytes) else secret
        if len(needle) >= 4:
            assert needle not in text
    return problem


def register_rsa_app(server: Server, name: str) -> TestApp:
    """An RS256 application on a 2048-bit key, without encryption key (fast to generate)."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwcrypto import jwk as jwcrypto_jwk

    from sceau import admin
    from sceau.core.jwk import jwk_thumbprint
    from sceau.jose.client import ClientIdentity

    key = jwcrypto_jwk.JWK.from_pyca(rsa.generate_private_key(65537, 2048))
    private: dict[str, Any] = key.export_private(as_dict=True)
    public: dict[str, Any] = key.export_public(as_dict=True)
    kid = jwk_thumbprint(public)
    for part in (private, public):
        part.update(kid=kid, alg="RS256", use="sig")
    with admin.admin_session(server.config()) as session:
        app_id = admin.add_application(session, name=name, jwk=public, enc_jwk=None, users=["*"])
    app = TestApp(app_id=app_id,
                  identity=ClientIdentity(app_id=app_id, kid=kid, alg="RS256",
                                          private_jwk=private, enc_private_jwk=None),
                  sign_public=public, enc_public=None)
    server.apps.append(app)
    return app


# --- the audit trail ---------------------------------------------------------------------------


_ENGINES: dict[str, sa.Engine] = {}


def _engine(server: Server) -> sa.Engine:
    """One read engine per database for the whole run (engines are slow to create)."""
    url = server.config().database_url
    if url not in _ENGINES:
        _ENGINES[url] = create_engines(url).read
    return _ENGINES[url]


def audit_records(server: Server, since: int = 0) -> list[dict[str, Any]]:
    with _engine(server).connect() as conn:
        lines = [line for _seq, _kind, line in iter_audit_lines(conn, since=since)]
    return [obj for obj in map(json.loads, lines) if obj["type"] == "record"]


def last_seq(server: Server) -> int:
    with _engine(server).connect() as conn:
        value = conn.exec_driver_sql("SELECT max(seq) FROM audit_records").scalar_one()
    return int(value or 0)


def count_rows(server: Server, table: str) -> int:
    with _engine(server).connect() as conn:
        return int(conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one())


class TrailWatch:
    """Records written since construction."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.before = last_seq(server)

    def new(self) -> list[dict[str, Any]]:
        return [r for r in audit_records(self.server, self.before) if r["seq"] > self.before]
