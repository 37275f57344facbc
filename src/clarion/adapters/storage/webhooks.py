"""Status webhooks on SQLAlchemy Core: their registrations, and the audit trail they tail.

Each webhook keeps a cursor, the audit-trail id up to which its changes were delivered. The
dispatcher leases a due webhook by pushing its `next_attempt_at` past the request's timeout, so
two workers never post the same webhook at once and a crashed one's lease simply runs out.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clarion.adapters.sealing import Sealer
from clarion.adapters.storage import engines
from clarion.adapters.storage.tables import (
    inbox_items,
    notifications,
    transitions,
    users,
    webhooks,
)
from clarion.domain import errors, records
from clarion.domain.statuses import Status, Subject

# Audit entries read to find the settled horizon per batch: items write one entry per move and
# each of their deliveries one more, so ten per reported change keeps batches full.
_SCAN_PER_CHANGE = 10


class SqlWebhooks:
    """Webhook registrations and status changes, on the store's engine."""

    def __init__(self, engine: AsyncEngine, sealer: Sealer) -> None:
        self._engine = engine
        self._sealer = sealer
        self._dialect = engine.dialect.name

    def _write(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return engines.writing(self._engine)

    def _read(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return engines.reading(self._engine)

    @staticmethod
    def _owner(tenant_id: str, name: str) -> str:
        # The secret opens only on the row it was sealed for: this tenant, this webhook.
        return f"tenant:{tenant_id}:webhook:{name}"

    # -----------------------------------------------------------------------------------------
    # registrations

    async def put_webhook(
        self,
        tenant_id: str,
        name: str,
        *,
        url: str,
        secret: str | None,
        new_secret: str,
        enabled: bool,
        max_webhooks: int,
        now: datetime,
    ) -> tuple[records.WebhookInfo, bool]:
        arguments: dict[str, Any] = {
            "url": url,
            "secret": secret,
            "new_secret": new_secret,
            "enabled": enabled,
            "max_webhooks": max_webhooks,
            "now": now,
        }
        try:
            return await self._put(tenant_id, name, **arguments)
        except IntegrityError:
            # A concurrent request created it first (PostgreSQL; SQLite serialises writers):
            # this one is then an update.
            return await self._put(tenant_id, name, **arguments)

    async def _put(
        self,
        tenant_id: str,
        name: str,
        *,
        url: str,
        secret: str | None,
        new_secret: str,
        enabled: bool,
        max_webhooks: int,
        now: datetime,
    ) -> tuple[records.WebhookInfo, bool]:
        mine = sa.and_(webhooks.c.tenant_id == tenant_id, webhooks.c.name == name)
        async with self._write() as conn:
            query = sa.select(webhooks.c.id).where(mine)
            if self._dialect == "postgresql":
                query = query.with_for_update()
            existing = await conn.scalar(query)
            values: dict[str, Any] = {
                "url": url,
                "enabled": enabled,
                "updated_at": now,
                # A changed registration gets a prompt attempt rather than the old backoff.
                "failures": 0,
                "next_attempt_at": None,
                "last_error": None,
            }
            if secret is not None:
                values["secret"] = self._sealer.seal(secret, owner=self._owner(tenant_id, name))
            if existing is None:
                count = await conn.scalar(
                    sa.select(sa.func.count()).where(webhooks.c.tenant_id == tenant_id)
                )
                if (count or 0) >= max_webhooks:
                    raise errors.Conflict(f"a tenant may have at most {max_webhooks} webhooks")
                # A new webhook reports what happens from now on, not the tenant's history.
                newest = await conn.scalar(
                    sa.select(sa.func.max(transitions.c.id)).where(
                        transitions.c.tenant_id == tenant_id
                    )
                )
                values.setdefault(
                    "secret",
                    self._sealer.seal(new_secret, owner=self._owner(tenant_id, name)),
                )
                await conn.execute(
                    webhooks.insert().values(
                        tenant_id=tenant_id,
                        name=name,
                        cursor=newest or 0,
                        created_at=now,
                        **values,
                    )
                )
            else:
                await conn.execute(
                    webhooks.update().where(webhooks.c.id == existing).values(values)
                )
            row = (await conn.execute(sa.select(webhooks).where(mine))).one()
        return _info(row), existing is None

    async def list_webhooks(self, tenant_id: str) -> list[records.WebhookInfo]:
        async with self._read() as conn:
            rows = await conn.execute(
                sa.select(webhooks)
                .where(webhooks.c.tenant_id == tenant_id)
                .order_by(webhooks.c.name)
            )
            return [_info(r) for r in rows]

    async def delete_webhook(self, tenant_id: str, name: str) -> bool:
        async with self._write() as conn:
            result = await conn.execute(
                webhooks.delete().where(webhooks.c.tenant_id == tenant_id, webhooks.c.name == name)
            )
            return bool(result.rowcount)

    # -----------------------------------------------------------------------------------------
    # dispatching

    async def claim_webhooks(
        self, *, now: datetime, settled_before: datetime, lease_seconds: float, limit: int
    ) -> list[records.DueWebhook]:
        is_due = sa.and_(
            webhooks.c.enabled.is_(True),
            sa.or_(webhooks.c.next_attempt_at.is_(None), webhooks.c.next_attempt_at <= now),
        )
        has_news = sa.exists().where(
            transitions.c.tenant_id == webhooks.c.tenant_id,
            transitions.c.id > webhooks.c.cursor,
            transitions.c.at <= settled_before,
        )
        candidates = (
            sa.select(webhooks.c.id)
            .where(is_due, has_news)
            .order_by(webhooks.c.next_attempt_at.nulls_first(), webhooks.c.id)
            .limit(limit)
        )
        # Look first without the write lock: on SQLite every writing transaction takes it, and
        # most polls find nothing to do.
        async with self._read() as conn:
            ids = list((await conn.scalars(candidates)).all())
        if not ids:
            return []
        async with self._write() as conn:
            rows = (
                await conn.execute(
                    webhooks.update()
                    # Due-ness is checked again: another worker may have claimed it meanwhile.
                    .where(webhooks.c.id.in_(ids), is_due)
                    .values(next_attempt_at=now + timedelta(seconds=lease_seconds))
                    .returning(
                        webhooks.c.id,
                        webhooks.c.tenant_id,
                        webhooks.c.name,
                        webhooks.c.url,
                        webhooks.c.secret,
                        webhooks.c.cursor,
                        webhooks.c.failures,
                    )
                )
            ).all()
        return [
            records.DueWebhook(
                id=r.id,
                tenant_id=r.tenant_id,
                name=r.name,
                url=r.url,
                secret=self._sealer.open(r.secret, owner=self._owner(r.tenant_id, r.name)),
                cursor=r.cursor,
                failures=r.failures,
            )
            for r in sorted(rows, key=lambda r: r.id)
        ]

    async def status_changes(
        self, tenant_id: str, *, after: int, settled_before: datetime, limit: int
    ) -> records.ChangeBatch:
        window = (
            sa.select(transitions.c.id)
            .where(
                transitions.c.tenant_id == tenant_id,
                transitions.c.id > after,
                transitions.c.at <= settled_before,
            )
            .order_by(transitions.c.id)
            .limit(limit * _SCAN_PER_CHANGE)
            .subquery()
        )
        async with self._read() as conn:
            # The horizon is read first, in its own statement: an entry that commits between
            # the two statements below it is then still found by the second (PostgreSQL reads
            # each statement from a fresh snapshot), never stepped over.
            horizon = await conn.scalar(sa.select(sa.func.max(window.c.id)))
            if horizon is None:
                return records.ChangeBatch(changes=(), cursor=after)
            rows = (
                await conn.execute(
                    sa.select(
                        transitions.c.id,
                        transitions.c.source,
                        transitions.c.target,
                        transitions.c.at,
                        inbox_items.c.id.label("item_id"),
                        notifications.c.id.label("notification_id"),
                        notifications.c.event_id,
                        users.c.external_id,
                    )
                    .select_from(
                        transitions.join(
                            inbox_items,
                            sa.and_(
                                inbox_items.c.id == transitions.c.subject_id,
                                inbox_items.c.tenant_id == transitions.c.tenant_id,
                            ),
                        )
                        .join(notifications, notifications.c.id == inbox_items.c.notification_id)
                        .join(users, users.c.id == inbox_items.c.user_id)
                    )
                    .where(
                        transitions.c.tenant_id == tenant_id,
                        transitions.c.id > after,
                        transitions.c.id <= horizon,
                        transitions.c.subject == str(Subject.ITEM),
                        transitions.c.target != str(Status.PENDING),
                    )
                    .order_by(transitions.c.id)
                    .limit(limit)
                )
            ).all()
        changes = tuple(
            records.StatusChange(
                id=r.id,
                item_id=r.item_id,
                notification_id=r.notification_id,
                event_id=r.event_id,
                user=r.external_id,
                source=None if r.source is None else Status(r.source),
                target=Status(r.target),
                at=r.at,
            )
            for r in rows
        )
        # A full batch may stop short of the horizon; otherwise everything up to it is covered.
        cursor = changes[-1].id if len(changes) == limit else int(horizon)
        return records.ChangeBatch(changes=changes, cursor=cursor)

    async def webhook_delivered(self, webhook_id: int, *, cursor: int, now: datetime) -> None:
        async with self._write() as conn:
            await conn.execute(
                webhooks.update()
                .where(webhooks.c.id == webhook_id)
                .values(
                    # Never backwards, should a worker whose lease ran out finish late.
                    cursor=sa.case(
                        (webhooks.c.cursor < cursor, sa.literal(cursor, webhooks.c.cursor.type)),
                        else_=webhooks.c.cursor,
                    ),
                    failures=0,
                    next_attempt_at=None,
                    last_error=None,
                )
            )

    async def webhook_failed(
        self, webhook_id: int, *, error: str, retry_at: datetime, now: datetime
    ) -> None:
        async with self._write() as conn:
            await conn.execute(
                webhooks.update()
                .where(webhooks.c.id == webhook_id)
                .values(
                    failures=webhooks.c.failures + 1,
                    next_attempt_at=retry_at,
                    last_error=error[:500],
                )
            )


def _info(row: Any) -> records.WebhookInfo:
    return records.WebhookInfo(
        name=row.name,
        url=row.url,
        enabled=row.enabled,
        cursor=row.cursor,
        failures=row.failures,
        next_attempt_at=row.next_attempt_at,
        last_error=row.last_error,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )
