"""Digests: send each recipient's batch of a rule's events once its window has passed.

Routing adds every item a digest rule decides to the recipient's open digest (one per rule,
digest key value and channel, due a window after its first entry); this loop closes those that
came due, each into one email delivery that the email transport renders as a list
(`services.mailing`). Digests are rows, so a restart only delays them.
"""

from __future__ import annotations

from datetime import datetime

from clarion.services.ports import Clock, Store
from clarion.services.sweeping import Sweep

POLL_INTERVAL_SECONDS = 1.0
"""How often the loop looks for due digests when the last look found none: windows are at
least a minute, so a second late is nothing, and an idle poll is one indexed query."""

BATCH = 500
"""Digests closed per transaction."""


class Digesting(Sweep):
    """Closes due digests, a batch per transaction, until none is due."""

    what = "digests closed"
    action = "digested"

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        interval: float = POLL_INTERVAL_SECONDS,
        batch: int = BATCH,
    ) -> None:
        super().__init__(clock, interval=interval, batch=batch)
        self._store = store

    async def _take(self, now: datetime, limit: int) -> int:
        return await self._store.digest_due(now=now, limit=limit)
