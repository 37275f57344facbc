"""Sends to provider topics (FCM) on SQLAlchemy Core.

A tenant may map a group or a community to an FCM topic its apps subscribe the members to
(``groups.fcm_topic``). Routing an event on ``fcm`` that names such groups writes one
``topic_sends`` row per distinct topic (`write_topic_sends`) and no per-device FCM delivery for
the members reached through them (`reached_through_topics`); both run inside the store's
routing transaction. `SqlTopicSends` then leases and completes those rows for the worker, with
fences as deliveries have.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clarion.adapters.storage import engines
from clarion.adapters.storage.tables import groups, memberships, notifications, topic_sends
from clarion.domain import outcomes, records
from clarion.domain.channels import Channel
from clarion.domain.notifications import EventSpec
from clarion.domain.statuses import Status

_PENDING, _SENT, _FAILED = str(Status.PENDING), str(Status.SENT), str(Status.FAILED)
_ERROR_CHARS = 500  # topic_sends.error


def _mapped(tenant_id: str, spec: EventSpec) -> sa.ColumnElement[bool] | None:
    """The groups and communities the event names that are mapped to an FCM topic."""
    r = spec.recipients
    named: list[sa.ColumnElement[bool]] = []
    if r.groups:
        named.append(sa.and_(groups.c.kind == "group", groups.c.key.in_(r.groups)))
    if r.communities:
        named.append(sa.and_(groups.c.kind == "community", groups.c.key.in_(r.communities)))
    if not named:
        return None
    return sa.and_(groups.c.tenant_id == tenant_id, groups.c.fcm_topic.is_not(None), sa.or_(*named))


def reached_through_topics(tenant_id: str, spec: EventSpec) -> sa.Select[Any] | None:
    """The internal ids of the users the event reaches through a mapped group or community:
    members of a named mapped group; members of a named mapped community and of every group in
    it. None when the event names no mapped group (nothing to leave out)."""
    mapped = _mapped(tenant_id, spec)
    if mapped is None:
        return None
    mapped_ids = sa.select(groups.c.id).where(mapped)
    inner = groups.alias("inner_group")
    return (
        sa.select(memberships.c.user_id)
        .join(inner, inner.c.id == memberships.c.group_id)
        .where(
            inner.c.tenant_id == tenant_id,
            sa.or_(inner.c.id.in_(mapped_ids), inner.c.community_id.in_(mapped_ids)),
        )
    )


async def write_topic_sends(
    conn: AsyncConnection,
    tenant_id: str,
    notification_id: str,
    spec: EventSpec,
    now: datetime,
) -> int:
    """One pending FCM topic send per distinct topic the event's mapped groups name, set-based;
    how many were written. Two groups mapped to one topic make one send (its `group_key` is
    the first of them by key)."""
    mapped = _mapped(tenant_id, spec)
    if mapped is None:
        return 0
    key_type, time_type = topic_sends.c.group_key.type, topic_sends.c.created_at.type
    chosen = (
        sa.select(groups.c.fcm_topic.label("topic"), sa.func.min(groups.c.key).label("group_key"))
        .where(mapped)
        .group_by(groups.c.fcm_topic)
        .subquery()
    )
    result = await conn.execute(
        topic_sends.insert().from_select(
            [
                "tenant_id",
                "notification_id",
                "channel",
                "topic",
                "group_key",
                "status",
                "attempts",
                "next_attempt_at",
                "fence",
                "created_at",
                "updated_at",
            ],
            sa.select(
                sa.literal(tenant_id),
                sa.literal(notification_id),
                sa.literal(str(Channel.FCM)),
                chosen.c.topic,
                sa.cast(chosen.c.group_key, key_type),
                sa.literal(_PENDING),
                sa.literal(0),
                sa.literal(now, time_type),
                sa.literal(0),
                sa.literal(now, time_type),
                sa.literal(now, time_type),
            ),
        )
    )
    return max(result.rowcount or 0, 0)


async def topic_views(
    conn: AsyncConnection, notification_id: str
) -> tuple[records.TopicSendView, ...]:
    """The notification's topic sends, for its event report."""
    rows = await conn.execute(
        sa.select(topic_sends)
        .where(topic_sends.c.notification_id == notification_id)
        .order_by(topic_sends.c.channel, topic_sends.c.topic)
    )
    return tuple(
        records.TopicSendView(
            channel=r.channel,
            topic=r.topic,
            group=r.group_key,
            status=r.status,
            attempts=r.attempts,
            reference=r.reference,
            error=r.error,
            sent_at=r.sent_at,
            failed_at=r.failed_at,
        )
        for r in rows
    )


