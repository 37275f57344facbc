"""The loop the worker's periodic sweeps share (expiry, escalations, digests): settle what is
due a batch per transaction until a batch comes back short, then wait, and back off while the
database is unreachable. Each sweep is a `Sweep` with its own store call and log names."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime

from clarion.services.ports import Clock

log = logging.getLogger(__name__)

FAILURE_BACKOFF_MAX = 30.0  # longest pause between sweeps while the database is unreachable


class Sweep:
    """Runs `_take(now, limit)` (how many rows it settled) until nothing is due, every
    `interval` seconds until stopped. Subclasses name what they settle in `what` (for logs:
    ``"escalations settled"``) and `action` (the log's ``action`` field)."""

    what = "rows settled"
    action = "swept"

    def __init__(self, clock: Clock, *, interval: float, batch: int) -> None:
        self._clock = clock
        self._interval = interval
        self._batch = batch

    async def _take(self, now: datetime, limit: int) -> int:
        raise NotImplementedError

    async def once(self) -> int:
        """Settle everything due now, a batch per transaction; how many rows were settled."""
        total = 0
        while True:
            settled = await self._take(self._clock.now(), self._batch)
            total += settled
            if settled < self._batch:
                break
        if total:
            log.info(self.what, extra={"action": self.action, "count": total})
        return total

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep every `interval` until `stop` is set; failures are logged and retried, with
        a pause that doubles with each failure in a row, up to `FAILURE_BACKOFF_MAX`."""
        failures = 0
        while not stop.is_set():
            try:
                await self.once()
            except Exception as exc:
                failures += 1
                log.warning(
                    f"{self.action} sweep failed; retrying",
                    extra={
                        "action": f"{self.action}_failed",
                        "failures": failures,
                        "error": str(exc),
                    },
                )
            else:
                failures = 0
            pause = min(FAILURE_BACKOFF_MAX, self._interval * 2 ** min(failures, 8))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)
