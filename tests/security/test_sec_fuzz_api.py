"""API fuzzing on a live server: no 5xx, only documented codes, RFC 9457 bodies.

Two layers. Schemathesis drives every operation of ``/openapi.json`` (the bodies it makes
are strings in ``application/jose``: this exercises the transport, content types and the
token guard, and checks answers against the published schema). Since the interesting input
sits inside a signed token, hypothesis then generates ``params`` objects for every
operation — the models' own member names and values of every JSON shape, real key ids
included — signs each with a registered key and posts it: only the documented statuses
may come back.
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from security_support import forge

from sceau.core.b64 import b64u_encode
from sceau.errors import HTTP_STATUS
from sceau.service.params import PARAMS
from sceau.vocab import Op
from support import Server, TestApp

PROBLEM = "application/problem+json"


def _jose_body(_ctx: Any, value: Any) -> bytes:
    """Bodies of application/jose are text (a compact token); send what was generated."""
    text = value if isinstance(value, str) else str(value)
    return text.encode("utf-8", "surrogatepass")


@pytest.fixture(scope="module")
def schema(sec_server: Server) -> Any:
    # A test dependency to add to pyproject's [test] extra; until then, a visible skip.
    schemathesis = pytest.importorskip("schemathesis")
    schemathesis.serializer("application/jose")(_jose_body)
    document = httpx.get(f"{sec_server.url}/openapi.json", verify=sec_server.cert).json()
    return schemathesis.openapi.from_dict(document)


def test_schemathesis_every_operation(sec_server: Server, schema: Any) -> None:
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= len(Op)
    statuses: dict[int, int] = {}

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=st.one_of([op.as_strategy() for op in operations]))
    def run(case: Any) -> None:
        response = case.call(base_url=sec_server.url, verify=sec_server.cert, timeout=30)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, (case.path, response.text[:300])
        # Schema conformance: documented status, content type and problem body.
        case.validate_response(response)
        if case.path.startswith("/v1/") and response.status_code >= 400:
            content_type = response.headers.get("content-type") or [""]
            assert content_type[0].startswith(PROBLEM), content_type

    run()
    assert sum(statuses.values()) >= 50, statuses


# --- signed params ---------------------------------------------------------------------------

ALLOWED = {200, 400, 403, 404, 409, 413}


@pytest.fixture(scope="module")
def key_ids(sec_server: Server, sec_app: TestApp) -> list[str]:
    """A few real keys so that generated key_ids sometimes name one."""
    ids = []
    with sec_server.client(sec_app, "alice@example.com") as client:
        for i in range(3):
            key_id, _ = client.encrypt(b"fuzz %d" % i)
            ids.append(key_id)
    return ids


def json_values(key_ids: list[str]) -> st.SearchStrategy[Any]:
    b64 = st.binary(max_size=64).map(b64u_encode)
    scalars = st.one_of(
        st.none(), st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=40), b64,
        st.sampled_from(key_ids + ["", "*", "alice@example.com", "*@example.com",
                                   "bob@other.example", "2026-01-01T00:00:00Z",
                                   "9999-12-31T23:59:59Z", "0000-01-01T00:00:00Z",
                                   "decrypt", "manage", "active", "destroyed", "owner",
                                   "10.0.0.0/8", "::/0", "AAAAAAAAAAAAAAAAAAAAAA"]),
        st.sampled_from([0, -1, 1, 2**31, 2**53, 2**63, 36500, 36501, 1e308, -0.0]),
    )
    return st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(string.ascii_lowercase + "_", max_size=16), inner, max_size=4)),
        max_leaves=12)


def params_for(op: Op, key_ids: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    members = list(PARAMS[op].model_fields)
    names = st.sampled_from(members) | st.text(string.ascii_lowercase + "_", max_size=12)
    return st.dictionaries(names, json_values(key_ids), max_size=6)


@pytest.fixture(scope="module")
def http(sec_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(verify=sec_server.cert, timeout=30) as client:
        yield client


def test_signed_params_fuzz(sec_server: Server, sec_app: TestApp, key_ids: list[str],
                            http: httpx.Client) -> None:
    seen: dict[tuple[str, int], int] = {}
    ops = st.sampled_from(list(Op))

    @settings(max_examples=200, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data(), op=ops)
    def run(data: st.DataObject, op: Op) -> None:
        params = data.draw(params_for(op, key_ids), label="params")
        token = forge(sec_app, sec_server.url, op=op.value, claims={"params": params}).token
        response = http.post(f"{sec_server.url}/v1/{op.value}", content=token,
                             headers={"Content-Type": "application/jose"})
        seen[(op.value, response.status_code)] = seen.get((op.value, response.status_code), 0) + 1
        assert response.status_code in ALLOWED, (op, params, response.text[:400])
        if response.status_code == 200:
            assert response.headers["content-type"].startswith("application/jose")
            return
        assert response.headers["content-type"].startswith(PROBLEM)
        problem = response.json()
        assert HTTP_STATUS[problem["code"]] == response.status_code == problem["status"]
        assert problem["detail"] and "Traceback" not in response.text

    run()
    statuses = {status for _op, status in seen}
    assert 400 in statuses and len({op for op, _status in seen}) >= len(Op) // 2, seen
    assert "Traceback" not in sec_server.log()
