"""Email: a tenant's sender settings, and the transport that renders and sends each email.

A delivery on the email channel becomes one message to one address: the tenant's template for
the event type (or its category) in the user's locale, falling back to the tenant's default
locale, rendered in the sandbox (`services.templates`); without any template, the
notification's own title and body as plain text. Every message carries a signed one-click
``List-Unsubscribe`` link for its category (RFC 8058).

A tenant sends through one of its email credentials (SMTP, SES or SendGrid) and may name a
fallback: what the first could not send for a reason that is not the message's (the provider is
down, throttling, or refusing the credential) goes out through the fallback at once instead of
waiting for a retry. Bounces and refusals of the message itself are final on either.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from clarion.domain import errors, outcomes
from clarion.domain.channels import Channel
from clarion.domain.outcomes import Outcome
from clarion.domain.quiet_hours import QuietHours
from clarion.services.ports import (
    Claimed,
    Clock,
    Credential,
    CredentialInfo,
    Mailer,
    SenderSettings,
    TenantSettings,
)
from clarion.services.templates import (
    EmailTemplate,
    Renderer,
    TemplateKey,
    choose_template,
    normalize_locale,
)
from clarion.wire.email import Email, Mailbox, Unsubscribe

log = logging.getLogger(__name__)

EMAIL_CREDENTIALS = "email"
"""The vault's provider name for every email credential; `metadata["kind"]` says which."""

SETTINGS_CACHE_SECONDS = 5.0
"""How long a worker keeps a tenant's settings and templates: a batch of 500 emails reads them
once, and a tenant's change shows within seconds."""

MAX_NAME_LENGTH = 200


class SettingsStore(Protocol):
    """What `Mailing` and `EmailTransport` need of the store."""

    async def tenant_settings(self, tenant_id: str) -> TenantSettings | None: ...

    async def put_tenant_settings(
        self,
        tenant_id: str,
        *,
        default_locale: str,
        email: SenderSettings | None,
        now: datetime,
        quiet_hours: QuietHours | None = None,
        default_timezone: str | None = None,
    ) -> bool: ...


class NamedCredentials(Protocol):
    """What email needs of `services.credentials.Credentials`."""

    async def get(self, tenant_id: str, provider: str, name: str) -> CredentialInfo: ...

    async def load_named(self, tenant_id: str, provider: str, name: str) -> Credential | None: ...

    async def pause(self, tenant_id: str, credential_id: str, reason: str) -> bool: ...


class TemplateSource(Protocol):
    """The tenant's templates for one channel and one notification (the template store)."""

    async def templates_for(
        self, tenant_id: str, channel: str, *, event_type: str, category: str | None
    ) -> Mapping[TemplateKey, EmailTemplate]: ...


class DigestSource(Protocol):
    """The contents of digest deliveries (`Store.digest_contents`): per delivery that is a
    digest, the template name to render with and the entries' events."""

    async def digest_contents(
        self, delivery_ids: Sequence[int]
    ) -> dict[int, tuple[str, list[dict[str, Any]]]]: ...


class UnsubscribeLinks(Protocol):
    """Signed one-click unsubscribe links (`services.unsubscribing`)."""

    def link(self, tenant_id: str, user: str, category: str | None) -> Unsubscribe: ...


