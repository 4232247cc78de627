"""Rate limits, the refusal tarpit and the JWE budget (SPEC §9, SECURITY-CASES 43, 49).

Per-application rate limiting: a token bucket per ``app_id``.

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

import ipaddress
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sceau.config import Config
from sceau.errors import RateLimited
from sceau.jose.request import TokenRefused, VerifiedRequest

__all__ = ["JweBudget", "JweBudgetExhausted", "RateLimiter", "RefusalTarpit", "address_key"]

#: Buckets idle for this long are full again and can be forgotten.
_FORGET_AFTER_S = 300.0
_SWEEP_EVERY = 1024


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float

    def take(self, now: float, rate: float, burst: float) -> float | None:
        """Refill for the time since the last call, then take one token: None when taken,
        else the seconds until there is one."""
        # max(): a clock that stepped back never drains the bucket.
        self.tokens = min(burst, self.tokens + max(0.0, now - self.updated) * rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return None
        return (1.0 - self.tokens) / rate


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
        return cls(config.limits.rate_limit_per_app)

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
            wait = bucket.take(now, self.rate, self.burst)
        if wait is None:
            return
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
            raise TokenRefused(exc, request.app_id, request.jti, bound=True) from None

    def _forget_idle(self, now: float) -> None:
        stale = [app for app, b in self._buckets.items() if now - b.updated > _FORGET_AFTER_S]
        for app in stale:
            del self._buckets[app]


#: Most addresses the tarpit tracks before it forgets those that are back within budget.
_TARPIT_MAX_ADDRESSES = 100_000


class RefusalTarpit:
    """Slows down whoever keeps sending calls that are refused before any authorization.

    A flood of invalid tokens costs the single-core server TLS, parsing and a problem
    answer per call, and each refusal that names an application also an audit record; a
    closed-loop attacker always has the next one ready. Each address has a budget of
    refusals: ``rate`` per second, bursts of ``10 × rate``. Past it, the address's
    refusals are answered no faster than ``rate`` per second *in all*, whatever the number
    of its connections: each is held back until its turn (a generic cell rate algorithm:
    the n-th refusal beyond the burst is due ``n / rate`` seconds on), at most
    ``max_delay`` seconds. The answer and its code are unchanged, nothing else is slowed,
    and the attacker's connections spend their time waiting instead of being served. Valid
    calls are never delayed.

    Per address rather than per request, because a delay per request would let the rate
    grow with the connections: 512 connections each waiting one second are still 512
    refusals a second. The cap keeps each answer within the request timeout; an address
    with so many connections that its turn is further than ``max_delay`` away has its
    answers spread at random over the cap's second half, so that those connections do not
    all come back at once (a wave of hundreds of refusals holds the core for tens of
    milliseconds, which valid callers' p99 would see). Its rate is then at most
    connections / (``max_delay`` / 2).
    """

    def __init__(self, rate: float, *, max_delay: float = 10.0,
                 clock: Callable[[], float] = time.monotonic,
                 rand: Callable[[], float] = random.random) -> None:
        self.rate = rate
        self.burst = 10 * rate
        self.max_delay = max_delay
        self._clock = clock
        self._rand = rand
        # Per address, when its budget would be whole again ("theoretical arrival time").
        self._due: dict[str, float] = {}
        self._swept = -math.inf

    @classmethod
    def from_config(cls, config: Config) -> RefusalTarpit:
        return cls(config.limits.refusals_per_ip_per_s)

    def penalty(self, ip: str | None) -> float:
        """Seconds to wait before answering this refusal (0 within the budget)."""
        ip = address_key(ip)
        if self.rate <= 0 or ip is None:
            return 0.0
        now = self._clock()
        if len(self._due) >= _TARPIT_MAX_ADDRESSES:
            self._forget_recovered(now)
        tolerance = self.burst / self.rate  # the burst, in seconds of budget
        due = max(self._due.get(ip, now), now) + 1.0 / self.rate
        delay = due - now - tolerance
        if delay <= 0:
            self._due[ip] = due
            return 0.0
        if delay > self.max_delay:
            due = now + tolerance + self.max_delay
            delay = self.max_delay * (1.0 - 0.5 * self._rand())
        self._due[ip] = due
        return delay

    def _forget_recovered(self, now: float) -> None:
        if now - self._swept >= 1.0:
            self._swept = now
            for ip in [ip for ip, due in self._due.items() if due <= now]:
                del self._due[ip]
        if len(self._due) >= _TARPIT_MAX_ADDRESSES:
            self._due.clear()  # bounded memory under a flood spread over many addresses


def address_key(ip: str | None) -> str | None:
    """The key under which a client address is budgeted.

    IPv4 as is; IPv6 by its /64, the block one end site is given (an attacker holding a /64
    must not get 2**64 budgets); an IPv4-mapped IPv6 address as the IPv4 address it maps.
    Anything else that is not an IP address (a Unix socket peer) is kept as given.
    """
    if ip is None or ":" not in ip:
        return ip
    try:
        parsed = ipaddress.IPv6Address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    return str(ipaddress.IPv6Network((parsed, 64), strict=False).network_address) + "/64"


class JweBudgetExhausted(RateLimited):
    """Refused by the :class:`JweBudget`, before any private-key operation.

    Still the SPEC's ``rate_limited`` (429, ``Retry-After``); its own class so that the API
    treats it as a refusal before any authorization (the tarpit applies).
    """


#: Most addresses the JWE budget tracks at once (about 100 bytes each).
_JWE_MAX_ADDRESSES = 100_000


class JweBudget:
    """Private-key operations an address may cause before anything identifies its caller.

    A JWE request is decrypted (RSA-OAEP or ECDH, the service's most expensive step) before
    its inner JWS can say who sent it, so a flood of well-formed JWEs with random keys costs
    the service a private-key operation each (SECURITY-CASES 49). Each address (see
    :func:`address_key`) has a token bucket: ``rate`` operations per second, bursts of
    ``burst`` (default ``10 × rate``). :meth:`take` is called *before* the operation and
    refuses when the bucket is empty; :meth:`refund` gives the operation back once the
    inner signature verified (the caller is bound to a registered key: from then on the
    per-application rate limit is the bound), so valid callers, even many behind one NAT
    address, never spend the budget. What the budget counts is therefore the failed
    operations of the last seconds plus those in flight.

    At most :data:`_JWE_MAX_ADDRESSES` addresses are tracked; buckets that have refilled
    are forgotten (at most one sweep a second). When every tracked bucket is still in use,
    a new address is refused: fail closed rather than give a distributed flood fresh
    budgets. Thread-safe.
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = _JWE_MAX_ADDRESSES,
    ) -> None:
        if not math.isfinite(rate) or rate <= 0:
            raise ValueError("rate must be a finite number > 0")
        self.rate = float(rate)
        self.burst = float(burst) if burst is not None else 10.0 * self.rate
        if self.burst < 1:
            raise ValueError("burst must be >= 1")
        self._clock = clock
        self._max_addresses = max_addresses
        self._buckets: dict[str | None, _Bucket] = {}
        self._lock = threading.Lock()
        self._swept = -math.inf

    @classmethod
    def from_config(cls, config: Config) -> JweBudget:
        """The budget for ``limits.jwe_per_ip_per_s``."""
        return cls(config.limits.jwe_per_ip_per_s)

    def take(self, ip: str | None) -> None:
        """Charge one private-key operation to ``ip``; raise :class:`JweBudgetExhausted`."""
        key = address_key(ip)
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= self._max_addresses:
                    self._sweep(now)
                if len(self._buckets) >= self._max_addresses:
                    raise JweBudgetExhausted(
                        "too many addresses are sending JWE that does not decrypt",
                        retry_after=1,
                    )
                bucket = self._buckets[key] = _Bucket(self.burst, now)
            wait = bucket.take(now, self.rate, self.burst)
        if wait is None:
            return
        raise JweBudgetExhausted(
            "over the budget of JWE decryptions for this address",
            retry_after=max(1, math.ceil(wait)),
        )

    def refund(self, ip: str | None) -> None:
        """Give back the operation :meth:`take` charged: the caller turned out to be bound."""
        key = address_key(ip)
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is not None:
                bucket.tokens = min(self.burst, bucket.tokens + 1.0)

    def _sweep(self, now: float) -> None:
        if now - self._swept < 1.0:
            return
        self._swept = now
        full = [key for key, b in self._buckets.items()
                if b.tokens + max(0.0, now - b.updated) * self.rate >= self.burst]
        for key in full:
            del self._buckets[key]
