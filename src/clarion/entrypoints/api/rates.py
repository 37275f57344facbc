"""Per-tenant rate limits on POST /v1/events: token buckets for requests and for recipients.

A bucket holds up to `capacity` tokens and gains `rate` tokens a second. A request costs one
token of the requests bucket and one token per recipient key of the recipients bucket; it goes
through only if both buckets can pay, and then both do. A cost larger than a bucket's capacity
(an event naming more keys than the burst) goes through when that bucket is full and leaves it
in debt, so a large event is slowed down, never refused for good.

The buckets live in this process. Behind N `clarion api` processes a tenant gets up to N times
the configured rates (exactly N times when the load balancer spreads its requests evenly), so
divide the intended rate by N. Sharing them across processes (e.g. in Redis) is not done: a
limit that is only approximately right costs nothing on the hot path and keeps working when
the shared store does not.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from clarion.entrypoints.api.errors import retry_after

MAX_IDLE_BUCKETS = 10_000
"""Tenants remembered before full (idle) buckets are forgotten; a full bucket is what a new one
would be, so forgetting it changes nothing."""


@dataclass(slots=True)
class TokenBucket:
    """`capacity` tokens at most, refilled at `rate` a second; `now` is any monotonic clock."""

    rate: float
    capacity: float
    tokens: float
    updated: float

    @classmethod
    def full(cls, rate: float, capacity: float, now: float) -> TokenBucket:
        """A bucket that has been idle long enough to be full."""
        return cls(rate, capacity, capacity, now)

    def refill(self, now: float) -> None:
        """Add what `rate` earned since the last look (a clock going back earns nothing)."""
        if now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def wait(self, cost: float, now: float) -> float:
        """Seconds until `cost` can be paid; 0 when it can be now."""
        self.refill(now)
        needed = min(cost, self.capacity)  # a cost above capacity waits for a full bucket
        if self.tokens >= needed:
            return 0.0
        return (needed - self.tokens) / self.rate

    def take(self, cost: float, now: float) -> None:
        """Pay `cost`; the bucket may go into debt (see `wait`)."""
        self.refill(now)
        self.tokens -= cost

    def until_full(self, now: float) -> float:
        """Seconds until the bucket is full again."""
        self.refill(now)
        return max(0.0, (self.capacity - self.tokens) / self.rate)


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit: `rate` a second, bursts of up to `burst` (0: one second's worth)."""

    rate: float
    burst: int = 0

    @property
    def enabled(self) -> bool:
        """Whether there is a limit at all (a rate of 0 means unlimited)."""
        return self.rate > 0

    @property
    def capacity(self) -> float:
        """The bucket's size."""
        return float(self.burst) if self.burst > 0 else max(1.0, self.rate)


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a request goes through, and what to tell the client either way."""

    allowed: bool
    retry_after: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


class TenantLimits:
    """The request and recipient buckets of every tenant seen by this process."""

    def __init__(
        self,
        requests: Limit,
        recipients: Limit,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_idle: int = MAX_IDLE_BUCKETS,
    ) -> None:
        self._limits = {"requests": requests, "recipients": recipients}
        self._clock = clock
        self._max_idle = max_idle
        self._buckets: dict[tuple[str, str], TokenBucket] = {}

    @property
    def enabled(self) -> bool:
        """Whether any limit is set."""
        return any(limit.enabled for limit in self._limits.values())

    def check(self, tenant: str, recipients: int, *, events: int = 1) -> Decision:
        """Let one request carrying `events` events that name `recipients` keys in all through
        (and charge it: a batch costs what its events would cost one by one), or say how long
        to wait. Headers describe the requests bucket (else the recipients bucket), and on a
        refusal the bucket that refused."""
        if not self.enabled:
            return Decision(True)
        now = self._clock()
        costs = {"requests": events, "recipients": recipients}
        buckets = {kind: self._bucket(tenant, kind, now) for kind in self._limits}
        waits = {
            kind: bucket.wait(costs[kind], now)
            for kind, bucket in buckets.items()
            if bucket is not None
        }
        longest = max(waits, key=lambda kind: waits[kind])
        if waits[longest] > 0:
            wait = waits[longest]
            return Decision(False, wait, self._headers(buckets[longest], now, refused_for=wait))
        for kind, bucket in buckets.items():
            if bucket is not None:
                bucket.take(costs[kind], now)
        shown = buckets["requests"] or buckets["recipients"]
        assert shown is not None
        return Decision(True, 0.0, self._headers(shown, now))

    def _bucket(self, tenant: str, kind: str, now: float) -> TokenBucket | None:
        limit = self._limits[kind]
        if not limit.enabled:
            return None
        bucket = self._buckets.get((tenant, kind))
        if bucket is None:
            if len(self._buckets) >= self._max_idle:
                self._forget_full(now)
            bucket = self._buckets[(tenant, kind)] = TokenBucket.full(
                limit.rate, limit.capacity, now
            )
        return bucket

    def _forget_full(self, now: float) -> None:
        for key, bucket in list(self._buckets.items()):
            bucket.refill(now)
            if bucket.tokens >= bucket.capacity:
                del self._buckets[key]

    @staticmethod
    def _headers(
        bucket: TokenBucket | None, now: float, *, refused_for: float | None = None
    ) -> dict[str, str]:
        # RateLimit-Limit/-Remaining/-Reset (draft-ietf-httpapi-ratelimit-headers): the burst,
        # the whole tokens left, and the seconds until the bucket is full again.
        if bucket is None:
            return {}
        headers = {
            "RateLimit-Limit": str(math.floor(bucket.capacity)),
            "RateLimit-Remaining": str(max(0, math.floor(bucket.tokens))),
            "RateLimit-Reset": str(math.ceil(bucket.until_full(now))),
        }
        if refused_for is not None:
            headers["Retry-After"] = retry_after(refused_for)
        return headers


def tenant_limits(request: Request) -> TenantLimits:
    """The rate limits of this process (built with the app)."""
    limits: TenantLimits = request.app.state.limits
    return limits


Limits = Annotated[TenantLimits, Depends(tenant_limits)]
