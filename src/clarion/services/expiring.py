"""Expiry: what is still undelivered when its notification expires is dropped as `expired`.

Three places keep an expired notification from going out late: a claim expires the deliveries
it would otherwise hand to a transport, the gateway's backlog leaves expired items out, and
this sweep moves whatever is left pending (a websocket delivery nobody connected for, a push
waiting for its next retry) to `expired`, so that reports and status webhooks say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from clarion.services.ports import Clock, Store

log = logging.getLogger(__name__)

SWEEP_INTERVAL_SECONDS = 5.0
"""How often the sweep runs. It only records what is already withheld (claims and the backlog
check expiry themselves), so a few seconds late costs nothing but a late status."""

SWEEP_BATCH = 1000
"""Rows moved per transaction: large enough to clear a big fan-out quickly, small enough that
one transaction holds SQLite's write lock for a moment only."""

FAILURE_BACKOFF_MAX = 30.0  # longest pause between sweeps while the database is unreachable


class Expiring:
    """Moves pending items and deliveries of expired notifications to `expired`."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        interval: float = SWEEP_INTERVAL_SECONDS,
        batch: int = SWEEP_BATCH,
    ) -> None:
        self._store = store
        self._clock = clock
        self._interval = interval
        self._batch = batch

    async def expire_once(self) -> int:
        """Expire everything overdue now, a batch per transaction; how many rows moved."""
        total = 0
        while True:
            moved = await self._store.expire_overdue(now=self._clock.now(), limit=self._batch)
            total += moved
            if moved < self._batch:
                break
        if total:
            log.info("expired undelivered work", extra={"action": "expired", "count": total})
        return total

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep every `interval` until `stop` is set; failures are logged and retried."""
        failures = 0
        while not stop.is_set():
            try:
                await self.expire_once()
            except Exception as exc:
                failures += 1
                log.warning(
                    "expiry sweep failed; retrying",
                    extra={"action": "expiry_failed", "failures": failures, "error": str(exc)},
                )
            else:
                failures = 0
            pause = min(FAILURE_BACKOFF_MAX, self._interval * 2 ** min(failures, 8))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)
