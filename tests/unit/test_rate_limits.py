"""Backpressure without I/O: token-bucket arithmetic, per-tenant limits and their headers, the
outbox backlog guard, and which database failures count as "unavailable"."""

from __future__ import annotations

import asyncio
import math
import sqlite3

import pytest
from hypothesis import given, strategies as st
from sqlalchemy import exc as sa_exc

from clarion.adapters.storage.engines import translated, unreachable
from clarion.domain import errors
from clarion.entrypoints.api.rates import Limit, TenantLimits, TokenBucket
from clarion.services.accepting import Backlog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------------------------------------
# the bucket


def test_a_new_bucket_is_full_and_refills_at_its_rate_up_to_its_capacity() -> None:
    bucket = TokenBucket.full(rate=2.0, capacity=5.0, now=0.0)
    for _ in range(5):
        assert bucket.wait(1, now=0.0) == 0
        bucket.take(1, now=0.0)
    assert bucket.wait(1, now=0.0) == pytest.approx(0.5)
    assert bucket.wait(1, now=0.5) == 0
    assert bucket.until_full(now=0.5) == pytest.approx(2.0)
    bucket.refill(now=100.0)
    assert bucket.tokens == 5.0


def test_a_cost_above_the_capacity_waits_for_a_full_bucket_and_leaves_a_debt() -> None:
    bucket = TokenBucket.full(rate=10.0, capacity=10.0, now=0.0)
    assert bucket.wait(25, now=0.0) == 0
    bucket.take(25, now=0.0)
    assert bucket.tokens == -15.0
    # The debt is paid first: one more token takes 1.6 s, a full bucket 2.5 s.
    assert bucket.wait(1, now=0.0) == pytest.approx(1.6)
    assert bucket.wait(25, now=0.0) == pytest.approx(2.5)


def test_a_clock_going_back_earns_nothing() -> None:
    bucket = TokenBucket.full(rate=1.0, capacity=2.0, now=10.0)
    bucket.take(2, now=10.0)
    bucket.refill(now=5.0)
    assert bucket.tokens == 0.0
    assert bucket.wait(1, now=11.0) == 0


@given(
    rate=st.floats(0.1, 1000),
    burst=st.integers(1, 1000),
    steps=st.lists(st.tuples(st.floats(0, 5), st.integers(1, 50)), max_size=50),
)
def test_no_more_is_let_through_than_the_burst_plus_the_rate_times_the_time(
    rate: float, burst: int, steps: list[tuple[float, int]]
) -> None:
    bucket = TokenBucket.full(rate=rate, capacity=float(burst), now=0.0)
    now, let_through = 0.0, 0
    for elapsed, cost in steps:
        now += elapsed
        if bucket.wait(cost, now) == 0:
            bucket.take(cost, now)
            let_through += cost
        assert bucket.tokens <= burst
    # Costs above the burst may each overdraw once, by at most the largest cost.
    largest = max((cost for _, cost in steps), default=0)
    assert let_through <= burst + rate * now + max(0, largest - burst) + 1e-6


# ---------------------------------------------------------------------------------------------
# per tenant


def test_no_limit_lets_everything_through_without_headers() -> None:
    limits = TenantLimits(Limit(0), Limit(0))
    assert not limits.enabled
    decision = limits.check("t", 10_000)
    assert decision.allowed
    assert decision.headers == {}


def test_a_tenant_over_its_request_rate_is_told_when_to_come_back() -> None:
    clock = Clock()
    limits = TenantLimits(Limit(2.0, burst=3), Limit(0), clock=clock)
    answers = [limits.check("t", 1) for _ in range(4)]
    assert [a.allowed for a in answers] == [True, True, True, False]
    assert answers[0].headers == {
        "RateLimit-Limit": "3",
        "RateLimit-Remaining": "2",
        "RateLimit-Reset": "1",
    }
    refused = answers[3]
    assert refused.retry_after == pytest.approx(0.5)
    assert refused.headers["Retry-After"] == "1"
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert refused.headers["RateLimit-Reset"] == "2"
    clock.now += 0.5
    assert limits.check("t", 1).allowed


def test_tenants_have_buckets_of_their_own() -> None:
    limits = TenantLimits(Limit(1.0), Limit(0), clock=Clock())
    assert limits.check("a", 1).allowed
    assert not limits.check("a", 1).allowed
    assert limits.check("b", 1).allowed


def test_recipients_are_counted_and_a_refusal_charges_neither_bucket() -> None:
    clock = Clock()
    limits = TenantLimits(Limit(10.0), Limit(100.0, burst=100), clock=clock)
    assert limits.check("t", 80).allowed
    refused = limits.check("t", 30)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(0.1)
    # The refusal reports the recipients bucket, the one that refused.
    assert refused.headers["RateLimit-Limit"] == "100"
    # ...and took nothing from the requests bucket: 9 requests are still allowed now.
    assert [limits.check("t", 1).allowed for _ in range(9)] == [True] * 9
    assert not limits.check("t", 1).allowed


