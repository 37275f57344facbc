"""Digests: send each recipient's batch of a rule's events once its window has passed.

Routing adds every item a digest rule decides to the recipient's open digest (one per rule,
digest key value and channel, due a window after its first entry); this loop closes those that
came due, each into one email delivery that the email transport renders as a list
(`services.mailing`). Digests are rows, so a restart only delays them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from clarion.services.ports import Clock, Store

log = logging.getLogger(__name__)

POLL_INTERVAL_SECONDS = 1.0
"""How often the loop looks for due digests when the last look found none: windows are at
least a minute, so a second late is nothing, and an idle poll is one indexed query."""

BATCH = 500
"""Digests closed per transaction."""

FAILURE_BACKOFF_MAX = 30.0  # longest pause between polls while the database is unreachable


class Digesting:
    """Closes due digests, a batch per transaction, until none is due."""

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

    async def digest_once(self) -> int:
        """Close everything due now; how many digests were closed (sent or empty)."""
        total = 0
        while True:
            closed = await self._store.digest_due(now=self._clock.now(), limit=self._batch)
            total += closed
            if closed < self._batch:
                break
        if total:
            log.info("digests closed", extra={"action": "digested", "count": total})
        return total

    async def run(self, stop: asyncio.Event) -> None:
        """Poll every `interval` until `stop` is set; failures are logged and retried."""
        failures = 0
        while not stop.is_set():
            try:
                await self.digest_once()
            except Exception as exc:
                failures += 1
                log.warning(
                    "digest failed; retrying",
                    extra={"action": "digest_failed", "failures": failures, "error": str(exc)},
                )
            else:
                failures = 0
            pause = min(FAILURE_BACKOFF_MAX, self._interval * 2 ** min(failures, 8))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)
