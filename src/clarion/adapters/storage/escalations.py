"""Escalations (rules' resends and email follow-ups) on SQLAlchemy Core.

Routing writes one ``escalations`` row per item and kind (`write`) in its own transaction;
moving items to `received` or `read` cancels theirs (`cancel`) in the transaction of the move;
the worker fires what is due (`fire_due`), all set-based: a few statements per batch, whatever
its size. Firing happens inside one transaction that also marks the rows ``done`` (or
``cancelled``), with no I/O in between, so it needs no lease: PostgreSQL's ``FOR UPDATE SKIP
LOCKED`` keeps two workers apart, SQLite's single writer does the same.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from clarion.adapters.storage.batching import (
    AUDIT_COLUMNS,
    audit_new_deliveries,
    chunks,
    insert_deliveries,
)
from clarion.adapters.storage.tables import (
    deliveries,
    escalations,
    inbox_items,
    notifications,
    transitions,
)
from clarion.domain.channels import Channel
from clarion.domain.escalations import (
    EMAIL_CAUSE,
    RESEND_CAUSE,
    Kind,
    State,
    cancelled_by,
    fires,
)
from clarion.domain.statuses import RESENDS, Status, Subject

_PUSH = sorted(str(c) for c in (Channel.APNS, Channel.FCM, Channel.WEBPUSH, Channel.WNS))
_Stamp = escalations.c.due_at.type

EmailRows = Callable[..., sa.Select[Any]]
"""`sql._delivery_rows`: the email deliveries of a notification's items, opt-outs applied."""


async def write(
    conn: AsyncConnection,
    tenant_id: str,
    notification_id: str,
    now: datetime,
    *,
    resend_push_after: int | None,
    email_if_unread_after: int | None,
) -> None:
    """The timers of a notification just routed: a resend for every item with a push
    delivery that may go out, an email follow-up for every item not suppressed."""
    kinds: list[tuple[Kind, int, sa.ColumnElement[bool]]] = []
    if resend_push_after is not None:
        has_push = sa.exists().where(
            deliveries.c.item_id == inbox_items.c.id,
            deliveries.c.channel.in_(_PUSH),
            deliveries.c.status != str(Status.SUPPRESSED),
        )
        kinds.append((Kind.RESEND_PUSH, resend_push_after, has_push))
    if email_if_unread_after is not None:
        kinds.append((Kind.EMAIL_IF_UNREAD, email_if_unread_after, sa.true()))
    for kind, after, condition in kinds:
        await conn.execute(
            escalations.insert().from_select(
                [
                    "tenant_id",
                    "notification_id",
                    "item_id",
                    "user_id",
                    "kind",
                    "due_at",
                    "status",
                    "created_at",
                    "updated_at",
                ],
                sa.select(
                    sa.literal(tenant_id),
                    sa.literal(notification_id),
                    inbox_items.c.id,
                    inbox_items.c.user_id,
                    sa.literal(str(kind)),
                    sa.literal(now + timedelta(seconds=after), _Stamp),
                    sa.literal(str(State.PENDING)),
                    sa.literal(now, _Stamp),
                    sa.literal(now, _Stamp),
                ).where(
                    inbox_items.c.notification_id == notification_id,
                    inbox_items.c.status != str(Status.SUPPRESSED),
                    condition,
                ),
            )
        )


async def cancel(
    conn: AsyncConnection, item_ids: Sequence[int], target: Status, now: datetime
) -> None:
    """Cancel the pending escalations that items reaching `target` make pointless."""
    kinds = _cancelled_kinds(target)
    if not kinds or not item_ids:
        return
    for chunk in chunks(list(item_ids)):
        await conn.execute(
            escalations.update()
            .where(
                escalations.c.item_id.in_(chunk),
                escalations.c.status == str(State.PENDING),
                escalations.c.kind.in_(kinds),
            )
            .values(status=str(State.CANCELLED), updated_at=now)
        )


def _cancelled_kinds(target: Status) -> list[str]:
    return sorted(str(k) for k in cancelled_by(target))


