"""Per-application token buckets (service/limits.py), on a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from sceau.config import DEFAULT_RATE_LIMIT_PER_APP, load_config, render_default_config
from sceau.errors import ConfigError, RateLimited
from sceau.jose.request import TokenRefused, VerifiedRequest
from sceau.service.limits import RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _drain(limiter: RateLimiter, app: str) -> int:
    """How many requests pass before the first refusal."""
    for passed in range(10_000):
        try:
            limiter.check(app)
        except RateLimited:
            return passed
    raise AssertionError("never limited")


@pytest.mark.parametrize(("rate", "burst", "expected"), [(1, None, 1), (5, None, 5), (5, 12, 12)])
def test_burst_then_refusal(rate: int, burst: int | None, expected: int) -> None:
    limiter = RateLimiter(rate, burst=burst, clock=FakeClock())
    assert _drain(limiter, "app-a") == expected


def test_refill_and_retry_after() -> None:
    clock = FakeClock()
    limiter = RateLimiter(2, clock=clock)
    assert _drain(limiter, "a") == 2
    with pytest.raises(RateLimited) as refused:
        limiter.check("a")
    assert refused.value.retry_after == 1 and refused.value.status == 429
    clock.now += 0.5  # one token back at 2/s
    limiter.check("a")
    with pytest.raises(RateLimited):
        limiter.check("a")
    clock.now += 10  # never more than the bucket holds
    assert _drain(limiter, "a") == 2


def test_retry_after_rounds_up_to_whole_seconds() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1, burst=1, clock=clock)
    limiter.check("a")
    clock.now += 0.01
    with pytest.raises(RateLimited) as refused:
        limiter.check("a")
    assert refused.value.retry_after == 1


def test_applications_are_independent() -> None:
    limiter = RateLimiter(1, clock=FakeClock())
    limiter.check("a")
    with pytest.raises(RateLimited):
        limiter.check("a")
    limiter.check("b")  # a's flood costs b nothing


def test_clock_stepping_back_does_not_drain_or_refill() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1, clock=clock)
    limiter.check("a")
    clock.now -= 3600
    with pytest.raises(RateLimited):
        limiter.check("a")


def test_zero_rate_is_unlimited() -> None:
    limiter = RateLimiter(0, clock=FakeClock())
    assert not limiter.enabled
    for _ in range(5000):
        limiter.check("a")


@pytest.mark.parametrize(("rate", "burst"), [(-1, None), (float("nan"), None), (1, 0.5)])
def test_bad_settings(rate: float, burst: float | None) -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate, burst=burst)


def test_idle_buckets_are_forgotten() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1000, burst=5000, clock=clock)
    for i in range(100):
        limiter.check(f"app-{i}")
    clock.now += 301
    for _ in range(1024):
        limiter.check("busy")
    assert set(limiter._buckets) == {"busy"}


def test_admit_wraps_the_refusal_for_auditing() -> None:
    request = VerifiedRequest(app_id="app-1", kid="k", sub="u", jti="j" * 22, iat=0, exp=60,
                              op="encrypt", params={}, was_jwe=False)
    limiter = RateLimiter(1, clock=FakeClock())
    limiter.admit(request)
    with pytest.raises(TokenRefused) as refused:
        limiter.admit(request)
    assert isinstance(refused.value.error, RateLimited)
    assert (refused.value.app_id, refused.value.jti) == ("app-1", "j" * 22)


def test_the_default_limit_is_on_and_bounds_a_runaway_application(tmp_path: Path) -> None:
    """Without configuration an application gets DEFAULT per second, bursts of one second."""
    config = load_config(tmp_path, env={})
    assert config.limits.rate_limit_per_app == DEFAULT_RATE_LIMIT_PER_APP > 0
    assert RateLimiter.from_config(config).enabled
    limiter = RateLimiter(config.limits.rate_limit_per_app, clock=FakeClock())
    assert _drain(limiter, "runaway") == DEFAULT_RATE_LIMIT_PER_APP
    assert _drain(limiter, "another") == DEFAULT_RATE_LIMIT_PER_APP  # others unaffected
    # `sceau init` writes the default, with its meaning, into the commented sceau.toml.
    assert f"# rate_limit_per_app = {DEFAULT_RATE_LIMIT_PER_APP}" in render_default_config()
    # 0 still turns it off, and a negative figure is a named configuration error.
    assert not RateLimiter.from_config(
        load_config(tmp_path, env={"SCEAU_RATE_LIMIT_PER_APP": "0"})).enabled
    with pytest.raises(ConfigError, match="limits.rate_limit_per_app"):
        load_config(tmp_path, env={"SCEAU_RATE_LIMIT_PER_APP": "-1"})
