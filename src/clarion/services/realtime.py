"""What the gateway needs: who a socket is, what it missed, and what to mark sent.

The gateway owns the sockets; this use case owns the registry side of realtime delivery.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from clarion.domain.channels import Channel
from clarion.domain.notifications import parse_cursor
from clarion.services.ports import Addressed, Clock, Store
from clarion.services.tokens import Principal, UserTokens


class Realtime:
    """The registry side of the WebSocket channel."""

    def __init__(self, store: Store, tokens: UserTokens, clock: Clock, *, page: int) -> None:
        self._store = store
        self._tokens = tokens
        self._clock = clock
        self._page = page

    async def identify(self, token: str) -> Principal:
        """Who a token opens a socket for (see `UserTokens.authenticate`)."""
        return await self._tokens.authenticate(token)

    async def missed(
        self, tenant_id: str, user_id: int, since: str | None
    ) -> AsyncIterator[list[Addressed]]:
        """Pages of what the user missed: all after `since`, and whatever is still pending."""
        after = None if since is None else parse_cursor(since)
        start = 0
        while True:
            page = await self._store.backlog(
                tenant_id,
                user_id,
                after=after,
                start=start,
                limit=self._page,
                now=self._clock.now(),
            )
            if page:
                yield page
            if len(page) < self._page:
                return
            start = page[-1].item.id

    async def for_notification(
        self, tenant_id: str, notification_id: str, user_ids: Sequence[int]
    ) -> list[Addressed]:
        """The notification's items for those of `user_ids` who are recipients."""
        if not user_ids:
            return []
        return await self._store.items_for_users(tenant_id, notification_id, user_ids)

    async def mark_sent(self, tenant_id: str, item_ids: Sequence[int]) -> list[int]:
        """Record that these items went out over a socket; the ids that were pending."""
        if not item_ids:
            return []
        return await self._store.mark_sent(
            tenant_id, item_ids, channel=Channel.WEBSOCKET, now=self._clock.now()
        )
