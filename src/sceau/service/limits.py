"""Per-application rate limiting: a token bucket per ``app_id`` (SPEC §9, SECURITY-CASES 43).

The bucket is charged only after the request's signature verified, so that nobody can
spend another application's allowance by sending junk that names its ``kid``; junk is
already refused by the cheap structural checks of :mod:`sceau.jose.guard` before any
signature work. A refused call raises :class:`~sceau.jose.request.TokenRefused` carrying
:class:`~sceau.errors.RateLimited` (429, ``Retry-After``) and the request's ``app_id`` and
``jti``, so the API audits it like any refusal decided after verification (SPEC §10) and
the ``jti`` is not consumed: the client may retry the same token after ``Retry-After``.

Setting ``limits.rate_limit_per_app`` (requests per second; 0 = unlimited). The bucket
holds one second of requests (at least one), so short bursts up to the rate pass. Buckets
are per node: with N nodes behind a load balancer an application gets up to N times the
rate.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sceau.config import Config
from sceau.errors import RateLimited
from sceau.jose.request import TokenRefused, VerifiedRequest

__all__ = ["RateLimiter"]

#: Buckets idle for this long are full again and can be forgotten.
_FORGET_AFTER_S = 300.0
_SWEEP_EVERY = 1024


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets keyed by application id.

    ``rate`` is the refill in requests per second (0 disables limiting); ``burst`` the
    bucket size (default ``max(1, rate)``); ``clock`` a monotonic time source in seconds.
    Thread-safe.
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate < 0 or not math.isfinite(rate):
            raise ValueError("rate must be a finite number >= 0")
        self.rate = float(rate)
        self.burst = float(burst) if burst is not None else max(1.0, self.rate)
        if self.burst < 1:
            raise ValueError("burst must be >= 1")
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()
        self._calls = 0

    @classmethod
    def from_config(cls, config: Config) -> RateLimiter:
        """The limiter for ``limits.rate_limit_per_app``."""
        return cls(float(config.get("limits.rate_limit_per_app")))

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def check(self, app_id: str) -> None:
        """Take one request from ``app_id``'s bucket; raise :class:`RateLimited` if empty.

        ``retry_after`` is the whole number of seconds (at least 1) until a request fits.
        """
        if not self.enabled:
            return
        with self._lock:
            now = self._clock()
            self._calls += 1
            if self._calls % _SWEEP_EVERY == 0:
                self._forget_idle(now)
            bucket = self._buckets.get(app_id)
            if bucket is None:
                bucket = self._buckets[app_id] = _Bucket(self.burst, now)
            else:
                # max(): a clock that stepped back never drains the bucket.
                elapsed = max(0.0, now - bucket.updated)
                bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate)
                bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return
            wait = (1.0 - bucket.tokens) / self.rate
        raise RateLimited(
            f"over {self.rate:g} requests per second for this application",
            retry_after=max(1, math.ceil(wait)),
        )

    def admit(self, request: VerifiedRequest) -> None:
        """:meth:`check` for a verified request; refusals raise :class:`TokenRefused`.

        The refusal names the application and the ``jti`` so the API audits it.
        """
        try:
            self.check(request.app_id)
        except RateLimited as exc:
            raise TokenRefused(exc, request.app_id, request.jti) from None

    def _forget_idle(self, now: float) -> None:
        stale = [app for app, b in self._buckets.items() if now - b.updated > _FORGET_AFTER_S]
        for app in stale:
            del self._buckets[app]


class RefusalTarpit:
    """Slows down whoever keeps sending calls that are refused before any authorization.

    A flood of invalid tokens costs the single-core server TLS, parsing and a problem
    answer per call, and each refusal that names an application also an audit record; a
    closed-loop attacker always has the next one ready. Past a per-address budget of
    refusals (a token bucket: ``rate`` per second, bursts of ``10 × rate``), each further
    refusal is answered after ``delay`` seconds of idle waiting: the answer and its code are
    unchanged, nothing else is slowed, and the attacker's connections spend their time
    waiting instead of being served. Valid calls are never delayed.
    """

    def __init__(self, rate: float, *, delay: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = 10 * rate
        self.delay = delay
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    @classmethod
    def from_config(cls, config: Config) -> RefusalTarpit:
        return cls(float(config.get("limits.refusals_per_ip_per_s")))

    def penalty(self, ip: str | None) -> float:
        """Seconds to wait before answering this refusal (0 within the budget)."""
        if self.rate <= 0 or ip is None:
            return 0.0
        now = self._clock()
        tokens, last = self._buckets.get(ip, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if len(self._buckets) > 100_000:
            self._buckets.clear()  # bounded memory under a spread-out flood
        if tokens >= 1.0:
            self._buckets[ip] = (tokens - 1.0, now)
            return 0.0
        self._buckets[ip] = (tokens, now)
        return self.delay
