"""Tenants write the templates their notifications are rendered with, per channel and locale,
and preview them with sample data (docs/api.md, "Templates")."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, Field

from clarion.domain.templates import EmailTemplate, TemplateEntry, TemplateSet, TemplateSetInfo
from clarion.entrypoints.api import schemas
from clarion.entrypoints.api.dependencies import App, Tenant
from clarion.services.templates import DEFAULT_LIMITS
from clarion.services.templating import (
    EMAIL,
    INBOX,
    MAX_LOCALE_LENGTH,
    MAX_LOCALES,
    PUSH,
    Preview,
    key_of,
)

router = APIRouter(prefix="/v1", tags=["templates"])

# The path takes '/' (event types may hold it); the service checks the key itself.
TemplateKeyPath = Annotated[str, Path(max_length=1000)]
Source = Annotated[schemas.Text, Field(max_length=DEFAULT_LIMITS.template_chars)]
Line = Annotated[schemas.Text, Field(min_length=1, max_length=DEFAULT_LIMITS.template_chars)]
Locale = Annotated[str, Field(min_length=1, max_length=MAX_LOCALE_LENGTH)]


class EmailIn(schemas.Input):
    """An email template: the subject line, the plain text, and optionally the HTML."""

    subject: Line
    text: Source
    html: Source | None = None


class TitledIn(schemas.Input):
    """A push notification's or inbox item's template: a title and a body."""

    title: Line
    body: Source


EmailLocales = Annotated[dict[Locale, EmailIn], Field(max_length=MAX_LOCALES)]
TitledLocales = Annotated[dict[Locale, TitledIn], Field(max_length=MAX_LOCALES)]


class ChannelsIn(schemas.Input):
    """The templates of one event type or category, by channel and locale (BCP 47)."""

    email: EmailLocales = {}
    push: TitledLocales = {}
    inbox: TitledLocales = {}


class TemplateSetIn(schemas.Input):
    """Every template of one event type or category: a PUT replaces all of them."""

    channels: ChannelsIn


class EmailOut(BaseModel):
    """An email template as stored."""

    subject: str
    text: str
    html: str | None


class TitledOut(BaseModel):
    """A push or inbox template as stored."""

    title: str
    body: str


class ChannelsOut(BaseModel):
    """The stored templates by channel and locale."""

    email: dict[str, EmailOut]
    push: dict[str, TitledOut]
    inbox: dict[str, TitledOut]


class TemplateSetOut(BaseModel):
    """Every template of one event type or category."""

    key: str
    subject: Literal["event_type", "category"]
    name: str
    channels: ChannelsOut
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, saved: TemplateSet) -> TemplateSetOut:
        """From the stored set."""
        channels = ChannelsOut(email={}, push={}, inbox={})
        for e in saved.entries:
            if e.channel == EMAIL:
                channels.email[e.locale] = EmailOut(subject=e.title, text=e.text, html=e.html)
            elif e.channel == PUSH:
                channels.push[e.locale] = TitledOut(title=e.title, body=e.text)
            elif e.channel == INBOX:
                channels.inbox[e.locale] = TitledOut(title=e.title, body=e.text)
        return cls(
            key=key_of(saved.subject, saved.name),
            subject=saved.subject.value,
            name=saved.name,
            channels=channels,
            created_at=saved.created_at,
            updated_at=saved.updated_at,
        )


class TemplateSetSummary(BaseModel):
    """A template set as listed: its channels and their locales."""

    key: str
    subject: Literal["event_type", "category"]
    name: str
    channels: dict[str, list[str]]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, info: TemplateSetInfo) -> TemplateSetSummary:
        """From the listed set."""
        return cls(
            key=key_of(info.subject, info.name),
            subject=info.subject.value,
            name=info.name,
            channels={channel: list(locales) for channel, locales in info.channels.items()},
            created_at=info.created_at,
            updated_at=info.updated_at,
        )


class TemplateSetList(BaseModel):
    """The tenant's templates."""

    templates: list[TemplateSetSummary]


# --- preview --------------------------------------------------------------------------------


class SampleEventIn(schemas.Input):
    """The event a preview pretends to render; what is left out gets a placeholder."""

    id: Annotated[schemas.Text, Field(max_length=255)] | None = None
    type: Annotated[schemas.Text, Field(max_length=255)] | None = None
    title: Annotated[schemas.Text, Field(max_length=1000)] | None = None
    body: Annotated[schemas.Text, Field(max_length=10_000)] | None = None
    data: schemas.JsonData | None = None
    category: schemas.Key | None = None
    group: schemas.Key | None = None


class SampleUserIn(schemas.Input):
    """The recipient a preview pretends to render for."""

    id: schemas.Key | None = None
    locale: Annotated[schemas.Text, Field(max_length=MAX_LOCALE_LENGTH)] | None = None
    attributes: schemas.JsonData | None = None


class SampleIn(schemas.Input):
    """Sample variables, in the shape every render sees."""

    event: SampleEventIn = Field(default_factory=SampleEventIn)
    user: SampleUserIn = Field(default_factory=SampleUserIn)
    unsubscribe_url: Annotated[schemas.Text, Field(max_length=2000)] | None = None


