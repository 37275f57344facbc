"""Digests (rules' batches of a recipient's events) on SQLAlchemy Core.

Routing adds each recipient's item to the recipient's open digest for the rule, key value and
channel (`write`): one upsert of the open digests (``ON CONFLICT DO NOTHING`` on the partial
unique index ``uq_digests_open``, where ``status = 'open'``), then one insert of the entries,
both ``INSERT … SELECT`` in the routing transaction. The worker closes the digests that came
due (`fire_due`): per digest, ONE email delivery, attached to the item of its latest unread
entry (the deliveries table is keyed by notification, so the digest rides on its newest
notification, and `digests.delivery_id` says which delivery is the digest); a digest whose
entries were all read first is closed `empty`. Like escalations, the firing happens in one
transaction with no I/O, so ``FOR UPDATE SKIP LOCKED`` (PostgreSQL) or SQLite's single writer
keeps two workers apart without a lease.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from clarion.adapters.storage.batching import audit_new_deliveries, chunks, insert_deliveries
from clarion.adapters.storage.tables import (
    digest_entries,
    digests,
    inbox_items,
    notifications,
    users,
)
from clarion.domain.channels import Channel
from clarion.domain.statuses import UNREAD, Status

DIGEST_CAUSE = "digest"
"""The audit cause of a digest's email delivery."""

OPEN, SENT, EMPTY = "open", "sent", "empty"

_Stamp = digests.c.due_at.type

EmailRows = Callable[..., sa.Select[Any]]


async def write(
    conn: AsyncConnection,
    tenant_id: str,
    notification_id: str,
    now: datetime,
    *,
    rule_key: str,
    key: str,
    window: int,
    channels: Sequence[str],
    insert: Callable[[sa.Table], Any],
) -> None:
    """Add the notification's items (not suppressed, of users with an address) to their
    users' open digests, opening one due `window` seconds from now where there is none."""
    for channel in channels:
        items = sa.select(inbox_items.c.id, inbox_items.c.user_id).where(
            inbox_items.c.notification_id == notification_id,
            inbox_items.c.status != str(Status.SUPPRESSED),
            sa.exists().where(users.c.id == inbox_items.c.user_id, users.c.email.is_not(None)),
        )
        items_sq = items.subquery()
        await conn.execute(
            insert(digests)
            .from_select(
                [
                    "tenant_id",
                    "user_id",
                    "rule_key",
                    "key",
                    "channel",
                    "status",
                    "due_at",
                    "created_at",
                    "updated_at",
                ],
                sa.select(
                    sa.literal(tenant_id),
                    items_sq.c.user_id,
                    sa.literal(rule_key),
                    sa.literal(key),
                    sa.literal(channel),
                    sa.literal(OPEN),
                    sa.literal(now + timedelta(seconds=window), _Stamp),
                    sa.literal(now, _Stamp),
                    sa.literal(now, _Stamp),
                    # SQLite reads ``ON CONFLICT`` after a bare FROM as a join's ON: a WHERE
                    # ends the SELECT.
                ).where(items_sq.c.user_id.is_not(None)),
            )
            .on_conflict_do_nothing(
                index_elements=["tenant_id", "user_id", "rule_key", "key", "channel"],
                index_where=digests.c.status == OPEN,
            )
        )
        await conn.execute(
            insert(digest_entries)
            .from_select(
                ["digest_id", "item_id", "created_at"],
                sa.select(digests.c.id, items_sq.c.id, sa.literal(now, _Stamp))
                .join(
                    items_sq,
                    sa.and_(
                        digests.c.user_id == items_sq.c.user_id,
                        digests.c.tenant_id == tenant_id,
                        digests.c.rule_key == rule_key,
                        digests.c.key == key,
                        digests.c.channel == channel,
                        digests.c.status == OPEN,
                    ),
                )
                .where(items_sq.c.id.is_not(None)),
            )
            .on_conflict_do_nothing(index_elements=["digest_id", "item_id"])
        )


