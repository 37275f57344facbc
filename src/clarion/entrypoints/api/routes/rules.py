"""Tenants' routing rules: saved one at a time, listed, deleted, and tested against a sample
event and user (docs/api.md, "Rules")."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, Field

from clarion.domain.rules import StoredRule
from clarion.entrypoints.api import schemas
from clarion.entrypoints.api.dependencies import App, Tenant
from clarion.entrypoints.inputs import EventIn, Input, RecipientsIn, event_spec

router = APIRouter(prefix="/v1/rules", tags=["rules"])

# The path takes '/' (a key may hold it); the service checks the key itself.
RuleKeyPath = Annotated[str, Path(max_length=1000)]


class RuleOut(BaseModel):
    """A rule as saved (`domain.rules.Rule.to_json`), with its timestamps."""

    key: str
    event_type: str
    condition: str | None
    channels: list[str] | None
    template: str | None
    priority: str
    ttl: int | None
    enrichment: dict[str, Any] | None
    escalation: dict[str, Any] | None
    digest: dict[str, Any] | None
    order: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, stored: StoredRule) -> RuleOut:
        """From the stored rule."""
        return cls(
            **stored.rule.to_json(), created_at=stored.created_at, updated_at=stored.updated_at
        )


class RuleList(BaseModel):
    """The tenant's rules, in the order routing tries them."""

    rules: list[RuleOut]


class SampleEventIn(EventIn):
    """An event as `POST /v1/events` takes it; the recipients may be left out."""

    recipients: RecipientsIn = Field(default_factory=RecipientsIn)


class SampleUserIn(Input):
    """The recipient to test for: `attributes` when given, else the stored user's."""

    id: schemas.Key | None = None
    attributes: schemas.JsonData | None = None


class RuleTestIn(Input):
    """A sample event and recipient."""

    event: SampleEventIn
    user: SampleUserIn = Field(default_factory=SampleUserIn)


class AttemptOut(BaseModel):
    """One rule tried, in order."""

    rule: str
    verdict: str
    reason: str


class TestUserOut(BaseModel):
    """The recipient tested."""

    id: str | None
    stored: bool
    attributes: dict[str, Any]


class RuleTestOut(BaseModel):
    """Which rule decides the sample, why, and what would be sent on this server."""

    matched: str | None
    rule: dict[str, Any] | None
    trace: list[AttemptOut]
    channels: list[str]
    channels_from: str
    template: str
    priority: str
    ttl: int | None
    enrichment: dict[str, Any] | None
    escalation: dict[str, Any] | None
    digest: dict[str, Any] | None
    user: TestUserOut


@router.post("/test", response_model=RuleTestOut)
async def test_rules(body: RuleTestIn, app: App, tenant: Tenant) -> RuleTestOut:
    """Show which rule a sample event matches for a sample user, the trace of every rule
    tried, and the channels, template, priority, TTL and follow-ups that would apply."""
    spec = event_spec(body.event, app.accepting.push_channels)
    explanation = await app.ruling.test(
        tenant, spec, user=body.user.id, attributes=body.user.attributes
    )
    return RuleTestOut.model_validate(explanation.to_json())


@router.get("", response_model=RuleList)
async def list_rules(app: App, tenant: Tenant) -> RuleList:
    """The tenant's rules, in the order routing tries them (`order`, then `key`)."""
    return RuleList(rules=[RuleOut.of(r) for r in await app.ruling.list_rules(tenant)])


@router.put("/{key:path}", response_model=RuleOut, responses={201: {"model": RuleOut}})
async def put_rule(
    key: RuleKeyPath, body: schemas.JsonData, app: App, tenant: Tenant, response: Response
) -> RuleOut:
    """Create (201) or replace (200) the rule `key`."""
    saved = await app.ruling.put(tenant, key, body)
    response.status_code = 201 if saved.created else 200
    return RuleOut.of(saved.stored)


@router.get("/{key:path}", response_model=RuleOut)
async def get_rule(key: RuleKeyPath, app: App, tenant: Tenant) -> RuleOut:
    """The rule `key`."""
    return RuleOut.of(await app.ruling.get(tenant, key))


@router.delete("/{key:path}", status_code=204)
async def delete_rule(key: RuleKeyPath, app: App, tenant: Tenant) -> Response:
    """Delete the rule `key`."""
    await app.ruling.delete(tenant, key)
    return Response(status_code=204)
