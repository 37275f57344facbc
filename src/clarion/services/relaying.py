"""The outbox relay: hands committed work to the bus, and hands it again if it went missing.

The database is the system of record. An event is committed with its outbox entry; the relay
publishes entries in commit order and marks them published. A bus that loses a message (a
crash of the in-process bus, a broker failover) only delays routing: any event still unrouted
after `redeliver_after` is published again. Routing is idempotent, so duplicates are harmless.

A scheduled event's entry becomes due at its `send_at`: the relay's poll (every `interval`)
picks it up then, and the sweep counts its staleness from then.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from clarion.domain.notifications import EVENTS_STREAM
from clarion.services.ports import Bus, Clock, Store

log = logging.getLogger(__name__)

PRUNE_AFTER = timedelta(days=1)  # published entries are kept a day for inspection
FAILURE_BACKOFF_MAX = 5.0  # longest pause between attempts while the database is unreachable


class Relay:
    """Moves outbox entries onto the bus."""

    def __init__(
        self,
        store: Store,
        bus: Bus,
        clock: Clock,
        *,
        batch: int,
        interval: float,
        redeliver_after: float,
    ) -> None:
        self._store = store
        self._bus = bus
        self._clock = clock
        self._batch = batch
        self._interval = interval
        self._redeliver_after = timedelta(seconds=redeliver_after)
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Something was just committed: relay now instead of at the next tick."""
        self._wake.set()

    async def relay_once(self) -> int:
        """Publish one batch of pending entries; how many went out."""
        entries = await self._store.pending_outbox(self._batch, now=self._clock.now())
        for entry in entries:
            await self._bus.publish(entry.topic, entry.payload)
        if entries:
            await self._store.mark_published([e.id for e in entries], self._clock.now())
        return len(entries)

    async def redeliver_stale(self, *, older_than: timedelta | None = None) -> int:
        """Publish again every event still unrouted after `older_than` (default: the setting)
        and not published again within that long: a page of `batch` at a time until none is
        left, so a broker that lost thousands of messages has them all back after one sweep,
        while an event that only waits in a long queue goes back at most once per window."""
        now = self._clock.now()
        cutoff = now - (self._redeliver_after if older_than is None else older_than)
        total = 0
        while True:
            # Marked no earlier than the cutoff, so that a page once taken is not taken again
            # in this sweep: the loop ends.
            stale = await self._store.take_stale_events(
                accepted_before=cutoff, limit=self._batch, now=max(now, cutoff)
            )
            for event_id in stale:
                await self._bus.publish(EVENTS_STREAM, {"event_id": event_id})
            total += len(stale)
            if len(stale) < self._batch:
                break
        if total:
            log.warning(
                "unrouted events handed to the bus again",
                extra={"action": "events_redelivered", "count": total},
            )
        return total

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until `stop` is set.

        A failure (the database or the bus unreachable) is logged and retried after a pause
        that doubles with each failure in a row, up to `FAILURE_BACKOFF_MAX`; the traceback is
        logged once per outage, not at every attempt.
        """
        sweep_every = self._redeliver_after.total_seconds()
        last_sweep = asyncio.get_running_loop().time()
        failures = 0
        while not stop.is_set():
            self._wake.clear()
            try:
                moved = await self.relay_once()
                now = asyncio.get_running_loop().time()
                if now - last_sweep >= sweep_every:
                    last_sweep = now
                    await self.redeliver_stale()
                    await self._store.prune_outbox(published_before=self._clock.now() - PRUNE_AFTER)
            except Exception as exc:
                moved = 0
                failures += 1
                if failures == 1:
                    log.exception("outbox relay failed; retrying", extra={"action": "relay_failed"})
                else:
                    log.warning(
                        "outbox relay still failing; retrying",
                        extra={"action": "relay_failed", "failures": failures, "error": str(exc)},
                    )
            else:
                if failures:
                    log.info(
                        "outbox relay recovered",
                        extra={"action": "relay_recovered", "failures": failures},
                    )
                failures = 0
            if moved >= self._batch:
                continue
            pause = self._interval
            if failures:
                pause = min(FAILURE_BACKOFF_MAX, self._interval * 2 ** min(failures, 16))
            waits = [asyncio.ensure_future(stop.wait())]
            if not failures:  # a wake-up means new work; while failing, only time helps
                waits.append(asyncio.ensure_future(self._wake.wait()))
            await asyncio.wait(waits, timeout=pause, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waits:
                waiter.cancel()
