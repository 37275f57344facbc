"""A tenant's own settings: the locale its templates fall back to, and how its email goes out."""

from __future__ import annotations

import dataclasses
from typing import Annotated

from fastapi import APIRouter
from pydantic import AfterValidator, BaseModel, Field

from clarion.entrypoints.api import schemas
from clarion.entrypoints.api.dependencies import App, Tenant
from clarion.entrypoints.api.schemas import QuietHoursIn, QuietHoursOut, timezone_name
from clarion.services.credentials import NAME_PATTERN
from clarion.services.ports import SenderSettings, TenantSettings

router = APIRouter(prefix="/v1", tags=["settings"])

CredentialName = Annotated[str, Field(min_length=1, max_length=64, pattern=NAME_PATTERN)]
Address = Annotated[str, Field(min_length=3, max_length=320)]


class SenderIn(schemas.Input):
    """How the tenant's email goes out."""

    # The name of one of the tenant's email credentials (PUT /v1/credentials/email/{name}).
    provider: CredentialName
    # Another one, that takes over while the provider is down, throttling or refusing us.
    fallback: CredentialName | None = None
    sender: Address
    sender_name: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    reply_to: Address | None = None


class EnrichmentIn(schemas.Input):
    """The tenant's enrichment webhook (rules with ``enrichment.webhook`` call it)."""

    url: Annotated[str, Field(min_length=1, max_length=2000)]
    # Signs each request (Clarion-Signature, as status webhooks); never shown again.
    secret: Annotated[str, Field(min_length=16, max_length=200)]


class EnrichmentOut(BaseModel):
    """The tenant's enrichment webhook; its secret is never shown."""

    url: str


class SettingsIn(schemas.Input):
    """All of a tenant's settings (a PUT replaces them all)."""

    default_locale: Annotated[str, Field(min_length=2, max_length=35)] = "en"
    # Null: no email sender, so no email goes out.
    email: SenderIn | None = None
    # For users without quiet hours of their own; null: none.
    quiet_hours: QuietHoursIn | None = None
    # For users without a time zone; null: UTC.
    default_timezone: Annotated[str, AfterValidator(timezone_name)] | None = None
    # Left out: unchanged (older clients keep working); null: removed.
    enrichment: EnrichmentIn | None = None


class SenderOut(BaseModel):
    """How the tenant's email goes out."""

    provider: str
    fallback: str | None
    sender: str
    sender_name: str | None
    reply_to: str | None


class SettingsOut(BaseModel):
    """A tenant's settings."""

    default_locale: str
    email: SenderOut | None
    quiet_hours: QuietHoursOut | None = None
    default_timezone: str | None = None
    enrichment: EnrichmentOut | None = None

    @classmethod
    def of(cls, found: TenantSettings) -> SettingsOut:
        """From the stored settings."""
        email = found.email
        return cls(
            default_locale=found.default_locale,
            email=None
            if email is None
            else SenderOut(
                provider=email.provider,
                fallback=email.fallback,
                sender=email.sender,
                sender_name=email.sender_name,
                reply_to=email.reply_to,
            ),
            quiet_hours=QuietHoursOut.of(found.quiet_hours),
            default_timezone=found.default_timezone,
            enrichment=None
            if found.enrichment_url is None
            else EnrichmentOut(url=found.enrichment_url),
        )


@router.get("/settings", response_model=SettingsOut)
async def get_settings(app: App, tenant: Tenant) -> SettingsOut:
    """The tenant's settings."""
    return SettingsOut.of(await app.mailing.settings(tenant))


@router.put("/settings", response_model=SettingsOut, responses={422: {"model": schemas.ErrorOut}})
async def put_settings(body: SettingsIn, app: App, tenant: Tenant) -> SettingsOut:
    """Replace the tenant's settings. The email provider and fallback must name email
    credentials the tenant has stored."""
    email = None
    if body.email is not None:
        email = SenderSettings(
            provider=body.email.provider,
            fallback=body.email.fallback,
            sender=body.email.sender,
            sender_name=body.email.sender_name,
            reply_to=body.email.reply_to,
        )
    enriching = app.enriching
    change_enrichment = "enrichment" in body.model_fields_set and enriching is not None
    webhook = None
    if change_enrichment and body.enrichment is not None and enriching is not None:
        webhook = enriching.checked(body.enrichment.url, body.enrichment.secret)
    saved = await app.mailing.put_settings(
        tenant,
        default_locale=body.default_locale,
        email=email,
        quiet_hours=None if body.quiet_hours is None else body.quiet_hours.window(),
        default_timezone=body.default_timezone,
    )
    if change_enrichment and enriching is not None:
        await enriching.put_webhook(tenant, webhook)
        saved = dataclasses.replace(saved, enrichment_url=None if webhook is None else webhook.url)
    else:
        current = await app.mailing.settings(tenant)
        saved = dataclasses.replace(saved, enrichment_url=current.enrichment_url)
    return SettingsOut.of(saved)
