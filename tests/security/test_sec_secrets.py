"""Secrets hygiene (SECURITY-CASES 27): canaries never appear in what the service writes.

One full flow on a fresh server uses canary values — plaintexts, the data keys the service
hands out, the request tokens, the application's private keys, the console admin's
one-time password and a wrong password — then searches everything the service wrote (its
log, every file of its data dir including the database and its WAL, the audit lines,
``/metrics``, every error body) for each canary, raw and as base64url, base64 and hex.
File modes of the data dir are checked on the same server.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from security_support import SQLITE, audit_records, forge, post

from sceau.core.b64 import b64u_decode, b64u_encode
from sceau.errors import SceauError
from support import Server, TestApp, free_port, run_cli


def encodings(secret: bytes) -> set[bytes]:
    """Every spelling of ``secret`` a careless log line could carry."""
    forms = {
        secret,
        b64u_encode(secret).encode(),
        base64.b64encode(secret),
        base64.b64encode(secret).rstrip(b"="),
        secret.hex().encode(),
        secret.hex().upper().encode(),
    }
    return {form for form in forms if len(form) >= 12}


class Canaries:
    """Named secrets, all searched in every haystack."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}

    def add(self, name: str, value: bytes) -> bytes:
        assert len(value) >= 12, name
        self.values[name] = value
        return value

    def find_in(self, haystack: bytes) -> list[str]:
        return sorted(name for name, value in self.values.items()
                      if any(form in haystack for form in encodings(value)))


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """A server initialized here, so the one-time admin password is known to the test."""
    base = tmp_path_factory.mktemp("sec-secrets")
    port = free_port()
    env = {**SQLITE, "SCEAU_PORT": str(port), "SCEAU_CHECKPOINT_INTERVAL_S": "2"}
    init = run_cli("init", "--data-dir", str(base / "data"), env=env)
    found = re.search(rb"one-time password[^:]*: (\S+)", init.stdout)
    assert found is not None, init.stdout
    server = Server(data_dir=base / "data", port=port, env=env, log_path=base / "server.log")
    server.start()
    yield server, found.group(1).decode()
    if server.proc is not None:
        server.stop()


def _console_login(server: Server, username: str, password: str) -> int:
    with httpx.Client(verify=server.cert, base_url=server.url, follow_redirects=False) as http:
        page = http.get("/console/login")
        token = re.search(r'name="login_token" value="([^"]+)"', page.text)
        if token is None:
            return page.status_code
        return http.post("/console/login", data={"login_token": token.group(1),
                                                 "username": username, "password": password,
                                                 "code": ""}).status_code


