"""Limits against hostile clients (SECURITY-CASES 42-44): size, depth, batch, slow clients,
connection cap and per-application rate limiting, on a server with small limits.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from security_support import (
    SQLITE,
    TrailWatch,
    assert_problem,
    audit_records,
    claims_for,
    count_rows,
    forge,
    post,
)

from sceau.core.b64 import b64u_encode
from support import Server, TestApp, make_server

REQUEST_TIMEOUT_S = 2
MAX_CONNECTIONS = 8
RATE = 3
MAX_BODY = 128 * 1024
LIMITS = {
    "SCEAU_REQUEST_TIMEOUT_S": str(REQUEST_TIMEOUT_S),
    "SCEAU_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    "SCEAU_RATE_LIMIT_PER_APP": str(RATE),
    "SCEAU_MAX_BODY_BYTES": str(MAX_BODY),
}


@pytest.fixture(scope="module")
def lim_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = make_server(tmp_path_factory.mktemp("sec-limits"), env={**SQLITE, **LIMITS})
    yield srv
    if srv.proc is not None:
        srv.stop()


@pytest.fixture(scope="module")
def lim_app(lim_server: Server) -> TestApp:
    return lim_server.register_app("limits")


def tls_socket(server: Server) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=server.cert)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return ctx.wrap_socket(sock, server_hostname="127.0.0.1")


def exchange(server: Server, payload: bytes) -> bytes:
    """Send raw bytes over TLS and read until the server closes."""
    with tls_socket(server) as conn:
        try:
            conn.sendall(payload)
        except OSError:
            pass  # the server may close before reading everything; read what it said
        out = b""
        while True:
            try:
                data = conn.recv(65536)
            except (OSError, ssl.SSLError):
                break
            if not data:
                break
            out += data
    return out


def status_of(raw: bytes) -> int:
    assert raw.startswith(b"HTTP/1.1 "), raw[:200]
    return int(raw[9:12])


def body_of(raw: bytes) -> bytes:
    return raw.partition(b"\r\n\r\n")[2]


# --- body and head size ------------------------------------------------------------------------


def test_body_over_limit_refused_with_length(lim_server: Server) -> None:
    response = post(lim_server, b"a" * (MAX_BODY + 64 * 1024 + 1))
    assert_problem(response, 413, "payload_too_large")


def test_body_over_limit_refused_when_chunked(lim_server: Server) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b"a" * 8192

    with httpx.Client(verify=lim_server.cert) as http:
        response = http.post(f"{lim_server.url}/v1/encrypt", content=chunks(),
                             headers={"Content-Type": "application/jose"})
    assert_problem(response, 413, "payload_too_large")


@pytest.mark.parametrize("length", ["-1", "abc", "99999999999999999999999"])
def test_bad_content_length_is_a_clean_refusal(lim_server: Server, length: str) -> None:
    raw = exchange(lim_server, b"POST /v1/encrypt HTTP/1.1\r\nHost: x\r\n"
                   b"Content-Type: application/jose\r\nContent-Length: " + length.encode()
                   + b"\r\n\r\nabc")
    assert status_of(raw) in (400, 413)
    assert b"application/problem+json" in raw and b"Traceback" not in raw


HEADS = {
    "one 9 KB header": b"X-Big: " + b"a" * 9000 + b"\r\n",
    "200 small headers": b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 40) for i in range(200)),
    "one 1 MB header": b"X-Huge: " + b"c" * (1024 * 1024) + b"\r\n",
    "9 KB URL": b"",
}


@pytest.mark.parametrize("name", list(HEADS))
def test_head_over_8k_refused(lim_server: Server, name: str) -> None:
    path = b"/healthz" + (b"?q=" + b"u" * 9000 if name == "9 KB URL" else b"")
    raw = exchange(lim_server, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + HEADS[name]
                   + b"\r\n")
    assert status_of(raw) == 413
    assert b'"code":"payload_too_large"' in body_of(raw)
    assert b"application/problem+json" in raw


def test_head_under_8k_served(lim_server: Server) -> None:
    raw = exchange(lim_server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                   b"X-Big: " + b"a" * 7000 + b"\r\n\r\n")
    assert status_of(raw) == 200


def test_malformed_http_is_a_problem(lim_server: Server) -> None:
    raw = exchange(lim_server, b"\x16\x03\x01 nonsense\r\n\r\n")
    assert status_of(raw) == 400
    assert b'"code":"invalid_request"' in body_of(raw)


# --- depth, numbers, batch ----------------------------------------------------------------------

DEEP = 10_000


def _deep_params(app: TestApp, aud: str, deep: str) -> bytes:
    """Good claims whose params hold ``deep`` (serialized by hand: json.dumps would recurse)."""
    claims = claims_for(app, aud, overrides={"params": "__DEEP__"})
    return json.dumps(claims, separators=(",", ":")).replace('"__DEEP__"', deep).encode()


@pytest.mark.parametrize("where", ["params-arrays", "params-objects", "header", "bare-body"])
def test_json_10000_deep_is_refused_not_a_crash(lim_server: Server, lim_app: TestApp,
                                                where: str) -> None:
    aud = lim_server.url
    if where == "params-arrays":
        deep = '{"x":' + "[" * DEEP + "1" + "]" * DEEP + "}"
        token = forge(lim_app, aud, claims=_deep_params(lim_app, aud, deep)).token
    elif where == "params-objects":
        deep = '{"":' * DEEP + "1" + "}" * DEEP  # 67 KB in base64url: under the cap
        token = forge(lim_app, aud, claims=_deep_params(lim_app, aud, deep)).token
    elif where == "header":
        token = forge(lim_app, aud, header=("[" * DEEP + "]" * DEEP).encode()).token
    else:
        token = "[" * DEEP + "]" * DEEP
    watch = TrailWatch(lim_server)
    response = post(lim_server, token)
    assert_problem(response, 401, "invalid_token")
    assert all(r["outcome"] == "DENIED" for r in watch.new())
    assert "RecursionError" not in lim_server.log()


def test_batch_over_limit_refused_whole(lim_server: Server, lim_app: TestApp) -> None:
    items = [{"plaintext": b64u_encode(b"x")}] * 1001
    keys = count_rows(lim_server, "keys")
    time.sleep(1.0)  # a full rate-limit bucket for this call
    forged = forge(lim_app, lim_server.url, claims={"params": {"items": items}})
    response = post(lim_server, forged.token)
    problem = assert_problem(response, 400, "invalid_request")
    assert "1000" in problem["detail"] or "items" in problem["detail"]
    assert count_rows(lim_server, "keys") == keys


# --- slow clients ---------------------------------------------------------------------------------


def _drip(server: Server, head: bytes, body: bytes, results: list[float]) -> None:
    """Send ``head`` at once when ``body`` is set, else byte by byte; record when cut."""
    started = time.monotonic()
    conn = tls_socket(server)
    conn.settimeout(REQUEST_TIMEOUT_S * 4)
    slow = body if body else head
    try:
        if body:
            conn.sendall(head)
        for byte in slow:
            conn.sendall(bytes([byte]))
            time.sleep(0.25)
            if time.monotonic() - started > REQUEST_TIMEOUT_S * 4:
                break
        while conn.recv(1024):
            pass
    except (OSError, ssl.SSLError):
        pass
    finally:
        results.append(time.monotonic() - started)
        conn.close()


def test_slowloris_cut_after_the_timeout_while_others_are_served(lim_server: Server) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"s" * 100 + b"\r\n\r\n"
    cut: list[float] = []
    slow = [threading.Thread(target=_drip, args=(lim_server, head, b"", cut)) for _ in range(4)]
    for t in slow:
        t.start()
    served = []
    with httpx.Client(verify=lim_server.cert) as http:
        deadline = time.monotonic() + REQUEST_TIMEOUT_S
        while time.monotonic() < deadline:
            started = time.monotonic()
            assert http.get(f"{lim_server.url}/healthz").status_code == 200
            served.append(time.monotonic() - started)
            time.sleep(0.1)
    for t in slow:
        t.join(REQUEST_TIMEOUT_S * 5)
    assert len(cut) == 4
    # Cut at the head timeout (2 s here), long before the 100+ bytes could drip in.
    assert all(REQUEST_TIMEOUT_S - 0.5 < seconds < REQUEST_TIMEOUT_S + 3 for seconds in cut), cut
    assert len(served) >= 5 and max(served) < 1.0, served


def test_slow_body_cut_after_the_timeout(lim_server: Server) -> None:
    head = (b"POST /v1/encrypt HTTP/1.1\r\nHost: x\r\nContent-Type: application/jose\r\n"
            b"Content-Length: 400\r\n\r\n")
    cut: list[float] = []
    _drip(lim_server, head, b"e" * 400, cut)
    assert REQUEST_TIMEOUT_S - 0.5 < cut[0] < REQUEST_TIMEOUT_S + 3, cut


# --- connection cap ----------------------------------------------------------------------------


def test_connection_cap_answers_429_then_recovers(lim_server: Server) -> None:
    idle = [tls_socket(lim_server) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.2)
        raw = exchange(lim_server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(raw) == 429, raw[:300]
        assert b"retry-after: 1" in raw.lower()
        assert b'"code":"rate_limited"' in body_of(raw)
    finally:
        for conn in idle:
            conn.close()
    time.sleep(0.3)
    raw = exchange(lim_server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_of(raw) == 200


# --- per-application rate limit ------------------------------------------------------------------


def test_rate_limit_429_retry_after_audited_and_per_application(lim_server: Server) -> None:
    flooder = lim_server.register_app("rate-flooder")
    bystander = lim_server.register_app("rate-bystander")
    statuses: list[int] = []
    refused = None
    started = time.monotonic()
    with httpx.Client(verify=lim_server.cert) as http:
        for _ in range(12):
            forged = forge(flooder, lim_server.url)
            response = post(lim_server, forged.token, client=http)
            statuses.append(response.status_code)
            if response.status_code == 429 and refused is None:
                refused = (forged, response)
        elapsed = time.monotonic() - started
        assert statuses[:RATE] == [200] * RATE
        assert refused is not None, statuses
        assert statuses.count(200) <= RATE + RATE * elapsed + 1
        forged, response = refused
        assert_problem(response, 429, "rate_limited")
        retry_after = int(response.headers["retry-after"])
        assert 1 <= retry_after <= 2
        # Another application is not slowed by the flood.
        assert post(lim_server, forge(bystander, lim_server.url).token,
                    client=http).status_code == 200
        time.sleep(retry_after + 0.1)
        # The refused token's jti was not consumed: the client may retry it as is.
        assert post(lim_server, forged.token, client=http).status_code == 200
    records = [r for r in audit_records(lim_server) if r["req"] == forged.jti]
    assert [(r["outcome"], r["reason"]) for r in records] == [
        ("DENIED", "rate_limited"), ("GRANTED", None)]
    assert records[0]["app"] == flooder.app_id
