"""The refusal tarpit (SECURITY-CASES 43): a flood of refused calls is slowed, valid calls not."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from sceau.service.limits import RefusalTarpit
from support import make_server


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_budget_then_delay_then_refill() -> None:
    clock = FakeClock()
    tarpit = RefusalTarpit(2, delay=1.0, jitter=0.0, clock=clock)
    assert [tarpit.penalty("10.0.0.1") for _ in range(20)] == [0.0] * 20  # burst = 10 x rate
    assert tarpit.penalty("10.0.0.1") == 1.0
    assert tarpit.penalty("10.0.0.2") == 0.0  # per address
    clock.now += 1.0  # two refusals' worth of budget comes back each second
    assert [tarpit.penalty("10.0.0.1") for _ in range(3)] == [0.0, 0.0, 1.0]


def test_delay_is_spread_by_the_jitter() -> None:
    draws = iter([0.0, 0.5, 0.999])
    tarpit = RefusalTarpit(1, delay=1.0, jitter=1.0, clock=FakeClock(),
                           rand=lambda: next(draws))
    for _ in range(10):
        assert tarpit.penalty("10.0.0.1") == 0.0
    assert [tarpit.penalty("10.0.0.1") for _ in range(3)] == [1.0, 1.5, 1.999]


def test_ipv6_addresses_share_their_64_budget() -> None:
    tarpit = RefusalTarpit(1, jitter=0.0, clock=FakeClock())
    for i in range(10):  # a different address each time, all in one /64
        assert tarpit.penalty(f"2001:db8::{i + 1:x}") == 0.0
    assert tarpit.penalty("2001:db8::ffff") == 1.0
    assert tarpit.penalty("2001:db8:0:1::1") == 0.0  # the next /64 is another site


@pytest.mark.parametrize("rate", [0, -1])
def test_disabled(rate: int) -> None:
    tarpit = RefusalTarpit(rate)
    assert all(tarpit.penalty("10.0.0.1") == 0.0 for _ in range(100))
    assert RefusalTarpit(5).penalty(None) == 0.0


def test_flooding_address_is_answered_slowly_and_valid_calls_are_not(tmp_path: Path) -> None:
    server = make_server(tmp_path, env={"SCEAU_REFUSALS_PER_IP_PER_S": "1"})
    try:
        app = server.register_app()
        headers = {"Content-Type": "application/jose"}
        with httpx.Client(verify=server.cert, timeout=30) as http:
            for _ in range(10):  # the burst: answered at once
                r = http.post(f"{server.url}/v1/encrypt", content=b"x.y.z", headers=headers)
                assert r.status_code == 401
            started = time.monotonic()
            late = http.post(f"{server.url}/v1/encrypt", content=b"x.y.z", headers=headers)
            waited = time.monotonic() - started
        assert late.status_code == 401 and late.json()["code"] == "invalid_token"
        assert waited >= 0.9  # answered, with the same code, after the tarpit delay
        with server.client(app, "alice@example.com") as c:
            _, envelope = c.encrypt(b"still served")
            assert c.decrypt(envelope) == b"still served"
    finally:
        server.stop()


def test_jwe_over_its_budget_is_tarpitted_too(tmp_path: Path) -> None:
    """A 429 from the JWE budget is a refusal before any authorization: once the address
    is past its refusal budget too, it is answered late like the other refusals."""
    from sceau.core.b64 import b64u_decode, b64u_encode
    from sceau.jose.client import sign_request, wrap_for_service

    server = make_server(tmp_path, env={"SCEAU_REFUSALS_PER_IP_PER_S": "2",  # bursts of 20
                                        "SCEAU_JWE_PER_IP_PER_S": "1"})  # bursts of 10
    try:
        app = server.register_app()
        with httpx.Client(verify=server.cert, timeout=30) as http:
            enc = next(k for k in http.get(f"{server.url}/.well-known/jwks.json").json()["keys"]
                       if k.get("alg") == "ECDH-ES+A256KW")
            answers = []
            for _ in range(30):
                jws = sign_request(app.identity, sub="alice@example.com", aud=server.url,
                                   op="encrypt", params={}, now=int(time.time()))
                parts = wrap_for_service(jws, enc).split(".")
                parts[1] = b64u_encode(os.urandom(len(b64u_decode(parts[1]))))
                started = time.monotonic()
                r = http.post(f"{server.url}/v1/encrypt", content=".".join(parts),
                              headers={"Content-Type": "application/jose"})
                answers.append((r.status_code, time.monotonic() - started))
                if r.status_code == 429 and answers[-1][1] >= 0.9:
                    break
    finally:
        server.stop()
    statuses = [status for status, _ in answers]
    assert statuses[:10] == [401] * 10  # the JWE budget's burst, answered at once
    status, waited = answers[-1]
    assert status == 429 and waited >= 0.9  # a budget refusal, answered after the delay