class SqlTopicSends:
    """Topic sends leased to and completed by the broadcasting worker, on the store's engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._dialect = engine.dialect.name

    def _write(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return engines.writing(self._engine)

    async def claim_topic_sends(
        self, channel: Channel, *, limit: int, lease_seconds: float, now: datetime
    ) -> list[records.ClaimedTopicSend]:
        """Lease up to `limit` due topic sends of `channel`, earliest due first."""
        due = (
            sa.select(topic_sends.c.id)
            .where(
                topic_sends.c.channel == str(channel),
                topic_sends.c.status == _PENDING,
                sa.or_(
                    topic_sends.c.next_attempt_at.is_(None), topic_sends.c.next_attempt_at <= now
                ),
                sa.or_(
                    topic_sends.c.lease_expires_at.is_(None),
                    topic_sends.c.lease_expires_at <= now,
                ),
            )
            .order_by(topic_sends.c.next_attempt_at)
            .limit(limit)
        )
        if self._dialect == "postgresql":
            due = due.with_for_update(skip_locked=True)
        lease = (
            topic_sends.update()
            .where(topic_sends.c.id.in_(due.scalar_subquery()))
            .values(
                fence=topic_sends.c.fence + 1,
                attempts=topic_sends.c.attempts + 1,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                updated_at=now,
            )
            .returning(
                topic_sends.c.id,
                topic_sends.c.fence,
                topic_sends.c.tenant_id,
                topic_sends.c.channel,
                topic_sends.c.topic,
                topic_sends.c.attempts,
                topic_sends.c.notification_id,
            )
        )
        async with self._write() as conn:
            leased = sorted((await conn.execute(lease)).all())
            if not leased:
                return []
            notes = {
                n.id: n
                for n in await conn.execute(
                    sa.select(notifications).where(
                        notifications.c.id.in_(sorted({r.notification_id for r in leased}))
                    )
                )
            }
        return [
            records.ClaimedTopicSend(
                id=r.id,
                fence=r.fence,
                tenant_id=r.tenant_id,
                channel=r.channel,
                topic=r.topic,
                attempts=r.attempts,
                notification_id=r.notification_id,
                event_id=note.event_id,
                type=note.type,
                title=note.title,
                body=note.body,
                data=dict(note.data or {}),
                category=note.category,
                group=note.group_key,
                created_at=note.created_at,
            )
            for r in leased
            for note in (notes[r.notification_id],)
        ]

    async def complete_topic_sends(
        self, completions: Sequence[records.TopicCompletion], now: datetime
    ) -> list[int]:
        """Apply outcomes from lease holders only (same fence, still pending). Topic sends
        are few (one per mapped topic per event), so each is one small update."""
        if not completions:
            return []
        wanted = {c.send_id: c for c in completions}
        query = sa.select(topic_sends.c.id, topic_sends.c.fence, topic_sends.c.status).where(
            topic_sends.c.id.in_(sorted(wanted))
        )
        if self._dialect == "postgresql":
            query = query.with_for_update()
        applied: list[int] = []
        async with self._write() as conn:
            for row in (await conn.execute(query.order_by(topic_sends.c.id))).all():
                completion = wanted[row.id]
                if row.fence != completion.fence or row.status != _PENDING:
                    continue
                await conn.execute(
                    topic_sends.update()
                    .where(topic_sends.c.id == row.id, topic_sends.c.status == _PENDING)
                    .values(**_completed(completion, now))
                )
                applied.append(row.id)
        return applied


def _completed(completion: records.TopicCompletion, now: datetime) -> dict[str, Any]:
    outcome = completion.outcome
    values: dict[str, Any] = {"updated_at": now, "lease_expires_at": None}
    if isinstance(outcome, outcomes.Delivered):
        values.update(status=_SENT, sent_at=now, reference=outcome.reference, error=None)
    elif isinstance(outcome, outcomes.RetryLater | outcomes.AuthFailed):
        values.update(
            next_attempt_at=completion.retry_at or now, error=outcome.reason[:_ERROR_CHARS]
        )
    else:
        values.update(status=_FAILED, failed_at=now, error=outcome.reason[:_ERROR_CHARS])
    return values
