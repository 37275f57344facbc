"""Delivering through transports: claim due deliveries, send, record what the provider said.

This is where provider outcomes become registry changes, so that no transport writes to the
database (each is a thin shell over its wire module). Realtime channels are not here: their
deliveries wait for the user to connect (see `realtime`).

Per channel, up to `concurrency` batches are in flight: the next batch is claimed and sent
while earlier ones wait for the provider or are being recorded, so neither the database nor
the provider waits for the other. An idle channel (nothing due) is polled every
`IDLE_POLL_SECONDS`, never in a busy loop; retries wait in the database (`next_attempt_at`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Mapping, Sequence
from datetime import timedelta

from clarion.domain import outcomes, retrying
from clarion.domain.channels import Channel
from clarion.services.ports import Claimed, Clock, Completion, Store, Transport

log = logging.getLogger(__name__)

LEASE_SECONDS = 60.0  # WorkerSettings.delivery_lease_seconds
IDLE_POLL_SECONDS = 0.5
DEFAULT_BATCH = 500  # WorkerSettings.delivery_batch
DEFAULT_CONCURRENCY = 4  # WorkerSettings.delivery_concurrency


class Delivering:
    """Runs the transports of every non-realtime channel."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        transports: Mapping[Channel, Transport],
        *,
        batch: int = DEFAULT_BATCH,
        concurrency: int = DEFAULT_CONCURRENCY,
        lease_seconds: float = LEASE_SECONDS,
        rng: random.Random | None = None,
    ) -> None:
        if batch < 1 or concurrency < 1:
            raise ValueError("batch and concurrency must be at least 1")
        self._store = store
        self._clock = clock
        self._transports = dict(transports)
        self._batch = batch
        self._concurrency = concurrency
        self._lease_seconds = lease_seconds
        self._rng = rng or random.Random()

    async def deliver_once(self, channel: Channel) -> int:
        """Claim and send one batch of `channel`; how many deliveries were attempted."""
        claimed = await self._claim(channel)
        if claimed:
            await self._deliver(channel, claimed)
        return len(claimed)

    async def _claim(self, channel: Channel) -> list[Claimed]:
        return await self._store.claim_deliveries(
            channel, limit=self._batch, lease_seconds=self._lease_seconds, now=self._clock.now()
        )

    async def _deliver(self, channel: Channel, claimed: Sequence[Claimed]) -> None:
        results = await self._transports[channel].send(claimed)
        await self._store.complete_deliveries(
            self._completions(claimed, results), self._clock.now()
        )

    def _completions(
        self, claimed: Sequence[Claimed], results: Sequence[outcomes.Outcome]
    ) -> list[Completion]:
        if len(results) != len(claimed):
            raise ValueError("a transport must answer once per delivery")
        done = []
        now = self._clock.now()
        for delivery, outcome in zip(claimed, results, strict=True):
            retry_at = None
            if isinstance(outcome, outcomes.RetryLater | outcomes.AuthFailed):
                hint = outcome.after_seconds if isinstance(outcome, outcomes.RetryLater) else None
                delay = retrying.retry_delay(
                    delivery.attempts, provider_hint=hint, jitter=self._rng.random()
                )
                if delay is None:
                    outcome = outcomes.Rejected(f"gave up after {delivery.attempts} attempts")
                else:
                    retry_at = now + timedelta(seconds=delay)
            done.append(Completion(delivery.id, delivery.fence, outcome, retry_at))
        return done

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver on every channel with a transport until `stop` is set; batches in flight
        then finish (their outcomes are recorded) before this returns."""
        async with asyncio.TaskGroup() as group:
            for channel in self._transports:
                group.create_task(self._run_channel(channel, stop))

    async def _run_channel(self, channel: Channel, stop: asyncio.Event) -> None:
        slots = asyncio.Semaphore(self._concurrency)
        async with asyncio.TaskGroup() as in_flight:
            while not stop.is_set():
                await slots.acquire()
                if stop.is_set():
                    slots.release()
                    break
                try:
                    claimed = await self._claim(channel)
                except Exception:
                    log.exception("claiming deliveries failed", extra={"channel": str(channel)})
                    claimed = []
                if not claimed:
                    slots.release()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), IDLE_POLL_SECONDS)
                    continue
                in_flight.create_task(self._deliver_batch(channel, claimed, slots))

    async def _deliver_batch(
        self, channel: Channel, claimed: Sequence[Claimed], slots: asyncio.Semaphore
    ) -> None:
        try:
            await self._deliver(channel, claimed)
        except Exception:
            # The leases run out and the deliveries are claimed again: nothing is lost.
            log.exception("delivery batch failed", extra={"channel": str(channel)})
        finally:
            slots.release()
