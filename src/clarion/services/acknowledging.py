"""Receipts: a device says it received or read an item."""

from __future__ import annotations

import logging

from clarion.domain import errors
from clarion.domain.channels import Channel
from clarion.domain.notifications import JsonObject
from clarion.domain.statuses import Status
from clarion.services.ports import Bus, Clock, Moved, Store
from clarion.services.routing import REALTIME_CHANNEL

log = logging.getLogger(__name__)

RECEIPTS = frozenset({Status.RECEIVED, Status.READ})


async def tell_sessions(bus: Bus, payload: JsonObject) -> bool:
    """Broadcast a status change that is already committed; False if the bus failed.

    The registry has the change, so a broker outage must not fail the request that made it (a
    503 would invite a retry of something done). The user's other live sockets then miss the
    news, and see the new status when they next load the item or reconnect.
    """
    try:
        await bus.broadcast(REALTIME_CHANNEL, payload)
    except errors.Unavailable as exc:
        log.warning(
            "status change not broadcast; the bus is unavailable",
            extra={"action": "broadcast_failed", "kind": payload.get("kind"), "error": exc.message},
        )
        return False
    except Exception:
        log.exception(
            "status change not broadcast",
            extra={"action": "broadcast_failed", "kind": payload.get("kind")},
        )
        return False
    return True


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
            await tell_sessions(
                self._bus,
                {
                    "kind": "status",
                    "tenant_id": tenant_id,
                    "user_id": user_id,
                    "item_id": item_id,
                    "status": str(moved.status),
                },
            )
        return moved