class PreviewIn(schemas.Input):
    """Which saved template to render: the one a recipient reading `locale` would get (the
    tenant's default locale when left out)."""

    channel: Literal["email", "push", "inbox"]
    locale: Locale | None = None
    sample: SampleIn = Field(default_factory=SampleIn)


class EmailSourceIn(schemas.Input):
    """An email template given inline, to render without saving it."""

    channel: Literal["email"]
    template: EmailIn
    key: Annotated[str, Field(min_length=1, max_length=1000)] | None = None
    locale: Locale | None = None
    sample: SampleIn = Field(default_factory=SampleIn)


class TitledSourceIn(schemas.Input):
    """A push or inbox template given inline, to render without saving it."""

    channel: Literal["push", "inbox"]
    template: TitledIn
    key: Annotated[str, Field(min_length=1, max_length=1000)] | None = None
    locale: Locale | None = None
    sample: SampleIn = Field(default_factory=SampleIn)


SourceIn = Annotated[EmailSourceIn | TitledSourceIn, Field(discriminator="channel")]


class PreviewOut(BaseModel):
    """A template rendered with sample data. Email has `subject`, `text` and `html`; push and
    inbox have `title` and `body`."""

    channel: str
    locale: str
    template: str
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    title: str | None = None
    body: str | None = None

    @classmethod
    def of(cls, preview: Preview) -> PreviewOut:
        """From the service's preview."""
        key = preview.key
        common: dict[str, Any] = {
            "channel": key.channel,
            "locale": key.locale,
            "template": key_of(key.subject, key.name),
        }
        if key.channel == EMAIL:
            return cls(**common, subject=preview.title, text=preview.text, html=preview.html)
        return cls(**common, title=preview.title, body=preview.text)


def _sample(sample: SampleIn) -> dict[str, Any]:
    # Only what the caller gave: the service fills the rest with placeholders.
    return sample.model_dump(exclude_unset=True)


# --- routes ---------------------------------------------------------------------------------
# The inline preview comes first: `/templates/{key}/preview` cannot match it (the key would be
# empty), but the order states which wins.


@router.post("/templates/preview", response_model=PreviewOut, response_model_exclude_none=True)
async def preview_inline_template(body: SourceIn, app: App, tenant: Tenant) -> PreviewOut:
    """Render a template given in the body, without saving it: to try one out."""
    if isinstance(body, EmailSourceIn):
        source = EmailTemplate(body.template.subject, body.template.text, body.template.html)
    else:
        source = EmailTemplate(body.template.title, body.template.body)
    preview = await app.templates.preview_source(
        body.channel, source, _sample(body.sample), locale=body.locale, key=body.key
    )
    return PreviewOut.of(preview)


@router.post(
    "/templates/{key:path}/preview", response_model=PreviewOut, response_model_exclude_none=True
)
async def preview_template(
    key: TemplateKeyPath, body: PreviewIn, app: App, tenant: Tenant
) -> PreviewOut:
    """Render the saved template a recipient reading `locale` would get, with sample data."""
    preview = await app.templates.preview(
        tenant, key, body.channel, body.locale, _sample(body.sample)
    )
    return PreviewOut.of(preview)


@router.get("/templates", response_model=TemplateSetList)
async def list_templates(app: App, tenant: Tenant) -> TemplateSetList:
    """The tenant's templates, with their channels and locales."""
    found = await app.templates.list_templates(tenant)
    return TemplateSetList(templates=[TemplateSetSummary.of(t) for t in found])


@router.put(
    "/templates/{key:path}",
    response_model=TemplateSetOut,
    responses={201: {"model": TemplateSetOut}},
)
async def put_templates(
    key: TemplateKeyPath, body: TemplateSetIn, app: App, tenant: Tenant, response: Response
) -> TemplateSetOut:
    """Create (201) or replace (200) every template of an event type or category: channels
    and locales left out of the body are deleted."""
    entries = [
        *(
            TemplateEntry(EMAIL, locale, t.subject, t.text, t.html)
            for locale, t in body.channels.email.items()
        ),
        *(TemplateEntry(PUSH, locale, t.title, t.body) for locale, t in body.channels.push.items()),
        *(
            TemplateEntry(INBOX, locale, t.title, t.body)
            for locale, t in body.channels.inbox.items()
        ),
    ]
    saved = await app.templates.put(tenant, key, entries)
    response.status_code = 201 if saved.created else 200
    return TemplateSetOut.of(saved.templates)


@router.get("/templates/{key:path}", response_model=TemplateSetOut)
async def get_templates(key: TemplateKeyPath, app: App, tenant: Tenant) -> TemplateSetOut:
    """Every template of an event type or category."""
    return TemplateSetOut.of(await app.templates.get(tenant, key))


@router.delete("/templates/{key:path}", status_code=204)
async def delete_templates(key: TemplateKeyPath, app: App, tenant: Tenant) -> Response:
    """Delete every template of an event type or category."""
    await app.templates.delete(tenant, key)
    return Response(status_code=204)
