"""Producers send events and read back where they stand."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Response
from fastapi.responses import JSONResponse

from clarion.domain import errors, identifiers
from clarion.entrypoints.api import schemas
from clarion.entrypoints.api.dependencies import App, Tenant, UserKey
from clarion.entrypoints.api.errors import respond
from clarion.entrypoints.api.rates import Limits
from clarion.entrypoints.inputs import event_spec

router = APIRouter(prefix="/v1/events", tags=["events"])


@router.post(
    "",
    status_code=202,
    response_model=schemas.EventAccepted,
    responses={
        429: {"model": schemas.ErrorOut, "description": "Over the tenant's rate limit"},
        503: {"model": schemas.ErrorOut, "description": "Overloaded or unavailable"},
    },
)
async def post_event(
    body: schemas.EventIn,
    app: App,
    tenant: Tenant,
    limits: Limits,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> schemas.EventAccepted | JSONResponse:
    """Accept an event. Answers 202 once it is durably stored; routing follows in the worker.

    The same `Idempotency-Key` with the same body answers the same id again; with another
    body it is refused (422 `idempotency_key_reused`). Over the tenant's rate limits it answers
    429 `rate_limited`; with too much accepted work still waiting for the workers, 503
    `overloaded`; both with `Retry-After`.
    """
    if idempotency_key is not None and not identifiers.is_valid_key(idempotency_key):
        raise errors.InvalidRequest("Idempotency-Key must be 1-255 printable characters")
    spec = event_spec(body, app.accepting.push_channels)
    decision = limits.check(tenant, spec.recipients.count())
    if not decision.allowed:
        limited = errors.RateLimited(
            "this tenant is over its rate limit for events", retry_after=decision.retry_after
        )
        return respond(limited, decision.headers)
    response.headers.update(decision.headers)
    accepted = await app.accepting.accept(tenant, spec, idempotency_key=idempotency_key)
    if not accepted.created:
        response.headers["Idempotent-Replayed"] = "true"
    return schemas.EventAccepted(id=accepted.id)


@router.post(
    "/batch",
    status_code=202,
    response_model=schemas.EventBatchAccepted,
    responses={
        429: {"model": schemas.ErrorOut, "description": "Over the tenant's rate limit"},
        503: {"model": schemas.ErrorOut, "description": "Overloaded or unavailable"},
    },
)
async def post_events(
    body: schemas.EventBatchIn, app: App, tenant: Tenant, limits: Limits, response: Response
) -> schemas.EventBatchAccepted | JSONResponse:
    """Accept up to 100 events in one request and one transaction: all of them, or, when one
    is refused, none (the error names it, as `events[3]: ...`). Each event may carry its own
    `idempotency_key`, with the meaning of the header on POST /v1/events. Rate limits count
    each event of the batch as a request."""
    batch = [(event_spec(e, app.accepting.push_channels), e.idempotency_key) for e in body.events]
    recipients = sum(spec.recipients.count() for spec, _ in batch)
    decision = limits.check(tenant, recipients, events=len(batch))
    if not decision.allowed:
        limited = errors.RateLimited(
            "this tenant is over its rate limit for events", retry_after=decision.retry_after
        )
        return respond(limited, decision.headers)
    response.headers.update(decision.headers)
    accepted = await app.accepting.accept_many(tenant, batch)
    return schemas.EventBatchAccepted(
        events=[schemas.BatchAccepted(id=a.id, replayed=not a.created) for a in accepted]
    )


@router.get("/{event_id}", response_model=schemas.EventOut)
async def get_event(event_id: str, app: App, tenant: Tenant) -> schemas.EventOut:
    """The event, its notification, and per-recipient and per-channel status counts."""
    report = await app.reporting.event(tenant, event_id)
    spec = report.event.spec
    notification = None
    if report.notification_id is not None:
        notification = schemas.NotificationOut(
            id=report.notification_id,
            title=spec.title,
            body=spec.body,
            data=spec.data,
            category=spec.category,
            group=spec.group,
        )
        if report.rule is not None:
            notification.rule = report.rule.rule_key
            notification.priority = report.rule.priority
            notification.ttl = report.rule.ttl_seconds
            notification.template = report.rule.template_key
    return schemas.EventOut(
        id=report.event.id,
        type=spec.type,
        state=report.event.state,
        created_at=report.event.created_at,
        routed_at=report.event.routed_at,
        send_at=report.event.send_at,
        expires_at=report.event.expires_at,
        cancelled_at=report.event.cancelled_at,
        recipients_named={
            "users": list(spec.recipients.users),
            "groups": list(spec.recipients.groups),
            "communities": list(spec.recipients.communities),
        },
        notification=notification,
        recipients=schemas.CountsOut.of(report.recipients),
        channels={c: schemas.CountsOut.of(n) for c, n in report.channels.items()},
        topics=[
            schemas.TopicSendOut(
                channel=t.channel,
                topic=t.topic,
                group=t.group,
                status=t.status,
                attempts=t.attempts,
                reference=t.reference,
                error=t.error,
                sent_at=t.sent_at,
                failed_at=t.failed_at,
            )
            for t in report.topics
        ],
    )


@router.delete(
    "/{event_id}",
    status_code=204,
    responses={
        404: {"model": schemas.ErrorOut, "description": "No such event"},
        409: {"model": schemas.ErrorOut, "description": "Routed already (`already_sent`)"},
    },
)
async def cancel_event(event_id: str, app: App, tenant: Tenant) -> Response:
    """Cancel an event that has not been routed yet (typically one scheduled with `send_at`):
    it is never routed, and its state reads `cancelled`. Cancelling it again answers 204 too;
    an event routed already answers 409 `already_sent`."""
    await app.accepting.cancel(tenant, event_id)
    return Response(status_code=204)


@router.get("/{event_id}/recipients/{user}", response_model=schemas.RecipientOut)
async def get_recipient(
    event_id: str, user: UserKey, app: App, tenant: Tenant
) -> schemas.RecipientOut:
    """One recipient's status for the event, its deliveries, and the audit trail of each."""
    report = await app.reporting.recipient(tenant, event_id, user)
    return schemas.RecipientOut(
        user=report.item.user,
        item_id=report.item.id,
        status=report.item.status,
        trail=[schemas.TransitionOut.of(t) for t in report.trail],
        deliveries=[
            schemas.DeliveryOut(
                id=d.id,
                channel=d.channel,
                status=d.status,
                attempts=d.attempts,
                error=d.error,
                trail=[schemas.TransitionOut.of(t) for t in d.trail],
            )
            for d in report.deliveries
        ],
    )
