"""What a user's app does with its user token: inbox, receipts, opt-outs, devices, email.

Everything here is scoped to the token's user and tenant; anything else is 404.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response

from clarion.domain import errors, identifiers
from clarion.domain.notifications import parse_cursor
from clarion.domain.statuses import Status
from clarion.entrypoints.api import schemas
from clarion.entrypoints.api.dependencies import App, DeviceToken, Me
from clarion.entrypoints.api.routes.devices import device_out

router = APIRouter(prefix="/v1/me", tags=["me"])

ItemId = Annotated[int, Path(ge=1, le=2**63 - 1)]


def _optional_key(name: str, value: str | None) -> str | None:
    if value is not None and not identifiers.is_valid_key(value):
        raise errors.InvalidRequest(f"'{name}' is not a valid key")
    return value


@router.get("/notifications", response_model=schemas.InboxPage)
async def list_notifications(
    app: App,
    me: Me,
    status: Literal["unread", "read", "all"] = "all",
    group: Annotated[str | None, Query(max_length=255)] = None,
    category: Annotated[str | None, Query(max_length=255)] = None,
    since: datetime | None = None,
    cursor: Annotated[str | None, Query(max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> schemas.InboxPage:
    """The user's notifications, newest first, a page at a time."""
    if since is not None and since.tzinfo is None:
        raise errors.InvalidRequest("'since' needs a time zone, e.g. 2026-01-01T00:00:00Z")
    items = await app.inboxes.page(
        me,
        status=status,
        group=_optional_key("group", group),
        category=_optional_key("category", category),
        since=since,
        before=parse_cursor(cursor) or None,
        limit=limit,
    )
    next_cursor = items[-1].cursor if len(items) == limit else None
    return schemas.InboxPage(
        items=[schemas.InboxItemOut.of(i) for i in items], next_cursor=next_cursor
    )


@router.get("/notifications/{item_id}", response_model=schemas.InboxItemOut)
async def get_notification(item_id: ItemId, app: App, me: Me) -> schemas.InboxItemOut:
    """One of the user's notifications."""
    return schemas.InboxItemOut.of(await app.inboxes.get(me, item_id))


@router.get("/unread-counts", response_model=schemas.UnreadCountsOut)
async def unread_counts(app: App, me: Me) -> schemas.UnreadCountsOut:
    """Unread notifications in all, per group and per category."""
    counts = await app.inboxes.unread_counts(me)
    return schemas.UnreadCountsOut(
        total=counts.total, groups=counts.groups, categories=counts.categories
    )


@router.post("/notifications/{item_id}/received", response_model=schemas.ReceiptOut)
async def received(item_id: ItemId, app: App, me: Me) -> schemas.ReceiptOut:
    """The app received the notification (idempotent; a read item stays read)."""
    moved = await app.inboxes.receipt(me, item_id, Status.RECEIVED)
    return schemas.ReceiptOut(id=moved.item_id, status=moved.status)


@router.post("/notifications/{item_id}/read", response_model=schemas.ReceiptOut)
async def read(item_id: ItemId, app: App, me: Me) -> schemas.ReceiptOut:
    """The user read the notification, here and so everywhere (idempotent)."""
    moved = await app.inboxes.receipt(me, item_id, Status.READ)
    return schemas.ReceiptOut(id=moved.item_id, status=moved.status)


@router.post("/notifications/read", response_model=schemas.ReadAllOut)
async def read_all(app: App, me: Me, body: schemas.ReadAllIn | None = None) -> schemas.ReadAllOut:
    """Mark every unread notification read, or those of a group and/or category."""
    body = body or schemas.ReadAllIn()
    moved = await app.inboxes.read_all(me, group=body.group, category=body.category)
    return schemas.ReadAllOut(read=len(moved))


@router.get("/preferences", response_model=schemas.AllPreferencesOut)
async def get_preferences(app: App, me: Me) -> schemas.AllPreferencesOut:
    """Every channel switch the user set, per group and per category."""
    stored = await app.subscriptions.all(me)
    return schemas.AllPreferencesOut(groups=stored["groups"], categories=stored["categories"])


@router.put("/preferences/{scope}/{key}", response_model=schemas.PreferencesOut)
async def put_preferences(
    scope: Literal["groups", "categories"],
    key: Annotated[str, Path(max_length=1000)],
    body: schemas.PreferencesIn,
    app: App,
    me: Me,
) -> schemas.PreferencesOut:
    """Unsubscribe from (false) or re-subscribe to (true) a group or category, on every
    channel ("*") or one; an empty map clears the switches (subscribed everywhere)."""
    if not identifiers.is_valid_key(key):
        raise errors.InvalidIdentifier("'key' is not a valid key")
    channels = await app.subscriptions.set(me, scope, key, body.channels)
    return schemas.PreferencesOut(channels=channels)


@router.get("/devices", response_model=list[schemas.DeviceOut])
async def list_devices(app: App, me: Me) -> list[schemas.DeviceOut]:
    """The user's push endpoints, tokens masked."""
    return [device_out(d) for d in await app.devices.of(me.tenant_id, me.user)]


@router.put(
    "/devices/{token:path}",
    response_model=schemas.DeviceOut,
    responses={201: {"model": schemas.DeviceOut}},
)
async def put_device(
    token: DeviceToken, body: schemas.DeviceIn, app: App, me: Me, response: Response
) -> schemas.DeviceOut:
    """Register this app's push token (201), or refresh it (200). A token that was retired is
    active again; one registered by another user moves to this one."""
    device, created = await app.devices.register(
        me.tenant_id,
        me.user,
        provider=body.provider,
        token=token,
        app_id=body.app_id,
        keys=dict(body.keys),
    )
    response.status_code = 201 if created else 200
    return device_out(device)


@router.delete("/devices/{token:path}", status_code=204)
async def delete_device(token: DeviceToken, app: App, me: Me) -> Response:
    """Unregister one of the user's push tokens."""
    await app.devices.unregister(me.tenant_id, me.user, token)
    return Response(status_code=204)


@router.get("/email", response_model=schemas.EmailOut)
async def get_email(app: App, me: Me) -> schemas.EmailOut:
    """The user's email address and whether mail may be sent to it."""
    user = await app.directory.get_user(me.tenant_id, me.user)
    return schemas.EmailOut(email=user.email, status=user.email_status)


@router.put("/email", response_model=schemas.EmailOut)
async def put_email(body: schemas.EmailIn, app: App, me: Me) -> schemas.EmailOut:
    """Subscribe or unsubscribe the user's email address (a bounced one stays bounced)."""
    status = await app.subscriptions.set_email(me, body.status)
    user = await app.directory.get_user(me.tenant_id, me.user)
    return schemas.EmailOut(email=user.email, status=status)
