"""Escalation: fire the rules' follow-ups of notifications not acknowledged in time.

Routing stores one timer per recipient and kind (`domain.escalations`); this loop fires those
that come due: a push not `received` is resent once, a notification not `read` goes out by
email. The timers are rows, so a restart only delays them; reading a notification cancels its
timers in the same transaction, so nothing fires for what the user has already seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from clarion.services.ports import Clock, Store

log = logging.getLogger(__name__)

POLL_INTERVAL_SECONDS = 1.0
"""How often the loop looks for due escalations when the last look found none: delays are
minutes long, so a second late is nothing, and an idle poll is one indexed query."""

BATCH = 500
"""Escalations fired per transaction: a few statements each, however many rows."""

FAILURE_BACKOFF_MAX = 30.0  # longest pause between polls while the database is unreachable


class Escalating:
    """Fires due escalations, a batch per transaction, until none is due."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        interval: float = POLL_INTERVAL_SECONDS,
        batch: int = BATCH,
    ) -> None:
        self._store = store
        self._clock = clock
        self._interval = interval
        self._batch = batch

    async def escalate_once(self) -> int:
        """Fire everything due now; how many escalations were settled (fired or cancelled)."""
        total = 0
        while True:
            settled = await self._store.escalate_due(now=self._clock.now(), limit=self._batch)
            total += settled
            if settled < self._batch:
                break
        if total:
            log.info("escalations settled", extra={"action": "escalated", "count": total})
        return total

    async def run(self, stop: asyncio.Event) -> None:
        """Poll every `interval` until `stop` is set; failures are logged and retried."""
        failures = 0
        while not stop.is_set():
            try:
                await self.escalate_once()
            except Exception as exc:
                failures += 1
                log.warning(
                    "escalation failed; retrying",
                    extra={"action": "escalation_failed", "failures": failures, "error": str(exc)},
                )
            else:
                failures = 0
            pause = min(FAILURE_BACKOFF_MAX, self._interval * 2 ** min(failures, 8))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)
