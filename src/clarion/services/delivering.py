"""Delivering through transports: claim due deliveries, send, record what the provider said.

This is where provider outcomes become registry changes, so that no transport writes to the
database (each is a thin shell over its wire module). Realtime channels are not here: their
deliveries wait for the user to connect (see `realtime`).
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

LEASE_SECONDS = 60.0  # longer than any provider call's timeout, so a live sender keeps its lease
IDLE_POLL_SECONDS = 0.5


class Delivering:
    """Runs the transports of every non-realtime channel."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        transports: Mapping[Channel, Transport],
        *,
        batch: int = 100,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._transports = dict(transports)
        self._batch = batch
        self._rng = rng or random.Random()

    async def deliver_once(self, channel: Channel) -> int:
        """Claim and send one batch of `channel`; how many deliveries were attempted."""
        transport = self._transports[channel]
        claimed = await self._store.claim_deliveries(
            channel, limit=self._batch, lease_seconds=LEASE_SECONDS, now=self._clock.now()
        )
        if not claimed:
            return 0
        results = await transport.send(claimed)
        await self._store.complete_deliveries(
            self._completions(claimed, results), self._clock.now()
        )
        return len(claimed)

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
        """Deliver on every channel with a transport until `stop` is set."""
        async with asyncio.TaskGroup() as group:
            for channel in self._transports:
                group.create_task(self._run_channel(channel, stop))

    async def _run_channel(self, channel: Channel, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                sent = await self.deliver_once(channel)
            except Exception:
                log.exception("delivery batch failed", extra={"channel": str(channel)})
                sent = 0
            if not sent:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), IDLE_POLL_SECONDS)
