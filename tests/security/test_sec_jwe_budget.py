"""No private-key operation before the caller is bound, beyond a per-address budget
(SECURITY-CASES 49), and the EC key discovery now prefers, end to end.

A JWE is decrypted before its inner JWS can name the caller. The service charges each
client address one unit of ``limits.jwe_per_ip_per_s`` *before* that operation and refunds
it once the inner signature verified. Proof that the refusal comes first: ``/metrics``
counts every private-key operation (``sceau_jwe_private_key_ops_total``, incremented by the
verifier just before it runs), and a refused request leaves that count unchanged.

Client addresses: the servers listen on 127.0.0.1; each test sends from its own loopback
address (127.0.0.0/8 is all local on Linux), so their budgets are independent.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sceau.client import Client
from sceau.core.b64 import b64u_decode, b64u_encode
from sceau.jose.client import sign_request, wrap_for_service
from sceau.jose.request import JWE_REFUSED
from sceau.service.limits import JweBudget, JweBudgetExhausted, address_key
from support import BACKENDS, Server, TestApp, backend_server

USER = "alice@example.com"
JOSE = {"Content-Type": "application/jose"}
OPS = "sceau_jwe_private_key_ops_total"
REFUSALS = "sceau_jwe_budget_refusals_total"
RSA, ECDH = "RSA-OAEP-256", "ECDH-ES+A256KW"
#: limits.jwe_per_ip_per_s on the budget server: 1 per second, bursts of 10.
RATE, BURST = 1, 10


def metrics(server: Server) -> dict[str, float]:
    """The JWE counters from /metrics: ops by alg, and the budget refusals."""
    text = httpx.get(f"{server.url}/metrics", verify=server.cert, timeout=10).text
    out = {RSA: 0.0, ECDH: 0.0, "refusals": 0.0}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == REFUSALS:
            out["refusals"] = float(value)
        for alg in (RSA, ECDH):
            if name == f'{OPS}{{alg="{alg}"}}':
                out[alg] = float(value)
    return out


def ops(counts: dict[str, float]) -> float:
    return counts[RSA] + counts[ECDH]


def service_enc_keys(server: Server) -> dict[str, dict[str, Any]]:
    """The service's published JWE keys by alg."""
    jwks = httpx.get(f"{server.url}/.well-known/jwks.json", verify=server.cert).json()
    return {k["alg"]: k for k in jwks["keys"] if k.get("use") == "enc"}


def valid_jws(server: Server, app: TestApp, op: str = "encrypt") -> str:
    return sign_request(app.identity, sub=USER, aud=server.url, op=op,
                        params={"plaintext": b64u_encode(b"budget")}, now=int(time.time()))


def random_key_jwe(server: Server, app: TestApp, enc_key: dict[str, Any]) -> str:
    """A well-formed JWE to ``enc_key`` whose encrypted key is random bytes: only the
    private-key operation can tell it from a real one."""
    parts = wrap_for_service(valid_jws(server, app), enc_key).split(".")
    parts[1] = b64u_encode(os.urandom(len(b64u_decode(parts[1]))))
    return ".".join(parts)


class From:
    """HTTPS posts to one server from one local address."""

    def __init__(self, server: Server, address: str) -> None:
        transport = httpx.HTTPTransport(verify=server.cert, local_address=address)
        self.http = httpx.Client(transport=transport, timeout=30)
        self.url = server.url

    def post(self, body: str, op: str = "encrypt") -> httpx.Response:
        return self.http.post(f"{self.url}/v1/{op}", content=body, headers=JOSE)

    def close(self) -> None:
        self.http.close()


