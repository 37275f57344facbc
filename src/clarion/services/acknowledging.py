"""Receipts: a device says it received or read an item."""

from __future__ import annotations

from clarion.domain import errors
from clarion.domain.channels import Channel
from clarion.domain.statuses import Status
from clarion.services.ports import Bus, Clock, Moved, Store
from clarion.services.routing import REALTIME_CHANNEL

RECEIPTS = frozenset({Status.RECEIVED, Status.READ})


class Acknowledging:
    """Applies receipts and tells the user's other sessions."""

    def __init__(self, store: Store, bus: Bus, clock: Clock) -> None:
        self._store = store
        self._bus = bus
        self._clock = clock

    async def report(
        self,
        tenant_id: str,
        user_id: int,
        item_id: int,
        status: Status,
        *,
        channel: Channel | None,
    ) -> Moved:
        """Advance the user's item to `status`; a repeated or late receipt changes nothing.

        Raises:
            errors.InvalidRequest: `status` is not a receipt.
            errors.NotFound: the item is not this user's.
        """
        if status not in RECEIPTS:
            raise errors.InvalidRequest("a receipt is 'received' or 'read'")
        moved = await self._store.apply_receipt(
            tenant_id,
            user_id,
            item_id,
            status,
            channel=channel,
            cause=f"receipt:{channel or 'api'}",
            now=self._clock.now(),
        )
        if moved is None:
            raise errors.NotFound("no such notification")
        if moved.changed:
            await self._bus.broadcast(
                REALTIME_CHANNEL,
                {
                    "kind": "status",
                    "tenant_id": tenant_id,
                    "user_id": user_id,
                    "item_id": item_id,
                    "status": str(moved.status),
                },
            )
        return moved
