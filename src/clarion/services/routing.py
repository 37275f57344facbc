"""Routing: turn an accepted event into a notification, inbox items and deliveries."""

from __future__ import annotations

import logging
import uuid

from clarion.domain import routing
from clarion.services.ports import Bus, Clock, Routed, Store
from clarion.services.ruling import Ruling

log = logging.getLogger(__name__)

REALTIME_CHANNEL = "realtime"
"""The broadcast channel on which gateways hear of new notifications and status changes."""


class Routing:
    """Routes events; safe to run twice for the same event (the second run does nothing)."""

    def __init__(self, store: Store, bus: Bus, clock: Clock, ruling: Ruling | None = None) -> None:
        self._store = store
        self._bus = bus
        self._clock = clock
        # The tenants' routing rules; without them, the event's channels or the defaults.
        self._ruling = ruling

    async def route(self, event_id: str) -> Routed | None:
        """Route one event and tell the gateways; None if it was routed before or is unknown."""
        if self._ruling is None:
            routed = await self._store.route_event(
                event_id,
                notification_id=str(uuid.uuid4()),
                channels=routing.channels_for,
                now=self._clock.now(),
            )
        else:
            # Rules are decided before the routing transaction, so that reading them (and the
            # recipients' attributes, when a condition needs them) holds no write lock.
            event = await self._store.pending_event(event_id)
            if event is None:
                return None
            tenant_id, spec = event.tenant_id, event.spec
            plan = await self._ruling.plan(
                tenant_id, spec, lambda: self._store.audience_attributes(tenant_id, spec)
            )
            routed = await self._store.route_event(
                event_id,
                notification_id=str(uuid.uuid4()),
                channels=lambda _: plan.channels,
                now=self._clock.now(),
                only=plan.only,
                rule=plan.rule,
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
