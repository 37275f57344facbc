"""Producers register status webhooks: URLs Clarion POSTs its notifications' status changes to.

The payload, the signature and the SSRF rules are in `wire.webhooks` and docs/api.md.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, Field

from clarion.entrypoints.api import schemas
from clarion.entrypoints.api.dependencies import App, Tenant
from clarion.services.callbacks import NAME_PATTERN
from clarion.services.ports import WebhookInfo
from clarion.wire.webhooks import MAX_URL_LENGTH

router = APIRouter(prefix="/v1", tags=["webhooks"])

Name = Annotated[str, Path(min_length=1, max_length=64, pattern=NAME_PATTERN)]


class WebhookIn(schemas.Input):
    """A status webhook: where to POST, and the secret to sign with."""

    url: Annotated[str, Field(min_length=1, max_length=MAX_URL_LENGTH)]
    # Printable ASCII, long enough to be a key; absent: generated (new) or kept (existing).
    secret: Annotated[str, Field(min_length=16, max_length=256, pattern=r"^[!-~]+$")] | None = None
    enabled: bool = True


class WebhookOut(BaseModel):
    """A status webhook as stored; never its secret."""

    name: str
    url: str
    enabled: bool
    cursor: int
    failures: int
    next_attempt_at: datetime | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, info: WebhookInfo) -> WebhookOut:
        """From the stored registration."""
        return cls(
            name=info.name,
            url=info.url,
            enabled=info.enabled,
            cursor=info.cursor,
            failures=info.failures,
            next_attempt_at=info.next_attempt_at,
            last_error=info.last_error,
            created_at=info.created_at,
            updated_at=info.updated_at,
        )


class WebhookSaved(WebhookOut):
    """A saved webhook; `secret` holds the generated secret, this once, and null otherwise."""

    secret: str | None


class WebhookList(BaseModel):
    """The tenant's webhooks."""

    webhooks: list[WebhookOut]


@router.put(
    "/webhooks/{name}",
    response_model=WebhookSaved,
    responses={201: {"model": WebhookSaved}, 409: {"model": schemas.ErrorOut}},
)
async def put_webhook(
    name: Name, body: WebhookIn, app: App, tenant: Tenant, response: Response
) -> WebhookSaved:
    """Create (201) or update (200) a status webhook. Without a secret, a new webhook gets a
    generated one, returned in this answer only; an existing one keeps its secret."""
    saved = await app.callbacks.register(
        tenant, name, url=body.url, secret=body.secret, enabled=body.enabled
    )
    response.status_code = 201 if saved.created else 200
    return WebhookSaved(**WebhookOut.of(saved.webhook).model_dump(), secret=saved.generated_secret)


@router.get("/webhooks", response_model=WebhookList)
async def list_webhooks(app: App, tenant: Tenant) -> WebhookList:
    """The tenant's status webhooks, without their secrets."""
    return WebhookList(
        webhooks=[WebhookOut.of(w) for w in await app.callbacks.list_webhooks(tenant)]
    )


@router.get("/webhooks/{name}", response_model=WebhookOut)
async def get_webhook(name: Name, app: App, tenant: Tenant) -> WebhookOut:
    """One status webhook, without its secret."""
    return WebhookOut.of(await app.callbacks.get(tenant, name))


@router.delete("/webhooks/{name}", status_code=204)
async def delete_webhook(name: Name, app: App, tenant: Tenant) -> Response:
    """Delete a status webhook; nothing more is sent to it."""
    await app.callbacks.delete(tenant, name)
    return Response(status_code=204)
