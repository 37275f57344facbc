"""How much accepted work waits for the relay: the unpublished outbox entries, counted cheaply.

The count walks the ``(published_at, id)`` index over the entries whose ``published_at`` is
null, and stops at a bound: the API asks whether the backlog is over its limit, not how large
it is, so a backlog of millions costs what a backlog at the limit costs.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from clarion.adapters.storage import engines
from clarion.adapters.storage.tables import outbox


class SqlBacklog:
    """The outbox backlog, on the store's engine."""

    def __init__(
        self, engine: AsyncEngine, now: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self._engine = engine
        self._now = now

    async def unpublished(self, up_to: int) -> int:
        """Outbox entries due and not yet on the bus, counted up to `up_to`. Entries of
        events scheduled for later are not a backlog: they wait for their time.

        Raises:
            errors.Unavailable: the database cannot be reached.
        """
        waiting = (
            sa.select(outbox.c.id)
            .where(
                outbox.c.published_at.is_(None),
                outbox.c.available_at <= self._now(),
            )
            .limit(up_to)
            .subquery()
        )
        async with engines.reading(self._engine) as conn:
            counted = await conn.scalar(sa.select(sa.func.count()).select_from(waiting))
        return int(counted or 0)
