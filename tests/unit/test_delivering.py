"""Delivering's loop: batches overlap up to the concurrency, an idle channel waits, a stop drains
what is in flight. A store and a transport of our own, in memory; no sleeps."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from clarion.domain import outcomes
from clarion.domain.channels import Channel
from clarion.domain.notifications import InboxItem
from clarion.domain.records import Claimed, Completion
from clarion.domain.statuses import Status
from clarion.services.delivering import Delivering

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class FixedClock:
    def now(self) -> datetime:
        return NOW


def _claimed(n: int) -> Claimed:
    item = InboxItem(
        id=n,
        notification_id="n",
        event_id="e",
        user=f"u{n}",
        status=Status.PENDING,
        type="t",
        title=None,
        body=None,
        data={},
        category=None,
        group=None,
        created_at=NOW,
    )
    return Claimed(
        id=n, fence=1, tenant_id="t", channel="apns", endpoint=str(n), attempts=1, item=item
    )


class QueueStore:
    """Hands out `total` deliveries in claim order and records every completion."""

    def __init__(self, total: int) -> None:
        self.left = list(range(1, total + 1))
        self.claims = 0
        self.claimed_once = asyncio.Event()
        self.completed: list[Completion] = []
        self.limits: list[int] = []

    async def claim_deliveries(
        self, channel: Channel, *, limit: int, lease_seconds: float, now: datetime
    ) -> list[Claimed]:
        self.claims += 1
        self.limits.append(limit)
        self.claimed_once.set()
        taken, self.left = self.left[:limit], self.left[limit:]
        return [_claimed(n) for n in taken]

    async def complete_deliveries(
        self, completions: Sequence[Completion], now: datetime
    ) -> list[int]:
        self.completed += completions
        return [c.delivery_id for c in completions]


class GatedTransport:
    """Answers each batch only when the test opens its gate; counts batches in flight."""

    channel = Channel.APNS

    def __init__(self, *, fail_first: bool = False) -> None:
        self.in_flight = 0
        self.peak = 0
        self.started: asyncio.Queue[list[int]] = asyncio.Queue()
        self.gates: list[asyncio.Event] = []
        self.fail_first = fail_first

    async def send(self, batch: Sequence[Claimed]) -> list[outcomes.Outcome]:
        gate = asyncio.Event()
        first = not self.gates
        self.gates.append(gate)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        await self.started.put([c.id for c in batch])
        try:
            await gate.wait()
        finally:
            self.in_flight -= 1
        if self.fail_first and first:
            raise RuntimeError("the provider client broke")
        return [outcomes.Delivered(f"ref-{c.id}") for c in batch]

    def open_all(self) -> None:
        for gate in self.gates:
            gate.set()


async def _settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


async def test_the_next_batches_are_claimed_and_sent_while_earlier_ones_wait() -> None:
    store = QueueStore(total=10)
    transport = GatedTransport()
    delivering = Delivering(store, FixedClock(), {Channel.APNS: transport}, batch=2, concurrency=3)
    stop = asyncio.Event()
    running = asyncio.create_task(delivering.run(stop))
    first = [await transport.started.get() for _ in range(3)]
    await _settle()
    # Three batches wait on the provider at once, and no fourth is claimed meanwhile.
    assert first == [[1, 2], [3, 4], [5, 6]]
    assert transport.in_flight == 3
    assert store.claims == 3
    assert store.completed == []
    transport.gates[1].set()
    assert await transport.started.get() == [7, 8]  # a slot freed: the next batch goes out
    await _settle()
    assert [c.delivery_id for c in store.completed] == [3, 4]
    while store.left or transport.in_flight:
        transport.open_all()
        await _settle()
    stop.set()
    transport.open_all()
    await asyncio.wait_for(running, 5)
    assert sorted(c.delivery_id for c in store.completed) == list(range(1, 11))
    assert {c.outcome for c in store.completed if c.delivery_id == 9} == {
        outcomes.Delivered("ref-9")
    }
    assert transport.peak == 3
    assert set(store.limits) == {2}


async def test_an_idle_channel_waits_for_work_instead_of_claiming_in_a_loop() -> None:
    store = QueueStore(total=0)
    delivering = Delivering(store, FixedClock(), {Channel.APNS: GatedTransport()})
    stop = asyncio.Event()
    running = asyncio.create_task(delivering.run(stop))
    await store.claimed_once.wait()
    await _settle()
    assert store.claims == 1
    stop.set()
    await asyncio.wait_for(running, 5)
    assert store.claims == 1


async def test_a_stop_lets_the_batches_in_flight_finish_and_claims_nothing_more() -> None:
    store = QueueStore(total=100)
    transport = GatedTransport()
    delivering = Delivering(store, FixedClock(), {Channel.APNS: transport}, batch=10, concurrency=2)
    stop = asyncio.Event()
    running = asyncio.create_task(delivering.run(stop))
    await transport.started.get()
    await transport.started.get()
    stop.set()
    await _settle()
    assert not running.done()  # two batches are still with the provider
    transport.open_all()
    await asyncio.wait_for(running, 5)
    assert sorted(c.delivery_id for c in store.completed) == list(range(1, 21))
    assert store.claims == 2


async def test_a_batch_that_fails_is_logged_and_the_others_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = QueueStore(total=4)
    transport = GatedTransport(fail_first=True)
    delivering = Delivering(store, FixedClock(), {Channel.APNS: transport}, batch=2, concurrency=2)
    stop = asyncio.Event()
    running = asyncio.create_task(delivering.run(stop))
    await transport.started.get()
    await transport.started.get()
    with caplog.at_level(logging.ERROR):
        transport.open_all()
        await _settle()
    stop.set()
    await asyncio.wait_for(running, 5)
    # The failed batch's leases run out in the store; the other batch was recorded.
    assert [c.delivery_id for c in store.completed] == [3, 4]
    assert "delivery batch failed" in caplog.text


def test_batch_and_concurrency_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Delivering(QueueStore(0), FixedClock(), {}, batch=0)
    with pytest.raises(ValueError, match="at least 1"):
        Delivering(QueueStore(0), FixedClock(), {}, concurrency=0)
