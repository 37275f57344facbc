"""Escalation: fire the rules' follow-ups of notifications not acknowledged in time.

Routing stores one timer per recipient and kind (`domain.escalations`); this loop fires those
that come due: a push not `received` is resent once, a notification not `read` goes out by
email. The timers are rows, so a restart only delays them; reading a notification cancels its
timers in the same transaction, so nothing fires for what the user has already seen.
"""

from __future__ import annotations

from datetime import datetime

from clarion.services.ports import Clock, Store
from clarion.services.sweeping import Sweep

POLL_INTERVAL_SECONDS = 1.0
"""How often the loop looks for due escalations when the last look found none: delays are
minutes long, so a second late is nothing, and an idle poll is one indexed query."""

BATCH = 500
"""Escalations fired per transaction: a few statements each, however many rows."""


class Escalating(Sweep):
    """Fires due escalations, a batch per transaction, until none is due."""

    what = "escalations settled"
    action = "escalated"

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
        return await self._store.escalate_due(now=now, limit=limit)