class Mailing:
    """A tenant's settings: its default locale and how its email goes out."""

    def __init__(self, store: SettingsStore, credentials: NamedCredentials, clock: Clock) -> None:
        self._store = store
        self._credentials = credentials
        self._clock = clock

    async def settings(self, tenant_id: str) -> TenantSettings:
        """The tenant's settings.

        Raises:
            errors.NotFound: no such tenant.
        """
        found = await self._store.tenant_settings(tenant_id)
        if found is None:
            raise errors.NotFound("no such tenant")
        return found

    async def put_settings(
        self,
        tenant_id: str,
        *,
        default_locale: str,
        email: SenderSettings | None,
        quiet_hours: QuietHours | None = None,
        default_timezone: str | None = None,
    ) -> TenantSettings:
        """Replace the tenant's settings.

        Raises:
            errors.InvalidRequest: an unreadable locale, a bad sender or reply-to address, a
                display name with a line break, a provider or fallback that is not one of the
                tenant's email credentials, a fallback that is the provider itself.
        """
        locale = normalize_locale(default_locale)
        if locale is None:
            raise _invalid("default_locale", "not a language tag such as en or pt-BR")
        if email is not None:
            email = await self._checked_sender(tenant_id, email)
        await self._store.put_tenant_settings(
            tenant_id,
            default_locale=locale,
            email=email,
            now=self._clock.now(),
            quiet_hours=quiet_hours,
            default_timezone=default_timezone,
        )
        return TenantSettings(
            default_locale=locale,
            email=email,
            quiet_hours=quiet_hours,
            default_timezone=default_timezone,
        )

    async def _checked_sender(self, tenant_id: str, email: SenderSettings) -> SenderSettings:
        try:
            sender = Mailbox.of(email.sender, email.sender_name)
        except errors.InvalidRequest as exc:
            raise _invalid("email.sender", exc.message) from None
        if email.sender_name is not None and len(email.sender_name) > MAX_NAME_LENGTH:
            raise _invalid("email.sender_name", f"at most {MAX_NAME_LENGTH} characters")
        reply_to = None
        if email.reply_to is not None:
            try:
                reply_to = Mailbox.of(email.reply_to).address
            except errors.InvalidRequest as exc:
                raise _invalid("email.reply_to", exc.message) from None
        for field, name in (("email.provider", email.provider), ("email.fallback", email.fallback)):
            if name is None:
                continue
            try:
                await self._credentials.get(tenant_id, EMAIL_CREDENTIALS, name)
            except errors.NotFound:
                raise _invalid(
                    field, f"no email credential {name!r} (PUT /v1/credentials/email/{{name}})"
                ) from None
        if email.fallback == email.provider:
            raise _invalid("email.fallback", "the fallback must be another credential")
        return SenderSettings(
            provider=email.provider,
            fallback=email.fallback,
            sender=sender.address,
            sender_name=sender.name,
            reply_to=reply_to,
        )


@dataclass(frozen=True, slots=True)
class _Tenant:
    settings: TenantSettings | None
    at: datetime


