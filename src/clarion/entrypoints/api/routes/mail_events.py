"""Bounce and complaint feeds from mail providers, one URL per tenant and provider.

No API key: the provider cannot send one. Each post is trusted only once its signature verifies
against what the tenant registered in its email credential (services/suppressing.py): the SNS
topic of its SES credential, the Event Webhook key of its SendGrid credential.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Request
from pydantic import BaseModel

from clarion.domain import errors, identifiers
from clarion.entrypoints.api.dependencies import App
from clarion.services.suppressing import Handled

router = APIRouter(prefix="/v1/mail-events", tags=["mail events"])

TenantId = Annotated[str, Path(min_length=1, max_length=64)]


class MailEventsOut(BaseModel):
    """What a provider's post led to."""

    action: str
    bounced: int
    complained: int

    @classmethod
    def of(cls, handled: Handled) -> MailEventsOut:
        return cls(action=handled.action, bounced=handled.bounced, complained=handled.complained)


def _tenant(tenant_id: str) -> str:
    if not identifiers.is_valid_key(tenant_id):
        raise errors.InvalidIdentifier("'tenant_id' is not a valid id")
    return tenant_id


@router.post("/ses/{tenant_id}", response_model=MailEventsOut)
async def ses_via_sns(
    app: App,
    tenant_id: TenantId,
    request: Request,
    x_amz_sns_message_type: Annotated[str | None, Header(max_length=64)] = None,
) -> MailEventsOut:
    """An Amazon SNS HTTP(S) message (``text/plain`` JSON) from the topic of the tenant's SES
    credential: subscription confirmations are confirmed, notifications carrying SES bounce
    and complaint events suppress the addresses they name."""
    handled = await app.suppressing.from_sns(
        _tenant(tenant_id), x_amz_sns_message_type, await request.body()
    )
    return MailEventsOut.of(handled)


@router.post("/sendgrid/{tenant_id}", response_model=MailEventsOut)
async def sendgrid_events(
    app: App,
    tenant_id: TenantId,
    request: Request,
    x_twilio_email_event_webhook_signature: Annotated[str | None, Header(max_length=512)] = None,
    x_twilio_email_event_webhook_timestamp: Annotated[str | None, Header(max_length=32)] = None,
) -> MailEventsOut:
    """A signed SendGrid Event Webhook batch (a JSON array); unsigned posts are refused."""
    handled = await app.suppressing.from_sendgrid(
        _tenant(tenant_id),
        signature=x_twilio_email_event_webhook_signature,
        timestamp=x_twilio_email_event_webhook_timestamp,
        body=await request.body(),
    )
    return MailEventsOut.of(handled)
