"""Expiry: what is still undelivered when its notification expires is dropped as `expired`.

Three places keep an expired notification from going out late: a claim expires the deliveries
it would otherwise hand to a transport, the gateway's backlog leaves expired items out, and
this sweep moves whatever is left pending (a websocket delivery nobody connected for, a push
waiting for its next retry) to `expired`, so that reports and status webhooks say so.
"""

from __future__ import annotations

from datetime import datetime

from clarion.services.ports import Clock, Store
from clarion.services.sweeping import Sweep

SWEEP_INTERVAL_SECONDS = 5.0
"""How often the sweep runs. It only records what is already withheld (claims and the backlog
check expiry themselves), so a few seconds late costs nothing but a late status."""

SWEEP_BATCH = 1000
"""Rows moved per transaction: large enough to clear a big fan-out quickly, small enough that
one transaction holds SQLite's write lock for a moment only."""


class Expiring(Sweep):
    """Moves pending items and deliveries of expired notifications to `expired`."""

    what = "expired undelivered work"
    action = "expired"

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        interval: float = SWEEP_INTERVAL_SECONDS,
        batch: int = SWEEP_BATCH,
    ) -> None:
        super().__init__(clock, interval=interval, batch=batch)
        self._store = store

    async def _take(self, now: datetime, limit: int) -> int:
        return await self._store.expire_overdue(now=now, limit=limit)
