"""Routing: turn an accepted event into a notification, inbox items and deliveries."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol

from clarion.domain import errors, routing
from clarion.domain.channels import Channel
from clarion.domain.records import StoredEvent
from clarion.domain.templates import EmailTemplate, TemplateKey
from clarion.services.ports import Bus, Clock, PlannedEvent, Routed, Store
from clarion.services.ruling import Ruling
from clarion.services.templates import Part, Renderer, choose_template

log = logging.getLogger(__name__)

REALTIME_CHANNEL = "realtime"
"""The broadcast channel on which gateways hear of new notifications and status changes."""

INBOX_TEMPLATES = "inbox"
"""The template channel of in-app (inbox) content, rendered at routing per recipient locale."""

TEMPLATE_CACHE_SECONDS = 5.0
_TEMPLATE_CACHE_SIZE = 1024


class InboxTemplateSource(Protocol):
    """The tenant's templates (the template store), as inbox rendering needs them."""

    async def templates_for(
        self, tenant_id: str, channel: str, *, event_type: str, category: str | None
    ) -> Mapping[TemplateKey, EmailTemplate]: ...

    async def default_locale(self, tenant_id: str) -> str: ...


InboxContent = dict[str | None, tuple[str, str]]
"""Recipient locale (None: none) -> the inbox item's rendered title and body."""


class Routing:
    """Routes events; safe to run twice for the same event (the second run does nothing)."""

    def __init__(
        self,
        store: Store,
        bus: Bus,
        clock: Clock,
        ruling: Ruling | None = None,
        templates: InboxTemplateSource | None = None,
        renderer: Renderer | None = None,
    ) -> None:
        self._store = store
        self._bus = bus
        self._clock = clock
        # The tenants' routing rules; without them, the event's channels or the defaults.
        self._ruling = ruling
        # The tenants' `inbox` templates; without them, items show the notification's own text.
        self._templates = templates
        self._renderer = renderer or Renderer()
        self._cache: dict[
            tuple[str, str, str | None], tuple[float, Mapping[TemplateKey, EmailTemplate], str]
        ] = {}

    async def route(self, event_id: str) -> Routed | None:
        """Route one event and tell the gateways; None if it was routed before or is unknown."""
        [routed] = await self.route_many([event_id])
        return routed

    async def route_many(self, event_ids: Sequence[str]) -> list[Routed | None]:
        """Route the events in one write transaction and tell the gateways: one answer per id,
        in order, None for an event routed before, unknown, or named twice. A batch costs
        about the statements of one event, so routers take the events the bus has ready
        together (see `entrypoints.worker.routers`)."""
        if self._ruling is None and self._templates is None:
            plans = [PlannedEvent(event_id, str(uuid.uuid4())) for event_id in event_ids]
        else:
            # Rules and inbox content are decided before the routing transaction, so that
            # reading them (and the recipients' attributes or locales) holds no write lock.
            pending = await self._store.pending_events(event_ids)
            plans = [await self._plan(event) for event in pending]
        routed = await self._store.route_events(plans, now=self._clock.now())
        by_event = {r.event_id: r for r in routed if r is not None}
        # An id named twice is routed once: the first of them gets the answer.
        answers = [by_event.pop(event_id, None) for event_id in event_ids]
        for done in (r for r in answers if r is not None):
            log.info(
                "event routed",
                extra={
                    "action": "event_routed",
                    "tenant": done.tenant_id,
                    "event_id": done.event_id,
                    "recipients": done.recipients,
                    "deliveries": done.deliveries,
                    "topic_sends": done.topic_sends,
                },
            )
            await self._bus.broadcast(
                REALTIME_CHANNEL,
                {
                    "kind": "routed",
                    "tenant_id": done.tenant_id,
                    "notification_id": done.notification_id,
                },
            )
        return answers

    async def _plan(self, event: StoredEvent) -> PlannedEvent:
        """What the tenant's rules and inbox templates decide for the event."""
        tenant_id, spec = event.tenant_id, event.spec
        channels: tuple[Channel, ...] | None = None
        only: Mapping[Channel, Collection[str]] = {}
        rule = None
        if self._ruling is not None:
            plan = await self._ruling.plan(
                tenant_id, spec, lambda: self._store.audience_attributes(tenant_id, spec)
            )
            channels, only, rule = tuple(plan.channels), plan.only or {}, plan.rule
        inbox = await self._inbox_content(event)
        return PlannedEvent(
            event.id, str(uuid.uuid4()), channels, only=only, rule=rule, inbox=inbox or None
        )

    async def _inbox_content(self, event: StoredEvent) -> InboxContent:
        """The event's inbox title and body per recipient locale, from the tenant's `inbox`
        templates: one render per distinct locale among the recipients, not per user, so a
        template sees ``user.locale`` but no user id and no attributes. Empty when the tenant
        has no inbox template for the event, or when rendering fails (logged; the items then
        show the notification's own title and body)."""
        if self._templates is None:
            return {}
        tenant_id, spec = event.tenant_id, event.spec
        try:
            templates, default_locale = await self._inbox_templates(
                tenant_id, spec.type, spec.category
            )
            if not templates:
                return {}
            locales = await self._store.audience_locales(tenant_id, spec)
            return await asyncio.to_thread(
                self._render_inbox, event, templates, default_locale, locales
            )
        except errors.InvalidRequest as exc:
            log.warning(
                "inbox template failed",
                extra={
                    "action": "inbox_template_failed",
                    "tenant": tenant_id,
                    "event_id": event.id,
                    "reason": exc.message,
                },
            )
            return {}

    def _render_inbox(
        self,
        event: StoredEvent,
        templates: Mapping[TemplateKey, EmailTemplate],
        default_locale: str,
        locales: set[str | None],
    ) -> InboxContent:
        spec = event.spec
        found: InboxContent = {}
        for locale in locales:
            chosen = choose_template(
                templates,
                event_type=spec.type,
                category=spec.category,
                channel=INBOX_TEMPLATES,
                user_locale=locale,
                tenant_default_locale=default_locale,
            )
            if chosen is None:
                continue
            variables: dict[str, Any] = {
                "event": {
                    "id": event.id,
                    "type": spec.type,
                    "title": spec.title,
                    "body": spec.body,
                    "data": spec.data,
                    "category": spec.category,
                    "group": routing.group_of(spec),
                },
                "user": {"id": None, "locale": locale, "attributes": {}},
                "group": {},
                "enrichment": {},
            }
            title = self._renderer.render(chosen[1].subject, Part.LINE, variables)
            body = self._renderer.render(chosen[1].text, Part.TEXT, variables)
            found[locale] = (title, body)
        return found

    async def _inbox_templates(
        self, tenant_id: str, event_type: str, category: str | None
    ) -> tuple[Mapping[TemplateKey, EmailTemplate], str]:
        """The tenant's inbox templates for the event type or category and its default locale,
        cached for `TEMPLATE_CACHE_SECONDS`: one read per tenant and event kind, not per event."""
        assert self._templates is not None
        key = (tenant_id, event_type, category)
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and now < cached[0]:
            return cached[1], cached[2]
        templates = await self._templates.templates_for(
            tenant_id, INBOX_TEMPLATES, event_type=event_type, category=category
        )
        default_locale = await self._templates.default_locale(tenant_id) if templates else "en"
        if len(self._cache) >= _TEMPLATE_CACHE_SIZE:
            self._cache.clear()
        self._cache[key] = (now + TEMPLATE_CACHE_SECONDS, templates, default_locale)
        return templates, default_locale
