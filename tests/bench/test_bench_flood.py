"""The flood benchmark's pure parts: the invalid requests really take the paths they are
named after, class assignment, window figures, the slowdown summary and its report.
(The benchmark itself runs with ``python -m bench.flood`` or ``make bench``.)"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwcrypto import jwk as jwcrypto_jwk

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import flood, report  # noqa: E402
from sceau.errors import InvalidToken, UnknownApplication  # noqa: E402
from sceau.jose.appkeys import app_key_from_jwk  # noqa: E402
from sceau.jose.client import generate_app_keys  # noqa: E402
from sceau.jose.request import JWE_REFUSED, RequestVerifier, TokenRefused  # noqa: E402

SERVICE = "https://sceau.test:8443"
APP = "app-1"
PRIVATE_KEY_OP = {"jwe-rsa": "RSA-OAEP-256", "jwe-ec": "ECDH-ES+A256KW"}


def _service_enc_key(key: Any, alg: str) -> tuple[dict[str, Any], dict[str, Any]]:
    jwk = jwcrypto_jwk.JWK.from_pyca(key)
    private: dict[str, Any] = jwk.export_private(as_dict=True)
    public: dict[str, Any] = jwk.export_public(as_dict=True)
    for part in (private, public):
        part.update(alg=alg, use="enc", kid=jwk.thumbprint())
    return private, public


@pytest.fixture(scope="module")
def forged() -> dict[str, Any]:
    priv, pub, enc_priv, _enc_pub = generate_app_keys("ES256")
    service_keys = [_service_enc_key(rsa.generate_private_key(65537, 2048), "RSA-OAEP-256"),
                    _service_enc_key(ec.generate_private_key(ec.SECP256R1()), "ECDH-ES+A256KW")]
    sceau = {"identity": {"app_id": APP, "kid": pub["kid"], "alg": "ES256",
                          "private_jwk": priv, "enc_private_jwk": enc_priv},
             "user": "bench@example.org", "service_id": SERVICE,
             "service_jwks": {"keys": [public for _private, public in service_keys]}}
    tokens = flood.forged_tokens(sceau, now=1_800_000_000, count=2)
    tokens["garbage"] = flood.garbage_tokens()
    tokens.update(flood.random_key_jwes(sceau, now=1_800_000_000, count=2))
    return {"tokens": tokens, "kid": pub["kid"], "key": app_key_from_jwk(pub),
            "service_jwks": [private for private, _public in service_keys]}


@pytest.mark.parametrize(
    ("cls", "error", "audited_app", "looked_up"),
    [
        ("garbage", InvalidToken, None, False),
        ("bad-signature", InvalidToken, APP, True),
        ("unknown-kid", UnknownApplication, None, True),
        ("audited-garbage", InvalidToken, APP, True),
        ("jwe-rsa", InvalidToken, None, False),
        ("jwe-ec", InvalidToken, None, False),
    ],
)
def test_each_class_takes_its_path(forged: dict[str, Any], cls: str, error: type,
                                   audited_app: str | None, looked_up: bool) -> None:
    lookups: list[str] = []

    def lookup(kid: str) -> Any:
        lookups.append(kid)
        return (APP, forged["key"]) if kid == forged["kid"] else None

    verifier = RequestVerifier(service_id=SERVICE, lookup_key=lookup,
                               jwe_private_jwks=forged["service_jwks"])
    tokens = forged["tokens"][cls]
    assert tokens
    for token in tokens:
        lookups.clear()
        ops: list[str] = []
        with pytest.raises(TokenRefused) as caught:
            screened = verifier.screen(token.encode())
            assert screened.private_key_alg == PRIVATE_KEY_OP.get(cls)
            verifier.finish(screened, op="encrypt", now=1_800_000_000,
                            before_private_key_op=ops.append)
        assert isinstance(caught.value.error, error), caught.value.error
        # app_id set = the API writes an audit record for this refusal (SPEC §8).
        assert caught.value.app_id == audited_app
        assert bool(lookups) is looked_up
        # The JWE classes reach exactly one private-key operation, which refuses them.
        assert ops == ([PRIVATE_KEY_OP[cls]] if cls in PRIVATE_KEY_OP else [])
        if cls in PRIVATE_KEY_OP:
            assert caught.value.error.detail == JWE_REFUSED and not caught.value.bound


def test_bad_signature_tokens_name_the_registered_kid_with_a_full_size_signature(
        forged: dict[str, Any]) -> None:
    from sceau.core.b64 import b64u_decode
    from sceau.jose.guard import parse_unverified_jws

    for token in forged["tokens"]["bad-signature"]:
        jws = parse_unverified_jws(token.encode(), expected_typ="sceau-req+jwt",
                                   allowed_algs=frozenset({"ES256"}))
        assert jws.kid == forged["kid"]
        assert len(jws.signature) == 64  # past the length check: a real ECDSA verification
        assert len(b64u_decode(token.split(".")[1].encode())) > 1024  # a 1 KiB encrypt call


def test_oversized_head_declares_more_than_the_limit_and_sends_no_body() -> None:
    raw = flood.oversized_head("127.0.0.1", 8443, "/v1/encrypt")
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep and body == b""
    assert b"\r\nContent-Length: %d" % flood.OVERSIZED_BYTES in head
    assert flood.OVERSIZED_BYTES > 16 * 1024 * 1024 + 64 * 1024  # the default body limit
    assert head.startswith(b"POST /v1/encrypt HTTP/1.1\r\n")


@pytest.mark.parametrize(
    ("mix", "n", "expected"),
    [(("a", "b"), 5, ["a", "b", "a", "b", "a"]), (("a",), 2, ["a", "a"]),
     (flood.MIX, 32, (list(flood.MIX) * 6)[:32])],
)
def test_assign_classes_round_robin(mix: tuple[str, ...], n: int, expected: list[str]) -> None:
    assert flood.assign_classes(mix, n) == expected


@pytest.mark.parametrize(("mix", "n"), [((), 4), (("a",), 0)])
def test_assign_classes_refuses_nothing_to_do(mix: tuple[str, ...], n: int) -> None:
    with pytest.raises(ValueError):
        flood.assign_classes(mix, n)


def test_merge_statuses_sums_over_classes() -> None:
    by_class = {"a": {"statuses": {"401": 3, "error:HttpError": 1}},
                "b": {"statuses": {"401": 2, "413": 5}}}
    assert flood.merge_statuses(by_class) == {"401": 5, "413": 5, "error:HttpError": 1}


def test_window_figures() -> None:
    start = {"t": 10.0, "gen": 1.0, "server": 5.0, "cpu0": (100.0, 0, 7.0),
             "cpu1": (50.0, 0, 1.0)}
    end = {"t": 12.0, "gen": 1.5, "server": 6.6, "cpu0": (102.0, 0, 7.2),
           "cpu1": (51.5, 0, 1.0)}
    got = flood.window_figures(start, end)
    assert got["duration_s"] == pytest.approx(2.0)
    assert got["server_cpu_frac"] == pytest.approx(0.8)
    assert got["cpu0_others_frac"] == pytest.approx(0.2)  # (2.0 - 1.6) / 2
    assert got["cpu0_steal_frac"] == pytest.approx(0.1)
    assert got["cpu1_busy_frac"] == pytest.approx(0.75)
    assert got["generator_cpu_frac"] == pytest.approx(0.25)


def _valid(rps: float, p50: float, p99: float, cpu_ms: float = 2.0,
           duration: float = 10.0) -> dict[str, Any]:
    requests = int(rps * duration)
    return {"rps": rps, "requests": requests, "errors": 0, "duration_s": duration,
            "lat_ms": {"p50": p50, "p99": p99}, "server_cpu_ms_per_req": cpu_ms,
            "server_cpu_s": requests * cpu_ms / 1000, "server_cpu_frac": 0.9,
            "generator_cpu_frac": 0.05, "cpu0_others_frac": 0.02, "cpu0_steal_frac": 0.0}


def _flood(refused_per_s: float, cpu_ms: float, cls: str = "garbage") -> dict[str, Any]:
    refused = int(refused_per_s * 10)
    return {"refused_per_s": refused_per_s, "refused": refused, "accepted": 0,
            "statuses": {"401": refused}, "server_cpu_ms_per_refusal": cpu_ms,
            "server_cpu_frac": 0.95, "generator_cpu_frac": 0.2, "cpu1_busy_frac": 0.5,
            "cpu1_steal_frac": 0.0, "cpu0_others_frac": 0.01, "cpu0_steal_frac": 0.0,
            "by_class": {cls: {"refused_per_s": refused_per_s,
                               "lat_ms": {"p50": 5.0, "p99": 20.0}}}}


def _phases(flooded_rps: float, flooded_p99: float) -> dict[str, Any]:
    flooded = _valid(flooded_rps, 40.0, flooded_p99)
    # Server CPU of the flooded window: its valid calls plus 1,000 refusals/s at 0.5 ms.
    flooded["server_cpu_s"] += 1000 * 10 * 0.5 / 1000
    return {
        "alone_before": {"valid": _valid(400, 18.0, 24.0)},
        "flooded": {"valid": flooded, "flood": _flood(1000, 0.6)},
        "alone_after": {"valid": _valid(300, 22.0, 36.0)},
        "flood_only": {"flood": _flood(1600, 0.6)},
        "classes": {"bad-signature": {"flood": _flood(800, 1.2, "bad-signature"),
                                      "writer": {"jobs": 8000.0}}},
    }


def test_summarize_slowdown_and_costs() -> None:
    s = flood.summarize(_phases(flooded_rps=100, flooded_p99=120.0))
    assert s["rps_alone"] == pytest.approx(350)  # mean of before and after
    assert s["p99_alone"] == pytest.approx(30.0)
    assert s["throughput_slowdown"] == pytest.approx(3.5)
    assert s["p99_slowdown"] == pytest.approx(4.0)
    assert s["p50_slowdown"] == pytest.approx(2.0)
    assert s["within_limit"] is False
    assert s["cpu_ms_per_refusal"] == pytest.approx(0.6)
    assert s["cpu_ms_per_refusal_flooded_est"] == pytest.approx(0.5)
    assert s["by_class"]["bad-signature"]["audit_jobs_per_refusal"] == pytest.approx(1.0)
    assert s["by_class"]["bad-signature"]["cpu1_others_frac"] == pytest.approx(0.3)
    assert s["generators"]["flood_cpu_frac_max"] == pytest.approx(0.2)
    assert s["flood_statuses"] == {"401": 10000}


@pytest.mark.parametrize(
    ("rps", "p99", "within"),
    [(350 / 2, 60.0, True), (350 / 2.01, 60.0, False), (350, 60.3, False), (350, 30.0, True)],
)
def test_summarize_limit_is_two_times_on_both(rps: float, p99: float, within: bool) -> None:
    assert flood.summarize(_phases(rps, p99))["within_limit"] is within


def test_summarize_garbage_only_diagnostic() -> None:
    phases = _phases(100, 120.0)
    phases["flooded_garbage"] = {"valid": _valid(250, 20.0, 45.0), "flood": _flood(3000, 0.2)}
    s = flood.summarize(phases)
    assert s["garbage_only"]["throughput_slowdown"] == pytest.approx(1.4)
    assert s["garbage_only"]["p99_slowdown"] == pytest.approx(1.5)
    assert s["garbage_only"]["refused_per_s"] == 3000
    assert s["within_limit"] is False  # the verdict is the full mix's, not the diagnostic's
    md = report.flood_section({
        "server": "s", "valid_workload": "w", "valid_concurrency": 8, "flood_connections": 32,
        "mix": ["garbage"], "seconds": 1, "class_seconds": 1, "phases": phases, "summary": s})
    assert "| valid + garbage-only flood | 250 |" in md
    assert "throughput 1.40×, p99 1.50×" in md
    assert "By class: garbage 1,000/s (p50 5.0 ms)." in md


def test_jwe_tokens_are_well_formed_with_random_keys(forged: dict[str, Any]) -> None:
    from sceau.core.b64 import b64u_decode

    keys = {k["kid"]: k for k in forged["service_jwks"]}
    for cls, alg in PRIVATE_KEY_OP.items():
        seen = set()
        for token in forged["tokens"][cls]:
            header = json.loads(b64u_decode(token.split(".")[0].encode()))
            assert header["alg"] == alg and keys[header["kid"]]["alg"] == alg
            encrypted_key = b64u_decode(token.split(".")[1].encode())
            assert len(encrypted_key) == (256 if alg == "RSA-OAEP-256" else 40)
            seen.add(encrypted_key)
        assert len(seen) == len(forged["tokens"][cls])  # random, not one replayed key


def test_summarize_jwe_only_verdict() -> None:
    phases = _phases(400, 30.0)
    flood_part = _flood(600, 0.3, "jwe-ec")
    flood_part.update(duration_s=10.0, connections=512, statuses={"401": 200, "429": 5800})
    phases["flooded_jwe"] = {"valid": _valid(300, 20.0, 45.0), "flood": flood_part,
                             "jwe": {"private_key_ops": 200.0, "budget_refusals": 5800.0}}
    s = flood.summarize(phases)
    j = s["jwe_only"]
    assert j["throughput_slowdown"] == pytest.approx(350 / 300)
    assert j["p99_slowdown"] == pytest.approx(1.5)
    assert j["within_limit"] is True and j["connections"] == 512
    assert j["private_key_ops_per_s"] == pytest.approx(20.0)  # the 401s
    assert j["budget_refusals_per_s"] == pytest.approx(580.0)  # the 429s
    assert j["private_key_op_share"] == pytest.approx(200 / 6000)
    phases["flooded_jwe"]["valid"] = _valid(100, 20.0, 45.0)
    assert flood.summarize(phases)["jwe_only"]["within_limit"] is False
    md = report.flood_section({
        "server": "s", "valid_workload": "w", "valid_concurrency": 8, "flood_connections": 32,
        "mix": list(flood.MIX), "seconds": 1, "class_seconds": 1, "jwe_per_ip_per_s": "10",
        "phases": phases, "summary": flood.summarize(phases)})
    assert "| valid + JWE-only flood | 100 |" in md
    assert "**JWE with random keys only** (SECURITY-CASES 49; 512 connections" in md
    assert "of which 20/s reached a private-key operation and 580/s were refused" in md
    assert "(server counters: 3 % reached one)" in md


def test_summarize_without_a_flooded_phase_decides_nothing() -> None:
    phases = _phases(100, 100.0)
    del phases["flooded"]
    s = flood.summarize(phases)
    assert "within_limit" not in s and "throughput_slowdown" not in s
    assert s["rps_alone"] == pytest.approx(350)


def test_flood_section_reports_the_verdict_and_costs() -> None:
    phases = _phases(flooded_rps=100, flooded_p99=120.0)
    doc = {"server": "sceau-sqlite (sqlite, file keystore)", "valid_workload": "encrypt 1 KiB",
           "valid_concurrency": 8, "flood_connections": 32, "mix": list(flood.MIX),
           "seconds": 10, "class_seconds": 5, "es256_verify_us": 105.0, "phases": phases,
           "summary": flood.summarize(phases), "notes": ["n1"]}
    md = report.flood_section(doc)
    assert "**3.50×**" in md and "**4.00×**" in md and "✘ over the 2× limit" in md
    assert "| valid + flood | 100 | 40.00 | 120.00 | 1,000 | 401 × 10,000 |" in md
    assert "| bad-signature | 800 | 401 × 8,000 | 1.200 |" in md
    assert "- n1" in md
    full = report.markdown({"meta": {"started": "t", "cpus": 2, "cpu_model": "x",
                                     "python": "p", "seconds": 1, "openbao": "b"},
                            "runs": [], "ratios": [], "reference": {}, "flood": doc})
    assert "## Invalid-token flood (SECURITY-CASES 43, 49)" in full


@pytest.mark.parametrize(
    ("phase", "expected"),
    [({"valid": _valid(1, 1, 1)}, None),
     ({"flood": _flood(1, 1)}, 0.3),
     ({"flood": _flood(1, 1), "valid": _valid(1, 1, 1)}, 0.25)],
)
def test_cpu1_others(phase: dict[str, Any], expected: float | None) -> None:
    got = report.cpu1_others(phase)
    assert got == (None if expected is None else pytest.approx(expected))


def test_es256_verify_cost_is_measured() -> None:
    us = flood.es256_verify_us(rounds=20)
    assert 0 < us < 100_000 and not math.isnan(us)