def test_canaries_never_written(fresh: tuple[Server, str]) -> None:
    server, admin_password = fresh
    canaries = Canaries()
    app: TestApp = server.register_app("canary-app")
    for name, jwk in (("app signing key d", app.identity.private_jwk),
                      ("app encryption key d", app.identity.enc_private_jwk or {})):
        canaries.add(name, b64u_decode(jwk["d"]))
    canaries.add("admin one-time password", admin_password.encode())
    bodies: list[bytes] = []

    with server.client(app, "alice@example.com") as client:
        plaintext = canaries.add("plaintext", b"CANARY-PLAINTEXT-" + secrets.token_hex(16).encode())
        _key_id, ciphertext = client.encrypt(plaintext, aad=b"context")
        assert client.decrypt(ciphertext, aad=b"context") == plaintext
        batch = [canaries.add(f"batch plaintext {i}", secrets.token_bytes(24)) for i in range(3)]
        sealed = client.encrypt_batch([(p, None) for p in batch])
        assert sealed
        data_key = client.generate_data_key()
        canaries.add("data key (generate)", bytes(data_key.key))
        assert client.get_data_key(data_key.key_id) == bytes(data_key.key)
        assert client.get_data_key(token=data_key.token) == bytes(data_key.key)
        with pytest.raises(SceauError):
            client.decrypt(ciphertext, aad=b"wrong context")

    # Raw calls whose tokens, and whose refusals, must leave no trace.
    good = forge(app, server.url, claims={"params": {"plaintext": b64u_encode(plaintext)}})
    canaries.add("request token signature", b64u_decode(good.token.rsplit(".", 1)[1]))
    assert post(server, good.token).status_code == 200
    hostile = [
        # a bad signature over a canary plaintext
        ("encrypt", forge(app, server.url, claims={"params": {"plaintext": b64u_encode(plaintext)}},
                          sign=lambda _d: secrets.token_bytes(64)).token),
        # the canary under an unknown member, and as a value of the wrong shape
        ("encrypt", forge(app, server.url, claims={"params": {
            "plaintext": "eA", "secret": plaintext.decode()}}).token),
        ("encrypt", forge(app, server.url, claims={"params": {
            "plaintext": plaintext.decode() + "*"}}).token),
        ("decrypt", forge(app, server.url, op="decrypt", claims={"params": {
            "ciphertext": b64u_encode(b"SCU\x01\x01" + plaintext)}}).token),
        ("get-data-key", forge(app, server.url, op="get-data-key", claims={"params": {
            "token": b64u_encode(plaintext)}}).token),
    ]
    for i, (op, token) in enumerate(hostile):
        canaries.add(f"hostile token {i}", token.encode())
        response = post(server, token, op=op)
        assert response.status_code >= 400, response.text
        bodies.append(response.content)

    # Console: the one-time password, and a wrong one.
    wrong = canaries.add("wrong console password", b"CANARY-WRONG-" + secrets.token_hex(8).encode())
    _console_login(server, "admin", admin_password)
    _console_login(server, "admin", wrong.decode())

    metrics = httpx.get(f"{server.url}/metrics", verify=server.cert).content
    audit = "\n".join(map(str, audit_records(server))).encode()
    server.stop()

    haystacks: dict[str, bytes] = {
        "server log": server.log_path.read_bytes(),
        "/metrics": metrics,
        "audit records": audit,
        "error bodies": b"\n".join(bodies),
    }
    for path in sorted(server.data_dir.rglob("*")):
        if path.is_file():
            haystacks[str(path.relative_to(server.data_dir))] = path.read_bytes()
    assert "sceau.db" in haystacks and len(haystacks["server log"]) > 0
    leaks = {where: found for where, data in haystacks.items() if (found := canaries.find_in(data))}
    assert leaks == {}, leaks
    # Positive controls: the search does see what is meant to be stored — the key ids in the
    # database file and in the audit records.
    controls = Canaries()
    controls.add("key id", b64u_decode(data_key.key_id))
    db = b"".join(v for k, v in haystacks.items() if k.startswith("sceau.db"))
    assert controls.find_in(db) == ["key id"] and controls.find_in(audit) == ["key id"]
    # The trail did record the calls (the search above looked at real records).
    assert sum(1 for r in audit_records(server) if r["app"] == app.app_id) >= 8


def test_data_dir_and_key_file_modes(fresh: tuple[Server, str]) -> None:
    server, _ = fresh
    data = server.data_dir
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    private = [p for p in data.rglob("*") if p.is_file()
               and (p.parent.name == "keystore" or p.name == "key.pem"
                    or p.name.startswith("sceau.db"))]
    assert any(p.name == "key.pem" for p in private) and any(
        p.parent.name == "keystore" for p in private)
    modes = {str(p.relative_to(data)): oct(stat.S_IMODE(p.stat().st_mode)) for p in private}
    assert all(mode == oct(0o600) for mode in modes.values()), modes
    for directory in [data, *(p for p in data.rglob("*") if p.is_dir())]:
        assert stat.S_IMODE(directory.stat().st_mode) & 0o077 == 0, directory
    assert os.stat(data).st_uid == os.getuid()


def test_canary_search_finds_what_it_should() -> None:
    """The detector itself: every encoding of a canary is found, unrelated bytes are not."""
    canaries = Canaries()
    secret = canaries.add("k", secrets.token_bytes(32))
    for form in encodings(secret):
        assert canaries.find_in(b"prefix " + form + b" suffix") == ["k"]
    assert canaries.find_in(secrets.token_bytes(4096)) == []
    assert Path(__file__).name.startswith("test_sec_")
