"""A user's inbox as their apps see it: listing, counting, and marking read."""

from __future__ import annotations

from datetime import datetime

from clarion.domain import errors
from clarion.domain.notifications import InboxItem
from clarion.domain.statuses import UNREAD, VISIBLE, Status
from clarion.services.acknowledging import Acknowledging, tell_sessions
from clarion.services.ports import Bus, Clock, InboxQuery, Moved, Store, UnreadCounts
from clarion.services.tokens import Principal

MAX_PAGE = 200  # items per page: a phone's screenful many times over, a bounded query
BROADCAST_IDS = 500  # item ids per realtime message after a bulk read

FILTERS: dict[str, frozenset[Status]] = {
    "unread": UNREAD,
    "read": frozenset({Status.READ}),
    "all": VISIBLE,
}


class Inboxes:
    """The inbox use cases, always for the user a token speaks for."""

    def __init__(self, store: Store, bus: Bus, clock: Clock, acknowledging: Acknowledging) -> None:
        self._store = store
        self._bus = bus
        self._clock = clock
        self._acknowledging = acknowledging

    async def page(
        self,
        me: Principal,
        *,
        status: str = "all",
        group: str | None = None,
        category: str | None = None,
        since: datetime | None = None,
        before: int | None = None,
        limit: int = 50,
    ) -> list[InboxItem]:
        """A page of the user's items, newest first; `before` is the previous page's cursor.

        Raises:
            errors.InvalidRequest: unknown status filter, or a limit out of bounds.
        """
        if status not in FILTERS:
            raise errors.InvalidRequest("status must be unread, read or all")
        if not 0 < limit <= MAX_PAGE:
            raise errors.InvalidRequest(f"limit must be between 1 and {MAX_PAGE}")
        return await self._store.inbox(
            me.tenant_id,
            me.user_id,
            InboxQuery(
                statuses=FILTERS[status],
                group=group,
                category=category,
                since=since,
                before=before,
                limit=limit,
            ),
        )

    async def get(self, me: Principal, item_id: int) -> InboxItem:
        """One of the user's items.

        Raises:
            errors.NotFound: not this user's (or no such item).
        """
        item = await self._store.inbox_item(me.tenant_id, me.user_id, item_id)
        if item is None:
            raise errors.NotFound("no such notification")
        return item

    async def unread_counts(self, me: Principal) -> UnreadCounts:
        """Unread items in all, per group and per category."""
        return await self._store.unread_counts(me.tenant_id, me.user_id)

    async def receipt(self, me: Principal, item_id: int, status: Status) -> Moved:
        """The user's app received or read one item (idempotent, never backwards)."""
        return await self._acknowledging.report(
            me.tenant_id, me.user_id, item_id, status, channel=None
        )

    async def read_all(
        self, me: Principal, *, group: str | None = None, category: str | None = None
    ) -> list[int]:
        """Mark every unread item (of a group and/or category) read; the ids that moved.

        The user's live sockets are told, in messages of bounded size; if the bus fails, the
        items are read all the same (see `tell_sessions`).
        """
        moved = await self._store.read_all(
            me.tenant_id,
            me.user_id,
            group=group,
            category=category,
            cause="receipt:read-all",
            now=self._clock.now(),
        )
        for start in range(0, len(moved), BROADCAST_IDS):
            told = await tell_sessions(
                self._bus,
                {
                    "kind": "statuses",
                    "tenant_id": me.tenant_id,
                    "user_id": me.user_id,
                    "item_ids": moved[start : start + BROADCAST_IDS],
                    "status": str(Status.READ),
                },
            )
            if not told:
                break  # the bus is down: the rest would fail the same way, each after a wait
        return moved