class EmailTransport:
    """The email channel's `Transport`: render, then send through the tenant's provider."""

    channel: Channel = Channel.EMAIL

    def __init__(
        self,
        *,
        store: SettingsStore,
        templates: TemplateSource,
        credentials: NamedCredentials,
        mailers: Mapping[str, Mailer],
        links: UnsubscribeLinks,
        clock: Clock,
        renderer: Renderer | None = None,
        cache_seconds: float = SETTINGS_CACHE_SECONDS,
        digests: DigestSource | None = None,
        enricher: Enricher | None = None,
    ) -> None:
        self._store = store
        self._digests = digests
        self._enricher = enricher
        self._templates = templates
        self._credentials = credentials
        self._mailers = dict(mailers)
        self._links = links
        self._clock = clock
        self._renderer = renderer or Renderer()
        self._cache_seconds = cache_seconds
        self._tenants: dict[str, _Tenant] = {}

    async def send(self, batch: Sequence[Claimed]) -> Sequence[Outcome]:
        """One outcome per delivery, in order; a tenant's deliveries go out together."""
        results: list[Outcome | None] = [None] * len(batch)
        by_tenant: dict[str, list[int]] = {}
        for index, claimed in enumerate(batch):
            by_tenant.setdefault(claimed.tenant_id, []).append(index)
        for tenant_id, indexes in by_tenant.items():
            claims = [batch[i] for i in indexes]
            try:
                found = await self._send_enriched(tenant_id, claims)
            except Exception:
                # A store or vault failure: nothing was sent, so all of them wait and retry.
                log.exception("email batch failed", extra={"tenant": tenant_id})
                found = [outcomes.RetryLater("could not prepare the email")] * len(claims)
            for i, outcome in zip(indexes, found, strict=True):
                results[i] = outcome
        return [r if r is not None else outcomes.RetryLater("not sent") for r in results]

    async def _send_enriched(self, tenant_id: str, claims: Sequence[Claimed]) -> list[Outcome]:
        prepared = await enriched(self._enricher, tenant_id, claims)
        ready = [c for c in prepared if isinstance(c, Claimed)]
        sent = iter(await self._send_tenant(tenant_id, ready) if ready else [])
        return [next(sent) if isinstance(c, Claimed) else c for c in prepared]

    async def close(self) -> None:
        """Close every provider's pooled connections."""
        for mailer in self._mailers.values():
            await mailer.close()

    async def _send_tenant(self, tenant_id: str, claims: Sequence[Claimed]) -> list[Outcome]:
        settings = await self._settings(tenant_id)
        if settings is None or settings.email is None:
            why = "the tenant has no email sender (PUT /v1/settings)"
            return [outcomes.Rejected(why)] * len(claims)
        sender = settings.email
        templates: dict[tuple[str, str | None], Mapping[TemplateKey, EmailTemplate]] = {}
        digests = (
            await self._digests.digest_contents([c.id for c in claims])
            if self._digests is not None
            else {}
        )
        for claimed in claims:
            key = (claimed.item.type, claimed.item.category)
            if claimed.id in digests:
                key = (digests[claimed.id][0], None)
            if key not in templates:
                templates[key] = await self._templates.templates_for(
                    tenant_id, str(Channel.EMAIL), event_type=key[0], category=key[1]
                )
        links = [
            self._links.link(tenant_id, claimed.item.user, claimed.item.category)
            for claimed in claims
        ]
        built = await asyncio.to_thread(
            self._build_all, claims, links, templates, settings.default_locale, sender, digests
        )
        results: list[Outcome | None] = [b if not isinstance(b, Email) else None for b in built]
        todo = [i for i, b in enumerate(built) if isinstance(b, Email)]
        for name in (sender.provider, sender.fallback):
            if name is None or not todo:
                continue
            emails = [built[i] for i in todo]
            sent = await self._through(tenant_id, name, [e for e in emails if isinstance(e, Email)])
            again = []
            refused: dict[str, str] = {}
            for i, outcome in zip(todo, sent, strict=True):
                results[i] = outcome
                if isinstance(outcome, outcomes.RetryLater | outcomes.AuthFailed):
                    again.append(i)
                if isinstance(outcome, outcomes.AuthFailed) and outcome.credential_id:
                    refused.setdefault(outcome.credential_id, outcome.reason)
            if refused and name == sender.provider and sender.fallback is not None:
                # The fallback's outcomes replace these, so `PausingTransport` never sees the
                # refusal: pause here, or every batch would present the bad credential again.
                await self._pause(tenant_id, refused)
            todo = again
        return [r if r is not None else outcomes.RetryLater("not sent") for r in results]

    async def _pause(self, tenant_id: str, refused: Mapping[str, str]) -> None:
        for credential_id, reason in refused.items():
            try:
                await self._credentials.pause(tenant_id, credential_id, reason)
            except Exception:
                # The next refusal pauses it again; the fallback's sends still count.
                log.exception(
                    "could not pause a refused credential",
                    extra={"tenant": tenant_id, "credential": credential_id},
                )

    async def _through(self, tenant_id: str, name: str, emails: Sequence[Email]) -> list[Outcome]:
        credential = await self._credentials.load_named(tenant_id, EMAIL_CREDENTIALS, name)
        if credential is None:
            return [outcomes.RetryLater(f"the email credential {name!r} is gone")] * len(emails)
        if credential.info.status != "active":
            return [outcomes.RetryLater(f"the email credential {name!r} is paused")] * len(emails)
        kind = str(credential.info.metadata.get("kind", ""))
        mailer = self._mailers.get(kind)
        if mailer is None:
            return [outcomes.RetryLater(f"no {kind or 'unknown'} mailer here")] * len(emails)
        return list(await mailer.send(credential, emails))

    def _build_all(
        self,
        claims: Sequence[Claimed],
        links: Sequence[Unsubscribe],
        templates: Mapping[tuple[str, str | None], Mapping[TemplateKey, EmailTemplate]],
        default_locale: str,
        sender: SenderSettings,
        digests: Mapping[int, tuple[str, list[dict[str, Any]]]],
    ) -> list[Email | Outcome]:
        """Every claim's message, or the outcome that says why there is none (on a thread:
        rendering is CPU work bounded per render by the sandbox's limits)."""
        from_ = Mailbox(sender.sender, sender.sender_name)
        reply_to = Mailbox(sender.reply_to) if sender.reply_to else None
        now = self._clock.now()
        built: list[Email | Outcome] = []
        for claimed, link in zip(claims, links, strict=True):
            item = claimed.item
            digest = digests.get(claimed.id)
            name, category = (item.type, item.category) if digest is None else (digest[0], None)
            try:
                to = Mailbox.of(claimed.endpoint)
                variables = template_variables(claimed, link.url)
                if digest is not None:
                    variables["digest"] = {"count": len(digest[1]), "entries": digest[1]}
                chosen = choose_template(
                    templates[(name, category)],
                    event_type=name,
                    category=category,
                    channel=str(Channel.EMAIL),
                    user_locale=claimed.locale,
                    tenant_default_locale=default_locale,
                )
                if chosen is None and digest is not None:
                    # A digest without a template: its entries' titles, one a line.
                    subject = f"{len(digest[1])} new notifications"
                    text = "\n".join(
                        f"- {' '.join(str(e['title'] or e['type']).split())}" for e in digest[1]
                    )
                    html = None
                elif chosen is None:
                    subject = " ".join((item.title or item.type).split())
                    text, html = item.body or item.title or item.type, None
                else:
                    rendered = self._renderer.render_email(chosen[1], variables)
                    subject, text, html = rendered.subject, rendered.text, rendered.html
                built.append(
                    Email(
                        sender=from_,
                        to=to,
                        subject=subject,
                        text=text,
                        html=html,
                        date=now,
                        message_id=f"clarion.{claimed.id}",
                        unsubscribe=link,
                        reply_to=reply_to,
                        headers={"X-Clarion-Delivery": str(claimed.id)},
                    )
                )
            except errors.InvalidRequest as exc:
                # A template that cannot render this event, or an address that cannot be
                # written: retrying would fail alike.
                built.append(outcomes.Rejected(exc.message))
        return built

    async def _settings(self, tenant_id: str) -> TenantSettings | None:
        now = self._clock.now()
        cached = self._tenants.get(tenant_id)
        if cached is not None and 0 <= (now - cached.at).total_seconds() < self._cache_seconds:
            return cached.settings
        found = await self._store.tenant_settings(tenant_id)
        self._tenants[tenant_id] = _Tenant(found, now)
        return found