async def fire_due(
    conn: AsyncConnection,
    now: datetime,
    limit: int,
    *,
    postgresql: bool,
    email_rows: EmailRows,
    insert: Callable[[sa.Table], Any],
) -> int:
    """Fire up to `limit` pending escalations due by `now`; how many were settled (done or
    cancelled). Runs inside the caller's write transaction."""
    due = (
        sa.select(escalations.c.id, escalations.c.kind, escalations.c.item_id)
        .where(escalations.c.status == str(State.PENDING), escalations.c.due_at <= now)
        .order_by(escalations.c.due_at)
        .limit(limit)
    )
    if postgresql:
        due = due.with_for_update(skip_locked=True)
    rows = (await conn.execute(due)).all()
    if not rows:
        return 0
    item_ids = sorted({r.item_id for r in rows})
    statuses: dict[int, Status] = {}
    for chunk in chunks(item_ids):
        found = await conn.execute(
            sa.select(inbox_items.c.id, inbox_items.c.status).where(inbox_items.c.id.in_(chunk))
        )
        statuses.update((r.id, Status(r.status)) for r in found)
    acting: dict[Kind, list[int]] = {kind: [] for kind in Kind}
    done: list[int] = []
    cancelled: list[int] = []
    for escalation_id, kind, item_id in rows:
        status = statuses.get(item_id)
        if status is not None and fires(Kind(kind), status):
            acting[Kind(kind)].append(item_id)
            done.append(escalation_id)
        else:
            cancelled.append(escalation_id)
    await _resend_push(conn, acting[Kind.RESEND_PUSH], now)
    await _send_email(conn, acting[Kind.EMAIL_IF_UNREAD], now, email_rows, insert)
    for ids, state in ((done, State.DONE), (cancelled, State.CANCELLED)):
        for chunk in chunks(ids):
            await conn.execute(
                escalations.update()
                .where(escalations.c.id.in_(chunk))
                .values(status=str(state), updated_at=now)
            )
    return len(rows)


async def _resend_push(conn: AsyncConnection, item_ids: Sequence[int], now: datetime) -> None:
    """Put the items' `sent` push deliveries back to `pending`, due now; attempts are kept."""
    ((source, target),) = RESENDS.items()
    for chunk in chunks(list(item_ids)):
        resent = (
            (
                await conn.execute(
                    sa.select(deliveries.c.id).where(
                        deliveries.c.item_id.in_(chunk),
                        deliveries.c.channel.in_(_PUSH),
                        deliveries.c.status == str(source),
                    )
                )
            )
            .scalars()
            .all()
        )
        if not resent:
            continue
        await conn.execute(
            deliveries.update()
            .where(deliveries.c.id.in_(resent), deliveries.c.status == str(source))
            .values(
                status=str(target),
                next_attempt_at=now,
                lease_expires_at=None,
                error=None,
                updated_at=now,
            )
        )
        await _audit(conn, resent, source, target, RESEND_CAUSE, now)


async def _send_email(
    conn: AsyncConnection,
    item_ids: Sequence[int],
    now: datetime,
    email_rows: EmailRows,
    insert: Callable[[sa.Table], Any],
) -> None:
    """Create an email delivery for each item's user who has an address (`suppressed` where
    the user opted out of email or the address is not `subscribed`), audited; an item that
    already has one (the rule also sent email) keeps it."""
    if not item_ids:
        return
    per_notification: dict[str, list[int]] = {}
    meta: dict[str, Any] = {}
    for chunk in chunks(list(item_ids)):
        found = await conn.execute(
            sa.select(
                inbox_items.c.id,
                notifications.c.id.label("notification_id"),
                notifications.c.tenant_id,
                notifications.c.category,
                notifications.c.group_key,
                notifications.c.expires_at,
            )
            .join(notifications, notifications.c.id == inbox_items.c.notification_id)
            .where(inbox_items.c.id.in_(chunk))
        )
        for r in found:
            per_notification.setdefault(r.notification_id, []).append(r.id)
            meta[r.notification_id] = r
    for notification_id, ids in per_notification.items():
        r = meta[notification_id]
        for chunk in chunks(sorted(ids)):
            among = sa.select(inbox_items.c.user_id).where(inbox_items.c.id.in_(chunk))
            rows = email_rows(
                r.tenant_id,
                notification_id,
                Channel.EMAIL,
                now,
                category=r.category,
                group=r.group_key,
                among=among,
            )
            created = await insert_deliveries(conn, insert, rows)
            if not created:
                continue
            if r.expires_at is not None:
                await conn.execute(
                    deliveries.update()
                    .where(deliveries.c.id.in_(created))
                    .values(expires_at=r.expires_at)
                )
            await audit_new_deliveries(conn, created, EMAIL_CAUSE, now)


async def _audit(
    conn: AsyncConnection,
    ids: Collection[int],
    source: Status,
    target: Status,
    cause: str,
    now: datetime,
) -> None:
    await conn.execute(
        transitions.insert().from_select(
            AUDIT_COLUMNS,
            sa.select(
                deliveries.c.tenant_id,
                sa.literal(str(Subject.DELIVERY)),
                deliveries.c.id,
                sa.literal(str(source)),
                sa.literal(str(target)),
                sa.literal(cause),
                sa.literal(now, _Stamp),
            ).where(deliveries.c.id.in_(list(ids))),
        )
    )