def test_the_default_burst_is_one_second_of_the_rate_and_at_least_one() -> None:
    assert Limit(50.0).capacity == 50.0
    assert Limit(0.2).capacity == 1.0
    assert Limit(5.0, burst=20).capacity == 20.0


def test_idle_tenants_are_forgotten_when_many_are_tracked() -> None:
    clock = Clock()
    limits = TenantLimits(Limit(1.0), Limit(0), clock=clock, max_idle=3)
    for tenant in "abc":
        limits.check(tenant, 1)
    clock.now += 10  # every bucket is full again
    limits.check("d", 1)
    assert not limits.check("d", 1).allowed
    assert limits.check("a", 1).allowed  # forgotten: a fresh, full bucket


def test_retry_after_rounds_up_to_whole_seconds() -> None:
    limits = TenantLimits(Limit(0.4), Limit(0), clock=Clock())
    limits.check("t", 1)
    refused = limits.check("t", 1)
    assert refused.retry_after == pytest.approx(2.5)
    assert refused.headers["Retry-After"] == str(math.ceil(2.5))


# ---------------------------------------------------------------------------------------------
# the backlog guard


class Counter:
    def __init__(self, value: int) -> None:
        self.value = value
        self.calls: list[int] = []

    async def __call__(self, up_to: int) -> int:
        self.calls.append(up_to)
        await asyncio.sleep(0)
        return min(self.value, up_to)


async def test_the_backlog_guard_refuses_over_its_bound_and_counts_at_most_once_a_second() -> None:
    clock = Clock()
    counter = Counter(10)
    guard = Backlog(counter, limit=10, monotonic=clock)
    await guard.check()
    assert counter.calls == [11]  # counting stops just past the bound
    counter.value = 50
    await guard.check()  # the cached figure still holds
    assert len(counter.calls) == 1
    clock.now += 1.0
    with pytest.raises(errors.Overloaded) as refused:
        await guard.check()
    assert refused.value.status == 503
    counter.value = 3
    clock.now += 1.0
    await guard.check()
    assert len(counter.calls) == 3


async def test_concurrent_checks_share_one_count() -> None:
    clock = Clock()
    counter = Counter(0)
    guard = Backlog(counter, limit=5, monotonic=clock)
    await asyncio.gather(*(guard.check() for _ in range(20)))
    assert len(counter.calls) == 1


async def test_a_bound_of_zero_turns_the_guard_off() -> None:
    counter = Counter(10**9)
    await Backlog(counter, limit=0).check()
    assert counter.calls == []


async def test_a_failed_count_is_the_callers_error_and_is_tried_again() -> None:
    clock = Clock()
    calls = 0

    async def down(up_to: int) -> int:
        nonlocal calls
        calls += 1
        raise errors.Unavailable()

    guard = Backlog(down, limit=5, monotonic=clock)
    for _ in range(2):
        with pytest.raises(errors.Unavailable):
            await guard.check()
    assert calls == 2


# ---------------------------------------------------------------------------------------------
# what counts as the database being unavailable


class PgError(Exception):
    def __init__(self, sqlstate: str | None) -> None:
        super().__init__("boom")
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    "failure",
    [
        ConnectionRefusedError(111, "Connection refused"),
        TimeoutError(),
        OSError(101, "Network is unreachable"),
        sa_exc.TimeoutError("QueuePool limit of size 10 overflow 10 reached"),
        sa_exc.InterfaceError("SELECT 1", None, Exception("connection is closed")),
        sa_exc.OperationalError("BEGIN", None, sqlite3.OperationalError("database is locked")),
        sa_exc.DBAPIError("SELECT 1", None, PgError("08006")),
        sa_exc.DBAPIError("SELECT 1", None, PgError("57P01")),
        sa_exc.DBAPIError("SELECT 1", None, PgError("53300")),
        sa_exc.DBAPIError("SELECT 1", None, PgError("57014")),
        sa_exc.DBAPIError("SELECT 1", None, Exception("x"), connection_invalidated=True),
    ],
    ids=repr,
)
def test_an_unreachable_database_becomes_unavailable(failure: Exception) -> None:
    assert unreachable(failure)
    with pytest.raises(errors.Unavailable) as raised, translated():
        raise failure
    assert raised.value.__cause__ is failure
    assert raised.value.status == 503


@pytest.mark.parametrize(
    "failure",
    [
        sa_exc.IntegrityError("INSERT", None, PgError("23505")),
        sa_exc.DBAPIError("SELECT", None, PgError("42P01")),  # no such table: a bug, not an outage
        sa_exc.ProgrammingError("SELECT", None, PgError("42601")),
        ValueError("not the database's fault"),
        errors.NotFound(),
    ],
    ids=repr,
)
def test_other_failures_pass_through_untouched(failure: Exception) -> None:
    assert not unreachable(failure)
    with pytest.raises(type(failure)) as raised, translated():
        raise failure
    assert raised.value is failure
