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
    tarpit = RefusalTarpit(2, clock=clock)
    assert [tarpit.penalty("10.0.0.1") for _ in range(20)] == [0.0] * 20  # burst = 10 x rate
    # Past the budget, answered at 2 a second in all: each one half a second after the last.
    assert [tarpit.penalty("10.0.0.1") for _ in range(3)] == [0.5, 1.0, 1.5]
    assert tarpit.penalty("10.0.0.2") == 0.0  # per address
    # 10 s later the 1.5 s of queued refusals are long answered and 8.5 s of budget
    # (17 refusals at 2 a second) came back.
    clock.now += 10.0
    assert [tarpit.penalty("10.0.0.1") for _ in range(18)] == [0.0] * 17 + [0.5]


def test_a_closed_loop_is_held_to_the_rate_whatever_its_connections() -> None:
    clock = FakeClock()
    tarpit = RefusalTarpit(1, max_delay=100.0, clock=clock)
    for _ in range(10):
        tarpit.penalty("10.0.0.1")
    # Four connections, each sending again as soon as it is answered.
    answers = []
    next_send = [clock.now] * 4
    while clock.now < 1060.0:
        i = min(range(4), key=lambda k: next_send[k])
        clock.now = next_send[i]
        next_send[i] = clock.now + tarpit.penalty("10.0.0.1")
        answers.append(next_send[i])
    late = [t for t in answers if 1010.0 <= t < 1050.0]
    assert len(late) == 40  # one a second, not four


def test_delays_are_capped_and_spread_when_the_queue_is_long() -> None:
    draws = iter([0.0, 1.0, 0.5])
    clock = FakeClock()
    tarpit = RefusalTarpit(1, max_delay=10.0, clock=clock, rand=lambda: next(draws))
    delays = [tarpit.penalty("10.0.0.1") for _ in range(23)]
    assert delays[:10] == [0.0] * 10 and delays[10:20] == [float(n) for n in range(1, 11)]
    assert delays[20:] == [10.0, 5.0, 7.5]  # capped, over the cap's second half
    clock.now += 20.0  # the queue is bounded by the cap: 20 s later it is all gone
    assert tarpit.penalty("10.0.0.1") == 0.0


def test_ipv6_addresses_share_their_64_budget() -> None:
    tarpit = RefusalTarpit(1, clock=FakeClock())
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
            # Past it, one a second: the first late one is due a second after the burst
            # began, every later one a second after the one before.
            for _ in range(2):
                started = time.monotonic()
                late = http.post(f"{server.url}/v1/encrypt", content=b"x.y.z",
                                 headers=headers)
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
    from concurrent.futures import ThreadPoolExecutor

    from sceau.core.b64 import b64u_decode, b64u_encode
    from sceau.jose.client import sign_request, wrap_for_service

    # Both budgets 1 a second, bursts of 10.
    server = make_server(tmp_path, env={"SCEAU_REFUSALS_PER_IP_PER_S": "1",
                                        "SCEAU_JWE_PER_IP_PER_S": "1"})
    try:
        app = server.register_app()
        enc = next(k for k in httpx.get(f"{server.url}/.well-known/jwks.json",
                                        verify=server.cert).json()["keys"]
                   if k.get("alg") == "ECDH-ES+A256KW")

        def random_key_jwe() -> str:
            jws = sign_request(app.identity, sub="alice@example.com", aud=server.url,
                               op="encrypt", params={}, now=int(time.time()))
            parts = wrap_for_service(jws, enc).split(".")
            parts[1] = b64u_encode(os.urandom(len(b64u_decode(parts[1]))))
            return ".".join(parts)

        def post(http: httpx.Client) -> tuple[int, float]:
            started = time.monotonic()
            r = http.post(f"{server.url}/v1/encrypt", content=random_key_jwe(),
                          headers={"Content-Type": "application/jose"})
            return r.status_code, time.monotonic() - started

        with httpx.Client(verify=server.cert, timeout=30) as http:
            burst = [post(http)[0] for _ in range(10)]  # spends both bursts
        clients = [httpx.Client(verify=server.cert, timeout=30) for _ in range(5)]
        try:
            with ThreadPoolExecutor(5) as pool:
                late = list(pool.map(post, clients))  # five at once, from the same address
        finally:
            for client in clients:
                client.close()
    finally:
        server.stop()
    assert burst == [401] * 10
    refused = [waited for status, waited in late if status == 429]
    assert len(refused) >= 3  # at most a unit or two of JWE budget came back meanwhile
    # Answered one a second in all (the tarpit's rate), not all at once.
    assert max(refused) >= 2.0