def template_variables(claimed: Claimed, unsubscribe_url: str) -> dict[str, Any]:
    """What a template sees (docs/api.md, Templates): the event, the user, the link."""
    item = claimed.item
    return {
        "event": {
            "id": item.event_id,
            "type": item.type,
            "title": item.title,
            "body": item.body,
            "data": item.data,
            "category": item.category,
            "group": item.group,
        },
        "user": {"id": item.user, "locale": claimed.locale, "attributes": claimed.attributes},
        "unsubscribe_url": unsubscribe_url,
        # Enrichment (`services.enriching`): empty unless the notification's rule asks for it.
        "group": {},
        "enrichment": {},
        **claimed.context,
    }


class Enricher(Protocol):
    """Extra template variables per claim, or the outcome of a failed enrichment
    (`services.enriching.Enriching`)."""

    async def context(
        self, tenant_id: str, claims: Sequence[Claimed]
    ) -> Sequence[Mapping[str, Any] | Outcome]: ...


async def enriched(
    enricher: Enricher | None, tenant_id: str, claims: Sequence[Claimed]
) -> list[Claimed | Outcome]:
    """Each claim with its enrichment in `Claimed.context`, or the outcome its rule's policy
    gives a failed enrichment."""
    if enricher is None:
        return list(claims)
    found = await enricher.context(tenant_id, claims)
    return [
        dataclasses.replace(c, context=dict(extra)) if isinstance(extra, Mapping) else extra
        for c, extra in zip(claims, found, strict=True)
    ]


def _invalid(field: str, problem: str) -> errors.InvalidRequest:
    return errors.InvalidRequest(
        f"{field}: {problem}", fields=[{"field": f"body.{field}", "problem": problem}]
    )
