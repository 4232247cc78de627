"""Anonymous endpoints and error bodies show no paths or internals; the log has the details.

The server's data dir sits under a directory named by a canary, so every file path the
service could quote contains it. The keystore file is taken away while the server runs
(then put back), and a start-up self-test is made to fail: ``/readyz`` must answer with its
status and a problem class only, ``/healthz`` and ``/metrics`` must not quote the canary,
an API call's 503 must carry the title and not the detail, and the log must carry the
detail for the operator.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from security_support import SQLITE, assert_problem, forge, post

from sceau.config import env_name
from support import Server, TestApp, make_server

FAIL_ENV = env_name("keystore.selftest_fail")
CANARY = f"canary{os.urandom(6).hex()}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("readiness") / CANARY
    base.mkdir()
    srv = make_server(base, env=SQLITE)
    yield srv
    if srv.proc is not None:
        srv.stop()


@pytest.fixture(scope="module")
def app(server: Server) -> TestApp:
    return server.register_app("readiness")


def get(server: Server, path: str) -> httpx.Response:
    return httpx.get(f"{server.url}{path}", verify=server.cert, timeout=10)


def eventually(check: Callable[[], Any], what: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def log_lines(server: Server, msg: str) -> list[dict[str, Any]]:
    out = []
    for line in server.log().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("msg") == msg:
            out.append(entry)
    return out


def assert_no_internals(text: str) -> None:
    for leak in (CANARY, "/", "keystore file", "self-test", "sqlite", "Error", "Traceback"):
        assert leak not in text, f"{leak!r} in {text[:300]}"


def test_ready_answer_is_the_status_only(server: Server) -> None:
    assert get(server, "/readyz").json() == {"status": "ready"}
    assert get(server, "/healthz").json() == {"status": "ok"}
    assert CANARY not in get(server, "/metrics").text


def test_keystore_gone_readyz_names_the_class_and_the_log_the_path(
    server: Server, app: TestApp
) -> None:
    keystore = server.data_dir / "keystore" / "keystore.json"
    away = keystore.with_name("keystore.json.away")
    os.rename(keystore, away)
    try:
        ready = eventually(lambda: (r := get(server, "/readyz")).status_code == 503 and r,
                           "/readyz to fail")
        assert ready.json() == {"status": "unavailable", "problems": ["keystore"]}
        assert_no_internals(ready.text)
        # A probe every few seconds logs changes only, not every unready answer.
        logged = len(log_lines(server, "not ready"))
        for _ in range(5):
            assert get(server, "/readyz").status_code == 503
        assert len(log_lines(server, "not ready")) == logged == 1
        health = get(server, "/healthz")
        assert health.json() == {"status": "ok"}
        metrics = get(server, "/metrics").text
        assert 'sceau_not_ready{problem="keystore"} 1.0' in metrics
        assert "sceau_ready 0.0" in metrics and CANARY not in metrics
        # An authenticated call fails closed with the title, not the keystore's detail.
        refused = post(server, forge(app, server.url).token)
        problem = assert_problem(refused, 503, "keystore_unavailable")
        assert problem["detail"] == "Keystore unavailable"
        assert_no_internals(refused.text)
        # The operator reads the detail, path included, in the log.
        not_ready = log_lines(server, "not ready")
        assert not_ready and CANARY in not_ready[-1]["problems"]["keystore"]
        failed = [e for e in log_lines(server, "call failed")
                  if e.get("request_id") == problem["request_id"]]
        assert failed and CANARY in failed[0]["detail"]
    finally:
        os.rename(away, keystore)
    eventually(lambda: get(server, "/readyz").status_code == 200, "/readyz to recover")
    assert get(server, "/readyz").json() == {"status": "ready"}
    assert log_lines(server, "ready")
    assert 'sceau_not_ready{problem="keystore"} 0.0' in get(server, "/metrics").text


def test_failed_self_test_is_a_class_without_its_name(server: Server, app: TestApp) -> None:
    server.stop()
    server.env[FAIL_ENV] = "hmac_sha256_keystore"
    try:
        server.start(wait=False)
        server.wait_ready(expect_ready=False)
        ready = get(server, "/readyz")
        assert ready.status_code == 503
        assert ready.json() == {"status": "unavailable", "problems": ["selftest"]}
        assert "hmac_sha256" not in ready.text
        assert_no_internals(ready.text)
        refused = post(server, forge(app, server.url).token)
        assert_problem(refused, 503, "keystore_unavailable")
        assert "hmac_sha256" not in refused.text and "readyz" not in refused.text
        assert "hmac_sha256_keystore" in json.dumps(log_lines(server, "not ready")[-1])
    finally:
        server.stop()
        del server.env[FAIL_ENV]
        server.start()


def test_openapi_describes_readyz_without_details(server: Server) -> None:
    doc = get(server, "/openapi.json").json()
    summary = doc["paths"]["/readyz"]["get"]["summary"]
    assert "problem classes" in summary
    assert CANARY not in json.dumps(doc)
