"""Remaining SECURITY-CASES seen from the network: envelope tampering over the API (23),
duplicate application keys (26), a client clock stepped by an hour (34), and a console
session that tries to reach decryption (21).
"""

from __future__ import annotations

import re
import time

import httpx
import pytest
from security_support import TrailWatch, assert_problem, forge, post

from sceau import admin
from sceau.core.b64 import b64u_decode, b64u_encode
from sceau.errors import InvalidRequest
from support import Server, TestApp

# Regions of a suite-1 envelope (SPEC §7) and the code a flip there must give (SPEC §10).
REGIONS = {
    "magic": (0, 400, "invalid_request"),
    "version": (3, 400, "invalid_request"),
    "suite": (4, 400, "invalid_request"),
    "key id": (10, 404, "not_found"),
    "nonce": (25, 409, "integrity_failure"),
    "ciphertext": (35, 409, "integrity_failure"),
    "tag": (-1, 409, "integrity_failure"),
}


@pytest.fixture(scope="module")
def sealed(sec_server: Server, sec_app: TestApp) -> tuple[str, bytes]:
    with sec_server.client(sec_app, "alice@example.com") as client:
        return client.encrypt(b"tamper me, if you can", aad=b"item-1")


def _decrypt(server: Server, app: TestApp, envelope: bytes, aad: bytes = b"item-1"
             ) -> httpx.Response:
    token = forge(app, server.url, op="decrypt", claims={"params": {
        "ciphertext": b64u_encode(envelope), "aad": b64u_encode(aad)}}).token
    return post(server, token, op="decrypt")


@pytest.mark.parametrize("region", list(REGIONS))
def test_envelope_flip_over_the_api(sec_server: Server, sec_app: TestApp,
                                    sealed: tuple[str, bytes], region: str) -> None:
    offset, status, code = REGIONS[region]
    envelope = bytearray(sealed[1])
    envelope[offset] ^= 0x01
    response = _decrypt(sec_server, sec_app, bytes(envelope))
    problem = assert_problem(response, status, code, never_echo=("tamper me",))
    assert "plaintext" not in problem


@pytest.mark.parametrize("edit", ["truncated", "extended", "header only", "empty", "suite 2"])
def test_envelope_cut_or_extended_over_the_api(sec_server: Server, sec_app: TestApp,
                                               sealed: tuple[str, bytes], edit: str) -> None:
    envelope = sealed[1]
    changed = {"truncated": envelope[:-1], "extended": envelope + b"\x00",
               "header only": envelope[:33], "empty": b"",
               "suite 2": envelope[:4] + b"\x02" + envelope[5:]}[edit]
    response = _decrypt(sec_server, sec_app, changed)
    assert response.status_code in (400, 409), response.text
    assert "tamper me" not in response.text


def test_envelope_with_another_items_aad(sec_server: Server, sec_app: TestApp,
                                         sealed: tuple[str, bytes]) -> None:
    assert _decrypt(sec_server, sec_app, sealed[1]).status_code == 200  # the control
    response = _decrypt(sec_server, sec_app, sealed[1], aad=b"item-2")
    assert_problem(response, 409, "integrity_failure", never_echo=("tamper me",))


def test_app_key_registered_twice_is_refused(sec_server: Server, sec_app: TestApp) -> None:
    """SECURITY-CASES 26: a key already registered to another application."""
    with admin.admin_session(sec_server.config()) as session, \
            pytest.raises(InvalidRequest, match="already registered"):
        admin.add_application(session, name="copycat", jwk=sec_app.sign_public, enc_jwk=None,
                              users=["*"])


@pytest.mark.parametrize(("shift", "code"), [(-3600, "token_expired"), (3600, "invalid_token")])
def test_client_clock_an_hour_off(sec_server: Server, sec_app: TestApp, shift: int,
                                  code: str) -> None:
    """SECURITY-CASES 34 from the client's side: no token an hour off is accepted."""
    now = int(time.time()) + shift
    forged = forge(sec_app, sec_server.url, claims={"iat": now, "exp": now + 60})
    watch = TrailWatch(sec_server)
    assert_problem(post(sec_server, forged.token), 401, code)
    assert [r["req"] for r in watch.new()] == [forged.jti]


def test_console_session_reaches_no_decryption(sec_server: Server, sec_app: TestApp,
                                               sealed: tuple[str, bytes]) -> None:
    """SECURITY-CASES 21: a console login is no API credential, and the console has no
    decrypt path; the API needs an application token whatever cookie comes with it."""
    with httpx.Client(verify=sec_server.cert, base_url=sec_server.url,
                      follow_redirects=False) as http:
        page = http.get("/console/login")
        token = re.search(r'name="login_token" value="([^"]+)"', page.text)
        if token is not None:
            http.post("/console/login", data={"login_token": token.group(1),
                                              "username": "admin", "password": "wrong",
                                              "code": ""})
        key_id = sealed[0]
        for path in (f"/console/keys/{key_id}/decrypt", "/console/decrypt"):
            answer = http.post(path, data={"ciphertext": b64u_encode(sealed[1])})
            assert answer.status_code in (403, 404, 405), (path, answer.status_code)
            assert "tamper me" not in answer.text
        api = http.post("/v1/decrypt", content=b64u_encode(sealed[1]),
                        headers={"Content-Type": "application/jose"})
        assert api.status_code == 401 and "tamper me" not in api.text
    assert b64u_decode(key_id)  # a real key id was tried
