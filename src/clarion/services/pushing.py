"""Push content: the tenant's ``push`` template rendered per user and locale, and what a push
carries besides its text (the badge, sound, collapse id, thread id and deep link).

`PushingTransport` wraps each push provider's transport (as `services.pausing` does): for a
batch it reads the tenant's settings (its default locale) and its push templates once per
(event type, category), counts every recipient's unread items in one query, renders each
claim's title and body in the sandbox (on a worker thread: rendering is CPU work), and hands
the provider claims whose item carries the rendered text and whose `Claimed.push` carries the
extras. Without a template the notification's own title and body go out. A template that
cannot render this event is `Rejected` with the reason: every retry would fail alike. The
adapters stay ignorant of templates; they only read `Claimed.push`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Protocol

from clarion.domain import errors, outcomes
from clarion.domain.channels import Channel
from clarion.domain.outcomes import Outcome
from clarion.domain.records import PushExtras
from clarion.services.mailing import (
    SETTINGS_CACHE_SECONDS,
    Enricher,
    TemplateSource,
    enriched,
    template_variables,
)
from clarion.services.ports import Claimed, Clock, TenantSettings, Transport
from clarion.services.templates import (
    EmailTemplate,
    Part,
    Renderer,
    TemplateKey,
    choose_template,
)

log = logging.getLogger(__name__)

PUSH_TEMPLATES = "push"
"""The template channel every push provider renders from (`PUT /v1/templates/{key}`)."""


class PushStore(Protocol):
    """What push content needs of the store."""

    async def tenant_settings(self, tenant_id: str) -> TenantSettings | None: ...

    async def unread_totals(
        self, tenant_id: str, external_ids: Sequence[str]
    ) -> dict[str, int]: ...


@dataclasses.dataclass(frozen=True, slots=True)
class _Cached:
    default_locale: str
    at: datetime


class PushingTransport:
    """A push `Transport` that renders each claim's content, then delegates to `inner`."""

    def __init__(
        self,
        inner: Transport,
        *,
        store: PushStore,
        templates: TemplateSource,
        clock: Clock,
        renderer: Renderer | None = None,
        cache_seconds: float = SETTINGS_CACHE_SECONDS,
        enricher: Enricher | None = None,
    ) -> None:
        self._inner = inner
        self._enricher = enricher
        self._store = store
        self._templates = templates
        self._clock = clock
        self._renderer = renderer or Renderer()
        self._cache_seconds = cache_seconds
        self._locales: dict[str, _Cached] = {}
        self.channel: Channel = inner.channel

    @property
    def inner(self) -> Transport:
        """The wrapped transport."""
        return self._inner

    async def send(self, batch: Sequence[Claimed]) -> Sequence[Outcome]:
        """The inner transport's outcomes for the claims that rendered, `Rejected` for those
        that did not, in order."""
        by_tenant: dict[str, list[int]] = {}
        for index, claimed in enumerate(batch):
            by_tenant.setdefault(claimed.tenant_id, []).append(index)
        prepared: dict[int, Claimed | Outcome] = {}
        for tenant_id, indexes in by_tenant.items():
            claims = [batch[i] for i in indexes]
            try:
                found = await self._prepare_enriched(tenant_id, claims)
            except Exception:
                # A store failure: nothing was sent, so all of them wait and retry.
                log.exception("push content failed", extra={"tenant": tenant_id})
                found = [outcomes.RetryLater("could not prepare the push")] * len(claims)
            prepared.update(zip(indexes, found, strict=True))
        ready = [prepared[i] for i in range(len(batch))]
        to_send = [c for c in ready if isinstance(c, Claimed)]
        sent = iter(await self._inner.send(to_send) if to_send else [])
        return [next(sent) if isinstance(c, Claimed) else c for c in ready]

    async def _prepare_enriched(
        self, tenant_id: str, claims: Sequence[Claimed]
    ) -> list[Claimed | Outcome]:
        prepared = await enriched(self._enricher, tenant_id, claims)
        ready = [c for c in prepared if isinstance(c, Claimed)]
        rendered = iter(await self._prepare(tenant_id, ready) if ready else [])
        return [next(rendered) if isinstance(c, Claimed) else c for c in prepared]

    async def _prepare(self, tenant_id: str, claims: Sequence[Claimed]) -> list[Claimed | Outcome]:
        default_locale = await self._default_locale(tenant_id)
        templates: dict[tuple[str, str | None], Mapping[TemplateKey, EmailTemplate]] = {}
        for claimed in claims:
            key = (claimed.item.type, claimed.item.category)
            if key not in templates:
                templates[key] = await self._templates.templates_for(
                    tenant_id, PUSH_TEMPLATES, event_type=key[0], category=key[1]
                )
        counted = [c.item.user for c in claims if c.item.push.get("badge") is True]
        badges = await self._store.unread_totals(tenant_id, counted) if counted else {}
        return await asyncio.to_thread(self._render_all, claims, templates, badges, default_locale)

    def _render_all(
        self,
        claims: Sequence[Claimed],
        templates: Mapping[tuple[str, str | None], Mapping[TemplateKey, EmailTemplate]],
        badges: Mapping[str, int],
        default_locale: str,
    ) -> list[Claimed | Outcome]:
        found: list[Claimed | Outcome] = []
        for claimed in claims:
            item = claimed.item
            chosen = choose_template(
                templates[(item.type, item.category)],
                event_type=item.type,
                category=item.category,
                channel=PUSH_TEMPLATES,
                user_locale=claimed.locale,
                tenant_default_locale=default_locale,
            )
            badge = badges.get(item.user, 0) if item.push.get("badge") is True else None
            extras = extras_of(item.push, badge)
            if chosen is None:
                found.append(dataclasses.replace(claimed, push=extras))
                continue
            variables = template_variables(claimed, "")
            try:
                title = self._renderer.render(chosen[1].subject, Part.LINE, variables)
                body = self._renderer.render(chosen[1].text, Part.TEXT, variables)
            except errors.InvalidRequest as exc:
                found.append(outcomes.Rejected(exc.message))
                continue
            rendered = dataclasses.replace(item, title=title or None, body=body or None)
            found.append(dataclasses.replace(claimed, item=rendered, push=extras))
        return found

    async def _default_locale(self, tenant_id: str) -> str:
        now = self._clock.now()
        cached = self._locales.get(tenant_id)
        if cached is not None and 0 <= (now - cached.at).total_seconds() < self._cache_seconds:
            return cached.default_locale
        settings = await self._store.tenant_settings(tenant_id)
        locale = "en" if settings is None else settings.default_locale
        self._locales[tenant_id] = _Cached(locale, now)
        return locale


def extras_of(options: Mapping[str, object], badge: int | None) -> PushExtras:
    """The extras of one push: the event's ``push`` options (strings only) and the badge
    (None: leave the app's badge alone)."""

    def text(key: str) -> str | None:
        value = options.get(key)
        return value if isinstance(value, str) and value else None

    return PushExtras(
        badge=badge,
        sound=text("sound"),
        collapse_id=text("collapse_id"),
        thread_id=text("thread_id"),
        link=text("link"),
    )
