"""Routing: turn an accepted event into a notification, inbox items and deliveries."""

from __future__ import annotations

import logging
import uuid

from clarion.domain import routing
from clarion.services.ports import Bus, Clock, Routed, Store

log = logging.getLogger(__name__)

REALTIME_CHANNEL = "realtime"
"""The broadcast channel on which gateways hear of new notifications and status changes."""


class Routing:
    """Routes events; safe to run twice for the same event (the second run does nothing)."""

    def __init__(self, store: Store, bus: Bus, clock: Clock) -> None:
        self._store = store
        self._bus = bus
        self._clock = clock

    async def route(self, event_id: str) -> Routed | None:
        """Route one event and tell the gateways; None if it was routed before or is unknown."""
        routed = await self._store.route_event(
            event_id,
            notification_id=str(uuid.uuid4()),
            channels=routing.channels_for,
            now=self._clock.now(),
        )
        if routed is None:
            return None
        log.info(
            "event routed",
            extra={
                "action": "event_routed",
                "tenant": routed.tenant_id,
                "event_id": event_id,
                "recipients": routed.recipients,
                "deliveries": routed.deliveries,
                "topic_sends": routed.topic_sends,
            },
        )
        await self._bus.broadcast(
            REALTIME_CHANNEL,
            {
                "kind": "routed",
                "tenant_id": routed.tenant_id,
                "notification_id": routed.notification_id,
            },
        )
        return routed