async def fire_due(
    conn: AsyncConnection,
    now: datetime,
    limit: int,
    *,
    postgresql: bool,
    email_rows: EmailRows,
    insert: Callable[[sa.Table], Any],
) -> int:
    """Close up to `limit` open digests due by `now`: one email delivery each (`suppressed`
    where the user opted out of email or the address is not `subscribed`, as at routing),
    audited ``digest``; `empty` when every entry was read. How many were closed."""
    due = (
        sa.select(digests.c.id, digests.c.tenant_id, digests.c.user_id)
        .where(digests.c.status == OPEN, digests.c.due_at <= now)
        .order_by(digests.c.due_at)
        .limit(limit)
    )
    if postgresql:
        due = due.with_for_update(skip_locked=True)
    rows = (await conn.execute(due)).all()
    if not rows:
        return 0
    ids = [r.id for r in rows]
    latest: dict[int, int] = {}  # digest → its newest unread entry's item
    for chunk in chunks(ids):
        found = await conn.execute(
            sa.select(digest_entries.c.digest_id, sa.func.max(digest_entries.c.item_id))
            .join(inbox_items, inbox_items.c.id == digest_entries.c.item_id)
            .where(
                digest_entries.c.digest_id.in_(chunk),
                inbox_items.c.status.in_(sorted(str(s) for s in UNREAD)),
            )
            .group_by(digest_entries.c.digest_id)
        )
        latest.update((digest_id, item_id) for digest_id, item_id in found)
    sent: dict[int, int] = {}  # digest → delivery
    if latest:
        meta = {
            r.item_id: r
            for chunk in chunks(sorted(latest.values()))
            for r in await conn.execute(
                sa.select(
                    inbox_items.c.id.label("item_id"),
                    inbox_items.c.user_id,
                    notifications.c.id.label("notification_id"),
                    notifications.c.tenant_id,
                    notifications.c.category,
                    notifications.c.group_key,
                )
                .join(notifications, notifications.c.id == inbox_items.c.notification_id)
                .where(inbox_items.c.id.in_(chunk))
            )
        }
        for digest_id, item_id in latest.items():
            r = meta[item_id]
            rows_ = email_rows(
                r.tenant_id,
                r.notification_id,
                Channel.EMAIL,
                now,
                category=r.category,
                group=r.group_key,
                among=sa.select(sa.literal(r.user_id)),
            )
            created = await insert_deliveries(conn, insert, rows_)
            if created:
                sent[digest_id] = created[0]
        if sent:
            await audit_new_deliveries(conn, sorted(sent.values()), DIGEST_CAUSE, now)
            await conn.execute(
                digests.update()
                .where(digests.c.id == sa.bindparam("b_id"))
                .values(status=SENT, delivery_id=sa.bindparam("b_delivery"), updated_at=now),
                [{"b_id": d, "b_delivery": v} for d, v in sent.items()],
            )
    closed = [i for i in ids if i not in sent]
    for chunk in chunks(closed):
        await conn.execute(
            digests.update().where(digests.c.id.in_(chunk)).values(status=EMPTY, updated_at=now)
        )
    return len(rows)


async def contents(
    conn: AsyncConnection, delivery_ids: Sequence[int]
) -> dict[int, tuple[str, list[dict[str, Any]]]]:
    """For each of `delivery_ids` that is a digest: the template name it renders with (the
    rule's template, else ``digest:<rule key>``) and its unread entries' events, oldest first
    (as a template's ``digest.entries``)."""
    found: dict[int, tuple[str, list[dict[str, Any]]]] = {}
    for chunk in chunks(list(delivery_ids)):
        rows = await conn.execute(
            sa.select(
                digests.c.delivery_id,
                digests.c.rule_key,
                notifications.c.template_key,
                notifications.c.event_id,
                notifications.c.type,
                notifications.c.title,
                notifications.c.body,
                notifications.c.data,
                notifications.c.category,
                notifications.c.group_key,
                notifications.c.created_at,
            )
            .join(digest_entries, digest_entries.c.digest_id == digests.c.id)
            .join(inbox_items, inbox_items.c.id == digest_entries.c.item_id)
            .join(notifications, notifications.c.id == inbox_items.c.notification_id)
            .where(
                digests.c.delivery_id.in_(chunk),
                inbox_items.c.status.in_(sorted(str(s) for s in UNREAD)),
            )
            .order_by(digests.c.delivery_id, digest_entries.c.item_id)
        )
        for r in rows:
            name = r.template_key or f"digest:{r.rule_key}"
            _, entries = found.setdefault(r.delivery_id, (name, []))
            entries.append(
                {
                    "id": r.event_id,
                    "type": r.type,
                    "title": r.title,
                    "body": r.body,
                    "data": r.data,
                    "category": r.category,
                    "group": r.group_key,
                    "at": r.created_at.isoformat(),
                }
            )
    return found