@pytest.fixture(scope="module", params=BACKENDS)
def budget_server(request: pytest.FixtureRequest,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with a small JWE budget, on every backend (attack 5 of issue 14)."""
    backend = str(request.param)
    with backend_server(request, tmp_path_factory.mktemp(f"jwe-budget-{backend}"), backend,
                        env={"SCEAU_JWE_PER_IP_PER_S": str(RATE)}) as server:
        yield server


@pytest.fixture(scope="module")
def budget_app(budget_server: Server) -> TestApp:
    return budget_server.register_app("budget")


def _exhaust(server: Server, app: TestApp, sender: From) -> None:
    keys = service_enc_keys(server)
    for i in range(3 * BURST):
        if sender.post(random_key_jwe(server, app, keys[(RSA, ECDH)[i % 2]])).status_code == 429:
            return
    raise AssertionError("the budget never ran out")


def test_over_budget_refused_before_the_private_key_operation(
        budget_server: Server, budget_app: TestApp) -> None:
    keys = service_enc_keys(budget_server)
    sender = From(budget_server, "127.0.0.11")
    answered = {401: 0, 429: 0}
    started = time.monotonic()
    try:
        for i in range(2 * BURST + 5):
            before = metrics(budget_server)
            response = sender.post(random_key_jwe(budget_server, budget_app,
                                                  keys[(RSA, ECDH)[i % 2]]))
            after = metrics(budget_server)
            problem = response.json()
            if response.status_code == 401:
                # Within the budget: the private-key operation ran, and failed.
                assert problem["code"] == "invalid_token" and problem["detail"] == JWE_REFUSED
                assert ops(after) == ops(before) + 1
                assert after["refusals"] == before["refusals"]
            else:
                # Over it: refused with no private-key operation at all.
                assert response.status_code == 429, response.text
                assert problem["code"] == "rate_limited"
                assert int(response.headers["retry-after"]) >= 1
                assert ops(after) == ops(before)
                assert after["refusals"] == before["refusals"] + 1
            answered[response.status_code] += 1
    finally:
        sender.close()
    elapsed = time.monotonic() - started
    # The burst, plus what refilled while the test ran, and no more.
    assert BURST <= answered[401] <= BURST + RATE * elapsed + 1
    assert answered[429] >= 5


def test_the_budget_is_per_address(budget_server: Server, budget_app: TestApp) -> None:
    keys = service_enc_keys(budget_server)
    flooder, other = From(budget_server, "127.0.0.21"), From(budget_server, "127.0.0.22")
    try:
        _exhaust(budget_server, budget_app, flooder)
        before = metrics(budget_server)
        assert other.post(random_key_jwe(budget_server, budget_app, keys[ECDH])).status_code == 401
        assert ops(metrics(budget_server)) == ops(before) + 1
        assert flooder.post(random_key_jwe(budget_server, budget_app,
                                           keys[ECDH])).status_code == 429
    finally:
        flooder.close()
        other.close()


def test_an_exhausted_address_is_still_served_without_jwe(
        budget_server: Server, budget_app: TestApp) -> None:
    keys = service_enc_keys(budget_server)
    flooder = From(budget_server, "127.0.0.41")
    try:
        _exhaust(budget_server, budget_app, flooder)
        assert flooder.post(valid_jws(budget_server, budget_app)).status_code == 200
        # A valid JWE from that address cannot be told from the flood before it is
        # decrypted: it gets the 429 too (docs/decisions.md).
        jwe = wrap_for_service(valid_jws(budget_server, budget_app), keys[ECDH])
        assert flooder.post(jwe).status_code == 429
    finally:
        flooder.close()


def test_bound_callers_never_spend_the_budget(budget_server: Server,
                                              budget_app: TestApp) -> None:
    """Valid JWE callers, and signed ones refused later, are refunded: twice the burst of
    them in a row is served, and the whole burst is still there afterwards."""
    keys = service_enc_keys(budget_server)
    sender = From(budget_server, "127.0.0.31")
    try:
        for i in range(2 * BURST):
            key = keys[(RSA, ECDH)[i % 2]]
            response = sender.post(wrap_for_service(valid_jws(budget_server, budget_app), key))
            assert response.status_code == 200, response.text
            # Signed by the application, refused after that (op is not the URL's): bound.
            wrong_op = wrap_for_service(valid_jws(budget_server, budget_app, "decrypt"), key)
            refused = sender.post(wrong_op)
            assert refused.status_code == 401 and refused.json()["detail"] != JWE_REFUSED
        statuses = [sender.post(random_key_jwe(budget_server, budget_app, keys[ECDH])).status_code
                    for _ in range(BURST)]
    finally:
        sender.close()
    assert statuses == [401] * BURST


def test_jwe_the_guard_refuses_spends_no_budget(budget_server: Server,
                                               budget_app: TestApp) -> None:
    """Refused by the header checks (SECURITY-CASES 12): no private-key operation, so the
    unit taken on arrival comes back, however many there are."""
    keys = service_enc_keys(budget_server)
    sender = From(budget_server, "127.0.0.51")
    before = metrics(budget_server)
    try:
        statuses = set()
        for _ in range(3 * BURST):
            parts = random_key_jwe(budget_server, budget_app, keys[RSA]).split(".")
            parts[0] = b64u_encode(b'{"alg":"RSA1_5","enc":"A256GCM","cty":"JWT","kid":"%s"}'
                                   % keys[RSA]["kid"].encode())
            response = sender.post(".".join(parts))
            statuses.add((response.status_code, response.json()["detail"]))
        assert statuses == {(401, JWE_REFUSED)}
        assert ops(metrics(budget_server)) == ops(before)
        # The whole burst is still there for JWEs that do reach the private key.
        assert sender.post(random_key_jwe(budget_server, budget_app,
                                          keys[ECDH])).status_code == 401
    finally:
        sender.close()


def test_an_exhausted_address_gets_429_before_any_parsing(budget_server: Server,
                                                          budget_app: TestApp) -> None:
    sender = From(budget_server, "127.0.0.61")
    try:
        _exhaust(budget_server, budget_app, sender)
        response = sender.post("a.b.c.d.e")  # not even base64url JSON: not looked at
        assert response.status_code == 429 and response.json()["code"] == "rate_limited"
    finally:
        sender.close()


# --- the budget itself, on a fake clock --------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_budget_burst_refund_and_refill() -> None:
    clock = FakeClock()
    budget = JweBudget(2, clock=clock)
    assert budget.burst == 20
    for _ in range(20):
        budget.take("192.0.2.1")
    with pytest.raises(JweBudgetExhausted) as info:
        budget.take("192.0.2.1")
    assert info.value.status == 429 and info.value.retry_after == 1
    budget.take("192.0.2.2")  # another address has its own bucket
    budget.refund("192.0.2.1")  # a bound caller gives its unit back
    budget.take("192.0.2.1")
    with pytest.raises(JweBudgetExhausted):
        budget.take("192.0.2.1")
    clock.now += 1.0  # two units a second come back
    budget.take("192.0.2.1")
    budget.take("192.0.2.1")
    with pytest.raises(JweBudgetExhausted):
        budget.take("192.0.2.1")
    clock.now -= 50  # a clock stepping back refills nothing
    with pytest.raises(JweBudgetExhausted):
        budget.take("192.0.2.1")


def test_refund_never_exceeds_the_burst() -> None:
    budget = JweBudget(1, clock=FakeClock())
    for _ in range(5):
        budget.refund("192.0.2.1")  # unknown address: nothing to refund
    budget.take("192.0.2.1")
    for _ in range(5):
        budget.refund("192.0.2.1")
    for _ in range(10):
        budget.take("192.0.2.1")
    with pytest.raises(JweBudgetExhausted):
        budget.take("192.0.2.1")


def test_budget_forgets_refilled_addresses_and_fails_closed_when_full() -> None:
    clock = FakeClock()
    budget = JweBudget(1, burst=2, clock=clock, max_addresses=2)
    budget.take("192.0.2.1")
    budget.take("192.0.2.2")
    with pytest.raises(JweBudgetExhausted):
        budget.take("192.0.2.3")  # both tracked buckets still in use: refused
    clock.now += 1.0  # both have refilled: forgotten at the next sweep
    budget.take("192.0.2.3")


@pytest.mark.parametrize("rate", [0, -1, float("inf"), float("nan")])
def test_budget_has_no_off_switch(rate: float) -> None:
    with pytest.raises(ValueError):
        JweBudget(rate)


@pytest.mark.parametrize(
    ("ip", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),  # same /64, same budget
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),  # IPv4-mapped: the IPv4 address
        ("fe80::1%eth0", "fe80::/64"),
        (None, None),
        ("not:an:address", "not:an:address"),
    ],
)
def test_address_key(ip: str | None, key: str | None) -> None:
    assert address_key(ip) == key


# --- the EC key, end to end on every backend ---------------------------------------------------


def test_discovery_names_the_ec_key_and_the_jwks_keeps_rsa(server: Server) -> None:
    with server.http() as http:
        config = http.get(f"{server.url}/.well-known/sceau-configuration").json()
        jwks = http.get(f"{server.url}/.well-known/jwks.json").json()
    enc = [k for k in jwks["keys"] if k.get("use") == "enc"]
    by_kid = {k["kid"]: k for k in enc}
    named = by_kid[config["encryption_kid"]]
    assert (named["kty"], named["crv"], named["alg"]) == ("EC", "P-256", ECDH)
    # The RSA key is still published, first of the enc keys as before.
    assert (enc[0]["kty"], enc[0]["alg"]) == ("RSA", RSA) and len(enc) == 2


def test_the_sdk_encrypts_to_the_ec_key(server: Server, app: TestApp) -> None:
    before = metrics(server)
    with server.client(app, USER, jwe=True) as c:
        key_id, envelope = c.encrypt(b"over ECDH-ES")
        assert c.decrypt(envelope) == b"over ECDH-ES"
        data_key = c.generate_data_key()
        assert c.get_data_key(data_key.key_id) == data_key.key
        assert key_id
    after = metrics(server)
    assert after[ECDH] == before[ECDH] + 4
    assert after[RSA] == before[RSA]


def test_a_client_holding_only_the_rsa_key_keeps_working(server: Server, app: TestApp) -> None:
    """Like a profile written before the EC key: its JWKS copy has the RSA key only."""
    jwks = httpx.get(f"{server.url}/.well-known/jwks.json", verify=server.cert).json()
    old_jwks = {"keys": [k for k in jwks["keys"] if k.get("use") == "sig" or k["alg"] == RSA]}
    before = metrics(server)
    with Client(service_url=server.url, identity=app.identity, user=USER, verify=server.cert,
                service_jwks=old_jwks, jwe=True) as c:
        _key_id, envelope = c.encrypt(b"over RSA-OAEP")
        assert c.decrypt(envelope) == b"over RSA-OAEP"
    after = metrics(server)
    assert after[RSA] == before[RSA] + 2
    assert after[ECDH] == before[ECDH]
