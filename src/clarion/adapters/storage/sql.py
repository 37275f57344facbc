"""The store on SQLAlchemy Core, for SQLite and PostgreSQL.

Each public method is one transaction. Fan-out and bulk status changes are set-based: routing
writes every inbox item, delivery and audit entry with ``INSERT ... SELECT``; status changes
select the rows they may move (locking them on PostgreSQL), then update them by id and append
their audit entries in the same transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.type_api import to_instance

from clarion.adapters.sealing import Sealer
from clarion.adapters.storage import digests, engines, escalations, topics
from clarion.adapters.storage.batching import AUDIT_COLUMNS, DELIVERY_COLUMNS, chunks as _chunks
from clarion.adapters.storage.tables import (
    api_keys,
    categories,
    deliveries,
    devices,
    email_settings,
    events,
    groups,
    inbox_items,
    memberships,
    notifications,
    outbox,
    preferences,
    tenants,
    token_keys,
    transitions,
    users,
)
from clarion.domain import errors, outcomes, quiet_hours, records as ports, routing
from clarion.domain.channels import REALTIME, Channel
from clarion.domain.notifications import (
    EVENTS_STREAM,
    EventSpec,
    InboxItem,
    JsonObject,
    StatusCounts,
)
from clarion.domain.quiet_hours import QuietHours
from clarion.domain.statuses import (
    UNREAD,
    Status,
    Subject,
    Transition,
    sources_of,
    timestamp_field,
)

T = TypeVar("T")

_CHUNK = 500  # bound parameters per IN list: far below SQLite's 32,766 and asyncpg's 32,767
_PUSH_PROVIDERS = frozenset({Channel.APNS, Channel.FCM, Channel.WNS, Channel.WEBPUSH})
_HELD_CHANNELS = (*sorted(_PUSH_PROVIDERS), Channel.EMAIL)  # quiet hours hold these; never in-app


class SqlStore:
    """The system of record on a SQLAlchemy engine."""

    def __init__(self, engine: AsyncEngine, sealer: Sealer) -> None:
        self._engine = engine
        self._sealer = sealer
        self._dialect = engine.dialect.name

    @property
    def engine(self) -> AsyncEngine:
        """The engine behind the store (for migrations and benchmarks)."""
        return self._engine

    async def ping(self) -> None:
        """Raise if the database cannot be reached."""
        async with self._read() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def close(self) -> None:
        """Release every pooled connection."""
        await self._engine.dispose()

    def _write(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return engines.writing(self._engine)

    def _read(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return engines.reading(self._engine)

    def _insert(self, table: sa.Table) -> Any:
        return (postgresql.insert if self._dialect == "postgresql" else sqlite.insert)(table)

    def _locked(self, query: sa.Select[Any]) -> sa.Select[Any]:
        # SQLite has one writer at a time (BEGIN IMMEDIATE), so only PostgreSQL needs row locks.
        return query.with_for_update() if self._dialect == "postgresql" else query

    # -----------------------------------------------------------------------------------------
    # tenants and keys

    async def create_tenant(
        self,
        *,
        tenant_id: str,
        name: str,
        token_secret: str,
        key_id: str,
        key_digest: str,
        now: datetime,
    ) -> None:
        sealed = self._sealer.seal(token_secret, owner=f"tenant:{tenant_id}")
        async with self._write() as conn:
            await conn.execute(
                tenants.insert().values(
                    id=tenant_id, name=name, token_secret=sealed, created_at=now
                )
            )
            await conn.execute(
                api_keys.insert().values(
                    id=key_id,
                    tenant_id=tenant_id,
                    name="default",
                    digest=key_digest,
                    created_at=now,
                )
            )

    async def tenant_secret(self, tenant_id: str) -> str | None:
        async with self._read() as conn:
            sealed = await conn.scalar(
                sa.select(tenants.c.token_secret).where(tenants.c.id == tenant_id)
            )
        if sealed is None:
            return None
        return self._sealer.open(sealed, owner=f"tenant:{tenant_id}")

    async def tenant_settings(self, tenant_id: str) -> ports.TenantSettings | None:
        async with self._read() as conn:
            row = (
                await conn.execute(
                    sa.select(
                        tenants.c.default_locale,
                        tenants.c.quiet_start,
                        tenants.c.quiet_end,
                        tenants.c.default_timezone,
                        tenants.c.enrichment_url,
                        email_settings.c.provider,
                        email_settings.c.fallback,
                        email_settings.c.sender,
                        email_settings.c.sender_name,
                        email_settings.c.reply_to,
                    )
                    .select_from(tenants)
                    .outerjoin(email_settings, email_settings.c.tenant_id == tenants.c.id)
                    .where(tenants.c.id == tenant_id)
                )
            ).first()
        if row is None:
            return None
        sender = None
        if row.provider is not None:
            sender = ports.SenderSettings(
                provider=row.provider,
                fallback=row.fallback,
                sender=row.sender,
                sender_name=row.sender_name,
                reply_to=row.reply_to,
            )
        return ports.TenantSettings(
            default_locale=row.default_locale,
            email=sender,
            quiet_hours=_quiet(row.quiet_start, row.quiet_end),
            default_timezone=row.default_timezone,
            enrichment_url=row.enrichment_url,
        )

    async def enrichment_webhook(self, tenant_id: str) -> ports.EnrichmentWebhook | None:
        """The tenant's enrichment webhook with its secret opened, or None."""
        async with self._read() as conn:
            row = (
                await conn.execute(
                    sa.select(tenants.c.enrichment_url, tenants.c.enrichment_secret).where(
                        tenants.c.id == tenant_id
                    )
                )
            ).first()
        if row is None or row.enrichment_url is None or row.enrichment_secret is None:
            return None
        secret = self._sealer.open(row.enrichment_secret, owner=f"enrichment:{tenant_id}")
        return ports.EnrichmentWebhook(url=row.enrichment_url, secret=secret)

    async def put_enrichment_webhook(
        self, tenant_id: str, webhook: ports.EnrichmentWebhook | None
    ) -> bool:
        """Set (or, with None, remove) the tenant's enrichment webhook; False: no such tenant."""
        values: dict[str, str | None] = {"enrichment_url": None, "enrichment_secret": None}
        if webhook is not None:
            values = {
                "enrichment_url": webhook.url,
                "enrichment_secret": self._sealer.seal(
                    webhook.secret, owner=f"enrichment:{tenant_id}"
                ),
            }
        async with self._write() as conn:
            found = await conn.execute(
                tenants.update().where(tenants.c.id == tenant_id).values(**values)
            )
        return bool(found.rowcount)

    async def enrichment_sources(
        self, tenant_id: str, notification_ids: Sequence[str]
    ) -> dict[str, ports.EnrichmentSource]:
        """Each notification's rule key and its group's attributes, one statement per 500."""
        found: dict[str, ports.EnrichmentSource] = {}
        async with self._read() as conn:
            for chunk in _chunks(sorted(set(notification_ids)), _CHUNK):
                rows = await conn.execute(
                    sa.select(notifications.c.id, notifications.c.rule_key, groups.c.attributes)
                    .select_from(notifications)
                    .outerjoin(
                        groups,
                        sa.and_(
                            groups.c.tenant_id == notifications.c.tenant_id,
                            groups.c.key == notifications.c.group_key,
                        ),
                    )
                    .where(notifications.c.tenant_id == tenant_id, notifications.c.id.in_(chunk))
                )
                for row in rows:
                    found[row.id] = ports.EnrichmentSource(
                        rule_key=row.rule_key, group_attributes=dict(row.attributes or {})
                    )
        return found

    async def put_tenant_settings(
        self,
        tenant_id: str,
        *,
        default_locale: str,
        email: ports.SenderSettings | None,
        now: datetime,
        quiet_hours: QuietHours | None = None,
        default_timezone: str | None = None,
    ) -> bool:
        async with self._write() as conn:
            found = await conn.execute(
                tenants.update()
                .where(tenants.c.id == tenant_id)
                .values(
                    default_locale=default_locale,
                    default_timezone=default_timezone,
                    **_quiet_columns(quiet_hours),
                )
            )
            if not found.rowcount:
                return False
            await conn.execute(
                email_settings.delete().where(email_settings.c.tenant_id == tenant_id)
            )
            if email is not None:
                await conn.execute(
                    email_settings.insert().values(
                        tenant_id=tenant_id,
                        provider=email.provider,
                        fallback=email.fallback,
                        sender=email.sender,
                        sender_name=email.sender_name,
                        reply_to=email.reply_to,
                        updated_at=now,
                    )
                )
        return True

    async def add_key(
        self, *, tenant_id: str, key_id: str, name: str, digest: str, now: datetime
    ) -> bool:
        async with self._write() as conn:
            exists = await conn.scalar(sa.select(tenants.c.id).where(tenants.c.id == tenant_id))
            if exists is None:
                return False
            await conn.execute(
                api_keys.insert().values(
                    id=key_id, tenant_id=tenant_id, name=name, digest=digest, created_at=now
                )
            )
        return True

    async def find_key(self, key_id: str) -> ports.StoredKey | None:
        async with self._read() as conn:
            row = (
                await conn.execute(
                    sa.select(api_keys.c.tenant_id, api_keys.c.digest, api_keys.c.revoked_at).where(
                        api_keys.c.id == key_id
                    )
                )
            ).first()
        if row is None:
            return None
        return ports.StoredKey(
            tenant_id=row.tenant_id, digest=row.digest, revoked=row.revoked_at is not None
        )

    async def list_keys(self, tenant_id: str) -> list[ports.ApiKeyInfo]:
        async with self._read() as conn:
            rows = await conn.execute(
                sa.select(api_keys)
                .where(api_keys.c.tenant_id == tenant_id)
                .order_by(api_keys.c.created_at, api_keys.c.id)
            )
            return [
                ports.ApiKeyInfo(
                    id=r.id,
                    tenant_id=r.tenant_id,
                    name=r.name,
                    created_at=r.created_at,
                    revoked_at=r.revoked_at,
                )
                for r in rows
            ]

    async def revoke_key(self, key_id: str, now: datetime) -> bool:
        async with self._write() as conn:
            result = await conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            if result.rowcount:
                return True
            # Revoking twice is not an error; only an unknown key is.
            found = await conn.scalar(sa.select(api_keys.c.id).where(api_keys.c.id == key_id))
            return found is not None

    # -----------------------------------------------------------------------------------------
    # directory

    async def put_user(
        self, tenant_id: str, external_id: str, fields: ports.UserFields, now: datetime
    ) -> tuple[ports.UserRecord, bool]:
        values: dict[str, Any] = {
            "email": fields.email,
            "locale": fields.locale,
            "timezone": fields.timezone,
            "attributes": fields.attributes,
            "updated_at": now,
            **_quiet_columns(fields.quiet_hours),
        }
        async with self._write() as conn:
            existing = await conn.scalar(
                self._locked(sa.select(users.c.id).where(_user_is(tenant_id, external_id)))
            )
            if existing is None:
                await conn.execute(
                    users.insert().values(
                        tenant_id=tenant_id, external_id=external_id, created_at=now, **values
                    )
                )
            else:
                before = await conn.scalar(sa.select(users.c.email).where(users.c.id == existing))
                if before != fields.email:
                    # A new address has not bounced or unsubscribed yet.
                    values["email_status"] = "subscribed"
                await conn.execute(users.update().where(users.c.id == existing).values(**values))
            record = await self._user(conn, tenant_id, external_id)
        assert record is not None
        return record, existing is None

    async def get_user(self, tenant_id: str, external_id: str) -> ports.UserRecord | None:
        async with self._read() as conn:
            return await self._user(conn, tenant_id, external_id)

    async def _user(
        self, conn: AsyncConnection, tenant_id: str, external_id: str
    ) -> ports.UserRecord | None:
        row = (await conn.execute(sa.select(users).where(_user_is(tenant_id, external_id)))).first()
        if row is None:
            return None
        return ports.UserRecord(
            id=row.id,
            external_id=row.external_id,
            email=row.email,
            email_status=row.email_status,
            locale=row.locale,
            timezone=row.timezone,
            attributes=row.attributes,
            created_at=row.created_at,
            updated_at=row.updated_at,
            quiet_hours=_quiet(row.quiet_start, row.quiet_end),
        )

    async def ensure_user(self, tenant_id: str, external_id: str, now: datetime) -> int:
        async with self._write() as conn:
            await self._create_users(conn, tenant_id, [external_id], now)
            user_id = await conn.scalar(
                sa.select(users.c.id).where(_user_is(tenant_id, external_id))
            )
        assert user_id is not None
        return int(user_id)

    async def _create_users(
        self, conn: AsyncConnection, tenant_id: str, external_ids: Sequence[str], now: datetime
    ) -> None:
        rows = [
            {
                "tenant_id": tenant_id,
                "external_id": ext,
                "attributes": {},
                "created_at": now,
                "updated_at": now,
            }
            for ext in external_ids
        ]
        for chunk in _chunks(rows, _CHUNK):
            await conn.execute(
                self._insert(users).on_conflict_do_nothing(
                    index_elements=["tenant_id", "external_id"]
                ),
                chunk,
            )

    async def delete_user(self, tenant_id: str, external_id: str) -> bool:
        async with self._write() as conn:
            user_id = await conn.scalar(
                sa.select(users.c.id).where(_user_is(tenant_id, external_id))
            )
            if user_id is None:
                return False
            # The audit trail points at items and deliveries by id, without a foreign key
            # (it is append-only), so erase the user's entries explicitly.
            item_ids = sa.select(inbox_items.c.id).where(inbox_items.c.user_id == user_id)
            delivery_ids = sa.select(deliveries.c.id).where(deliveries.c.user_id == user_id)
            await conn.execute(
                transitions.delete().where(
                    transitions.c.tenant_id == tenant_id,
                    sa.or_(
                        sa.and_(
                            transitions.c.subject == Subject.ITEM,
                            transitions.c.subject_id.in_(item_ids),
                        ),
                        sa.and_(
                            transitions.c.subject == Subject.DELIVERY,
                            transitions.c.subject_id.in_(delivery_ids),
                        ),
                    ),
                )
            )
            await conn.execute(users.delete().where(users.c.id == user_id))
        return True

    async def put_group(
        self,
        tenant_id: str,
        key: str,
        *,
        kind: str,
        name: str | None,
        community: str | None,
        attributes: JsonObject,
        now: datetime,
        fcm_topic: str | None = None,
    ) -> tuple[ports.GroupRecord, bool]:
        async with self._write() as conn:
            community_id = None
            if community is not None:
                parent = (
                    await conn.execute(
                        sa.select(groups.c.id, groups.c.kind).where(_group_is(tenant_id, community))
                    )
                ).first()
                if parent is None:
                    raise errors.UnknownCommunity(f"community {community!r} does not exist")
                if parent.kind != "community" or kind != "group":
                    raise errors.GroupKindMismatch(
                        "only a group can belong, and only to a community"
                    )
                community_id = parent.id
            current = (
                await conn.execute(
                    self._locked(
                        sa.select(groups.c.id, groups.c.kind).where(_group_is(tenant_id, key))
                    )
                )
            ).first()
            values = {
                "name": name,
                "community_id": community_id,
                "fcm_topic": fcm_topic,
                "attributes": attributes,
                "updated_at": now,
            }
            if current is None:
                await conn.execute(
                    groups.insert().values(
                        tenant_id=tenant_id, key=key, kind=kind, created_at=now, **values
                    )
                )
            else:
                if current.kind != kind:
                    raise errors.GroupKindMismatch(
                        f"{key!r} is a {current.kind}; its kind cannot change"
                    )
                await conn.execute(
                    groups.update().where(groups.c.id == current.id).values(**values)
                )
            record = await self._group(conn, tenant_id, key)
        assert record is not None
        return record, current is None

    async def get_group(self, tenant_id: str, key: str) -> ports.GroupRecord | None:
        async with self._read() as conn:
            return await self._group(conn, tenant_id, key)

    async def _group(
        self, conn: AsyncConnection, tenant_id: str, key: str
    ) -> ports.GroupRecord | None:
        parent = groups.alias("parent")
        members = (
            sa.select(sa.func.count())
            .select_from(memberships)
            .where(memberships.c.group_id == groups.c.id)
            .scalar_subquery()
        )
        row = (
            await conn.execute(
                sa.select(groups, parent.c.key.label("community_key"), members.label("members"))
                .select_from(groups.outerjoin(parent, parent.c.id == groups.c.community_id))
                .where(_group_is(tenant_id, key))
            )
        ).first()
        if row is None:
            return None
        return ports.GroupRecord(
            id=row.id,
            key=row.key,
            kind=row.kind,
            name=row.name,
            community=row.community_key,
            attributes=row.attributes,
            member_count=row.members,
            created_at=row.created_at,
            updated_at=row.updated_at,
            fcm_topic=row.fcm_topic,
        )

    async def put_member(
        self, tenant_id: str, group_key: str, external_id: str, now: datetime
    ) -> bool | None:
        async with self._write() as conn:
            group_id = await conn.scalar(
                sa.select(groups.c.id).where(_group_is(tenant_id, group_key))
            )
            if group_id is None:
                return None
            await self._create_users(conn, tenant_id, [external_id], now)
            user_id = await conn.scalar(
                sa.select(users.c.id).where(_user_is(tenant_id, external_id))
            )
            result = await conn.execute(
                self._insert(memberships)
                .values(group_id=group_id, user_id=user_id, created_at=now)
                .on_conflict_do_nothing(index_elements=["group_id", "user_id"])
            )
            return bool(result.rowcount)

    async def delete_member(self, tenant_id: str, group_key: str, external_id: str) -> bool:
        async with self._write() as conn:
            result = await conn.execute(
                memberships.delete().where(
                    memberships.c.group_id.in_(
                        sa.select(groups.c.id).where(_group_is(tenant_id, group_key))
                    ),
                    memberships.c.user_id.in_(
                        sa.select(users.c.id).where(_user_is(tenant_id, external_id))
                    ),
                )
            )
            return bool(result.rowcount)

    async def missing_groups(self, tenant_id: str, keys: Sequence[str], kind: str) -> list[str]:
        found: set[str] = set()
        async with self._read() as conn:
            for chunk in _chunks(list(keys), _CHUNK):
                rows = await conn.execute(
                    sa.select(groups.c.key).where(
                        groups.c.tenant_id == tenant_id,
                        groups.c.kind == kind,
                        groups.c.key.in_(chunk),
                    )
                )
                found.update(r.key for r in rows)
        return [k for k in keys if k not in found]

    # -----------------------------------------------------------------------------------------
    # events

    async def insert_event(
        self,
        *,
        tenant_id: str,
        event_id: str,
        spec: EventSpec,
        idempotency_key: str | None,
        fingerprint: str,
        now: datetime,
        send_at: datetime | None = None,
        expires_at: datetime | None = None,
    ) -> ports.StoredEvent:
        try:
            async with self._write() as conn:
                if idempotency_key is not None:
                    earlier = await self._event_by_key(conn, tenant_id, idempotency_key)
                    if earlier is not None:
                        return earlier
                await conn.execute(
                    events.insert().values(
                        id=event_id,
                        tenant_id=tenant_id,
                        type=spec.type,
                        payload=spec.to_json(),
                        idempotency_key=idempotency_key,
                        fingerprint=fingerprint,
                        state="accepted",
                        created_at=now,
                        send_at=send_at,
                        expires_at=expires_at,
                    )
                )
                await conn.execute(
                    outbox.insert().values(
                        topic=EVENTS_STREAM,
                        payload={"event_id": event_id, "tenant_id": tenant_id},
                        created_at=now,
                        available_at=send_at or now,
                    )
                )
        except IntegrityError:
            # A concurrent request with the same key won the race (PostgreSQL; SQLite's
            # BEGIN IMMEDIATE serialises writers, so it cannot get here).
            if idempotency_key is None:
                raise
            async with self._read() as conn:
                earlier = await self._event_by_key(conn, tenant_id, idempotency_key)
            if earlier is None:
                raise
            return earlier
        return ports.StoredEvent(
            id=event_id,
            tenant_id=tenant_id,
            spec=spec,
            fingerprint=fingerprint,
            state="accepted",
            created_at=now,
            routed_at=None,
            send_at=send_at,
            expires_at=expires_at,
        )

    async def insert_events(
        self, *, tenant_id: str, batch: Sequence[ports.NewEvent], now: datetime
    ) -> list[ports.StoredEvent]:
        keys = [e.idempotency_key for e in batch if e.idempotency_key is not None]
        for attempt in range(2):
            try:
                async with self._write() as conn:
                    earlier = await self._events_by_keys(conn, tenant_id, keys)
                    clash = any(
                        e.idempotency_key in earlier
                        and earlier[e.idempotency_key].fingerprint != e.fingerprint
                        for e in batch
                    )
                    fresh = [e for e in batch if e.idempotency_key not in earlier]
                    if fresh and not clash:
                        await conn.execute(
                            events.insert(),
                            [
                                {
                                    "id": e.event_id,
                                    "tenant_id": tenant_id,
                                    "type": e.spec.type,
                                    "payload": e.spec.to_json(),
                                    "idempotency_key": e.idempotency_key,
                                    "fingerprint": e.fingerprint,
                                    "state": "accepted",
                                    "created_at": now,
                                    "send_at": e.send_at,
                                    "expires_at": e.expires_at,
                                }
                                for e in fresh
                            ],
                        )
                        await conn.execute(
                            outbox.insert(),
                            [
                                {
                                    "topic": EVENTS_STREAM,
                                    "payload": {"event_id": e.event_id, "tenant_id": tenant_id},
                                    "created_at": now,
                                    "available_at": e.send_at or now,
                                }
                                for e in fresh
                            ],
                        )
                break
            except IntegrityError:
                # A concurrent request took one of the keys (PostgreSQL): read it this time.
                if attempt or not keys:
                    raise
        return [
            earlier[e.idempotency_key]
            if e.idempotency_key in earlier
            else ports.StoredEvent(
                id=e.event_id,
                tenant_id=tenant_id,
                spec=e.spec,
                fingerprint=e.fingerprint,
                state="accepted",
                created_at=now,
                routed_at=None,
                send_at=e.send_at,
                expires_at=e.expires_at,
            )
            for e in batch
        ]

    async def _events_by_keys(
        self, conn: AsyncConnection, tenant_id: str, keys: Sequence[str]
    ) -> dict[str, ports.StoredEvent]:
        found: dict[str, ports.StoredEvent] = {}
        for chunk in _chunks(list(keys), _CHUNK):
            rows = await conn.execute(
                sa.select(events).where(
                    events.c.tenant_id == tenant_id, events.c.idempotency_key.in_(chunk)
                )
            )
            for row in rows:
                found[row.idempotency_key] = _stored_event(row)
        return found

    async def _event_by_key(
        self, conn: AsyncConnection, tenant_id: str, key: str
    ) -> ports.StoredEvent | None:
        row = (
            await conn.execute(
                sa.select(events).where(
                    events.c.tenant_id == tenant_id, events.c.idempotency_key == key
                )
            )
        ).first()
        return None if row is None else _stored_event(row)

    async def get_event(self, tenant_id: str, event_id: str) -> ports.StoredEvent | None:
        async with self._read() as conn:
            row = (
                await conn.execute(
                    sa.select(events).where(
                        events.c.tenant_id == tenant_id, events.c.id == event_id
                    )
                )
            ).first()
        return None if row is None else _stored_event(row)

    async def pending_events(self, event_ids: Sequence[str]) -> list[ports.StoredEvent]:
        found: list[ports.StoredEvent] = []
        async with self._read() as conn:
            for chunk in _chunks(sorted(set(event_ids)), _CHUNK):
                rows = await conn.execute(
                    sa.select(events).where(events.c.id.in_(chunk), events.c.state == "accepted")
                )
                found.extend(_stored_event(row) for row in rows)
        return found

    async def audience_attributes(
        self, tenant_id: str, spec: EventSpec
    ) -> list[tuple[str, JsonObject]]:
        audience = _audience(tenant_id, spec)
        async with self._read() as conn:
            rows = await conn.execute(
                sa.select(users.c.external_id, users.c.attributes).join(
                    audience, audience.c.user_id == users.c.id
                )
            )
            return [(row.external_id, row.attributes or {}) for row in rows]

    async def audience_locales(self, tenant_id: str, spec: EventSpec) -> set[str | None]:
        audience = _audience(tenant_id, spec)
        async with self._read() as conn:
            found: set[str | None] = set(
                await conn.scalars(
                    sa.select(users.c.locale)
                    .distinct()
                    .join(audience, audience.c.user_id == users.c.id)
                )
            )
            named = sorted(set(spec.recipients.users))
            existing = 0
            for chunk in _chunks(named, _CHUNK):
                existing += (
                    await conn.scalar(
                        sa.select(sa.func.count()).where(
                            users.c.tenant_id == tenant_id, users.c.external_id.in_(chunk)
                        )
                    )
                ) or 0
        if existing < len(named):
            found.add(None)  # named users routing will create have no locale yet
        return found

    async def route_events(
        self, plans: Sequence[ports.PlannedEvent], *, now: datetime
    ) -> list[ports.Routed | None]:
        # Locked in id order, so that two routers with overlapping batches cannot deadlock.
        wanted = sorted({plan.event_id for plan in plans})
        async with self._write() as conn:
            found: dict[str, Any] = {}
            for chunk in _chunks(wanted, _CHUNK):
                query = sa.select(events).where(events.c.id.in_(chunk)).order_by(events.c.id)
                for row in await conn.execute(self._locked(query)):
                    found[row.id] = row
            todo: list[tuple[ports.PlannedEvent, ports.StoredEvent]] = []
            first: set[int] = set()  # the plans routed: an event planned twice is routed once
            for index, plan in enumerate(plans):
                row = found.pop(plan.event_id, None)
                if row is not None and row.state == "accepted":
                    todo.append((plan, _stored_event(row)))
                    first.add(index)
            routed = {r.event_id: r for r in await self._route_locked(conn, todo, now)}
        return [
            routed.get(plan.event_id) if index in first else None
            for index, plan in enumerate(plans)
        ]

    async def _route_locked(
        self,
        conn: AsyncConnection,
        todo: Sequence[tuple[ports.PlannedEvent, ports.StoredEvent]],
        now: datetime,
    ) -> list[ports.Routed]:
        """Route the events (locked, still `accepted`) in the open transaction: a fixed number
        of statements for the whole batch where the work is alike (users, notifications, items,
        deliveries, audit, state), one per event only for what an event alone asks for (inbox
        renderings, topic sends, expiry, escalations, digests)."""
        # An early message of a scheduled event (a duplicate): the relay sends it on time.
        work = [
            _Routing.of(plan, event, now)
            for plan, event in todo
            if event.send_at is None or event.send_at <= now
        ]
        if not work:
            return []
        by_tenant: dict[str, list[_Routing]] = {}
        for w in work:
            by_tenant.setdefault(w.tenant_id, []).append(w)
        for tenant_id, mine in by_tenant.items():
            named = sorted({u for w in mine for u in w.spec.recipients.users})
            await self._create_users(conn, tenant_id, named, now)
            kinds = sorted({w.spec.category for w in mine if w.spec.category is not None})
            if kinds:
                await conn.execute(
                    self._insert(categories).on_conflict_do_nothing(
                        index_elements=["tenant_id", "key"]
                    ),
                    [{"tenant_id": tenant_id, "key": key, "created_at": now} for key in kinds],
                )
        await conn.execute(notifications.insert(), [w.notification_row(now) for w in work])
        recipients = await self._insert_union(
            conn,
            inbox_items,
            _ITEM_COLUMNS,
            [(w.notification_id, w.weight, w.item_rows(now)) for w in work],
        )
        for w in work:
            if w.plan.inbox:
                await self._write_inbox_content(conn, w.tenant_id, w.notification_id, w.plan.inbox)
        parts: list[tuple[str, int, sa.Select[Any]]] = []
        for w in work:
            for channel in w.channels:
                # Members of groups mapped to FCM topics hear of it through the topic send,
                # unless a rule sends FCM to some recipients only: a topic reaches them all.
                through_topics = None
                if channel == Channel.FCM and channel not in w.plan.only:
                    w.topic_sends = await topics.write_topic_sends(
                        conn, w.tenant_id, w.notification_id, w.spec, now
                    )
                    through_topics = topics.reached_through_topics(w.tenant_id, w.spec)
                among: list[tuple[int, sa.Select[Any] | None]] = [(0, None)]
                if channel in w.plan.only:
                    among = [
                        (
                            len(chunk),
                            sa.select(users.c.id).where(
                                users.c.tenant_id == w.tenant_id, users.c.external_id.in_(chunk)
                            ),
                        )
                        for chunk in _chunks(sorted(w.plan.only[channel]), _CHUNK)
                    ]
                for size, chosen in among:
                    rows = _delivery_rows(
                        w.tenant_id,
                        w.notification_id,
                        channel,
                        now,
                        category=w.spec.category,
                        group=w.group,
                        excluded=through_topics,
                        among=chosen,
                    )
                    parts.append((w.notification_id, w.weight + size, rows))
        sent_on = await self._insert_union(conn, deliveries, DELIVERY_COLUMNS, parts)
        ids = [w.notification_id for w in work]
        # An item none of whose deliveries may go out is suppressed as a whole.
        await conn.execute(
            inbox_items.update()
            .where(
                inbox_items.c.notification_id.in_(ids),
                ~sa.exists().where(
                    deliveries.c.item_id == inbox_items.c.id,
                    deliveries.c.status != str(Status.SUPPRESSED),
                ),
            )
            .values(status=str(Status.SUPPRESSED))
        )
        for tenant_id, mine in by_tenant.items():
            held = [w.notification_id for w in mine if w.held]
            if held:
                await self._hold_for_quiet_hours(conn, tenant_id, held, now)
        for w in work:
            if w.expires_at is not None:
                for table in (inbox_items, deliveries):
                    await conn.execute(
                        table.update()
                        .where(table.c.notification_id == w.notification_id)
                        .values(expires_at=w.expires_at)
                    )
        await self._audit_creation(conn, ids, now)
        for w in work:
            rule = w.plan.rule
            if rule is not None and (rule.resend_push_after or rule.email_if_unread_after):
                await escalations.write(
                    conn,
                    w.tenant_id,
                    w.notification_id,
                    now,
                    resend_push_after=rule.resend_push_after,
                    email_if_unread_after=rule.email_if_unread_after,
                )
            if rule is not None and rule.digest_window is not None:
                await digests.write(
                    conn,
                    w.tenant_id,
                    w.notification_id,
                    now,
                    rule_key=rule.rule_key,
                    key=rule.digest_key,
                    window=rule.digest_window,
                    channels=rule.digest_channels,
                    insert=self._insert,
                )
        routed_ids = [w.plan.event_id for w in work]
        for chunk in _chunks(routed_ids, _CHUNK):
            await conn.execute(
                events.update().where(events.c.id.in_(chunk)).values(state="routed", routed_at=now)
            )
        return [
            ports.Routed(
                tenant_id=w.tenant_id,
                notification_id=w.notification_id,
                recipients=recipients.get(w.notification_id, 0),
                deliveries=sent_on.get(w.notification_id, 0),
                topic_sends=w.topic_sends,
                event_id=w.plan.event_id,
            )
            for w in work
        ]

    async def _insert_union(
        self,
        conn: AsyncConnection,
        table: sa.Table,
        columns: list[str],
        parts: Sequence[tuple[str, int, sa.Select[Any]]],
    ) -> dict[str, int]:
        """``INSERT INTO table ... SELECT`` of the parts (notification id, bound parameters it
        carries, rows), as few statements as the parameter limits allow (each a ``UNION ALL``
        of parts): a batch of small events costs a round trip, not one per event. Rows written
        per notification id."""
        written: dict[str, int] = {}
        shared: set[str] = set()  # in a statement with other notifications: counted after
        for group in _bounded(parts):
            query = group[0][2] if len(group) == 1 else sa.union_all(*(p[2] for p in group))
            result = await conn.execute(table.insert().from_select(columns, query))
            names = {p[0] for p in group}
            if len(names) == 1:
                [name] = names
                written[name] = written.get(name, 0) + (result.rowcount or 0)
            else:
                shared |= names
        for chunk in _chunks(sorted(shared), _CHUNK):
            written.update(dict.fromkeys(chunk, 0))
            counted = await conn.execute(
                sa.select(table.c.notification_id, sa.func.count())
                .where(table.c.notification_id.in_(chunk))
                .group_by(table.c.notification_id)
            )
            written.update((name, count) for name, count in counted)
        return written

    async def _write_inbox_content(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        notification_id: str,
        inbox: Mapping[str | None, tuple[str, str]],
    ) -> None:
        """The items' title and body rendered per recipient locale: one UPDATE per distinct
        rendering, over the recipients whose locale is among those that rendered it."""
        by_content: dict[tuple[str, str], list[str | None]] = {}
        for locale, content in inbox.items():
            by_content.setdefault(content, []).append(locale)
        for (title, body), locales in by_content.items():
            named = [loc for loc in locales if loc is not None]
            matches = [users.c.locale.in_(named)] if named else []
            if None in locales:
                matches.append(users.c.locale.is_(None))
            await conn.execute(
                inbox_items.update()
                .where(
                    inbox_items.c.notification_id == notification_id,
                    inbox_items.c.user_id.in_(
                        sa.select(users.c.id).where(
                            users.c.tenant_id == tenant_id, sa.or_(*matches)
                        )
                    ),
                )
                .values(title=title, body=body)
            )

    async def _hold_for_quiet_hours(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        notification_ids: Sequence[str],
        now: datetime,
    ) -> None:
        """Hold the notifications' pending push and email deliveries of recipients inside
        their quiet hours until the window ends: one read of the distinct (time zone, window)
        pairs among them, then one UPDATE per pair that is quiet now."""
        tenant = (
            await conn.execute(
                sa.select(
                    tenants.c.quiet_start, tenants.c.quiet_end, tenants.c.default_timezone
                ).where(tenants.c.id == tenant_id)
            )
        ).one()
        held = [str(c) for c in _HELD_CHANNELS]
        pending = sa.and_(
            deliveries.c.notification_id.in_(notification_ids),
            deliveries.c.channel.in_(held),
            deliveries.c.status == str(Status.PENDING),
        )
        if tenant.quiet_start is None:
            # No tenant default: only users with a window of their own can be quiet.
            pending = sa.and_(pending, users.c.quiet_start.is_not(None))
        pairs = (
            await conn.execute(
                sa.select(users.c.timezone, users.c.quiet_start, users.c.quiet_end)
                .distinct()
                .select_from(deliveries.join(users, users.c.id == deliveries.c.user_id))
                .where(pending)
            )
        ).all()
        tenant_window = _quiet(tenant.quiet_start, tenant.quiet_end)
        for timezone, start, end in pairs:
            window = _quiet(start, end) if start is not None else tenant_window
            zone = quiet_hours.zone_of(timezone, tenant.default_timezone)
            until = quiet_hours.held_until(now, window, zone)
            if until is None:
                continue
            await conn.execute(
                deliveries.update()
                .where(
                    deliveries.c.notification_id.in_(notification_ids),
                    deliveries.c.channel.in_(held),
                    deliveries.c.status == str(Status.PENDING),
                    deliveries.c.user_id.in_(
                        sa.select(users.c.id).where(
                            users.c.tenant_id == tenant_id,
                            users.c.timezone.is_not_distinct_from(timezone),
                            users.c.quiet_start.is_not_distinct_from(start),
                            users.c.quiet_end.is_not_distinct_from(end),
                        )
                    ),
                )
                .values(next_attempt_at=until)
            )

    async def _audit_creation(
        self, conn: AsyncConnection, notification_ids: Sequence[str], now: datetime
    ) -> None:
        # One statement for both (a round trip saved per routed batch): items, then deliveries.
        for chunk in _chunks(notification_ids, _CHUNK):
            parts = [
                sa.select(
                    table.c.tenant_id,
                    sa.literal(str(subject)),
                    table.c.id,
                    sa.null(),
                    table.c.status,
                    sa.literal("routed"),
                    sa.literal(now, UtcNow),
                ).where(table.c.notification_id.in_(chunk))
                for subject, table in ((Subject.ITEM, inbox_items), (Subject.DELIVERY, deliveries))
            ]
            await conn.execute(
                transitions.insert().from_select(
                    AUDIT_COLUMNS,
                    sa.union_all(*parts),
                )
            )

    async def unrouted_events(self, *, accepted_before: datetime, limit: int) -> list[str]:
        async with self._read() as conn:
            rows = await conn.execute(
                sa.select(events.c.id)
                .where(
                    events.c.state == "accepted",
                    events.c.created_at <= accepted_before,
                    _due_by(accepted_before),
                )
                .order_by(events.c.created_at)
                .limit(limit)
            )
            return [r.id for r in rows]

    async def take_stale_events(
        self, *, accepted_before: datetime, limit: int, now: datetime
    ) -> list[str]:
        stale = (
            sa.select(events.c.id)
            .where(
                events.c.state == "accepted",
                events.c.created_at <= accepted_before,
                # A scheduled event is stale only once it has been due that long.
                _due_by(accepted_before),
                _redelivery_due(now, window=max(now - accepted_before, timedelta(0))),
            )
            .order_by(events.c.created_at)
            .limit(limit)
        )
        if self._dialect == "postgresql":
            stale = stale.with_for_update(skip_locked=True)
        async with self._write() as conn:
            rows = await conn.execute(
                events.update()
                .where(events.c.id.in_(stale.scalar_subquery()))
                .values(redelivered_at=now, redeliveries=events.c.redeliveries + 1)
                .returning(events.c.id)
            )
            return [r.id for r in rows]

    async def pending_outbox(
        self, limit: int, *, now: datetime | None = None
    ) -> list[ports.OutboxEntry]:
        due: sa.ColumnElement[bool] = sa.true()
        if now is not None:
            # Entries scheduled for later wait; they never hold up the due ones behind them,
            # and the index (published_at, available_at, id) ends the scan at the first of them.
            due = outbox.c.available_at <= now
        async with self._read() as conn:
            rows = await conn.execute(
                sa.select(outbox.c.id, outbox.c.topic, outbox.c.payload)
                .where(outbox.c.published_at.is_(None), due)
                .order_by(outbox.c.available_at, outbox.c.id)
                .limit(limit)
            )
            return [ports.OutboxEntry(id=r.id, topic=r.topic, payload=r.payload) for r in rows]

    async def mark_published(self, ids: Sequence[int], now: datetime) -> None:
        async with self._write() as conn:
            for chunk in _chunks(list(ids), _CHUNK):
                await conn.execute(
                    outbox.update().where(outbox.c.id.in_(chunk)).values(published_at=now)
                )

    async def prune_outbox(self, *, published_before: datetime) -> int:
        """Forget entries published before the given time."""
        async with self._write() as conn:
            result = await conn.execute(
                outbox.delete().where(
                    outbox.c.published_at.is_not(None), outbox.c.published_at < published_before
                )
            )
            return result.rowcount

    # -----------------------------------------------------------------------------------------
    # realtime

    async def items_for_users(
        self, tenant_id: str, notification_id: str, user_ids: Sequence[int]
    ) -> list[ports.Addressed]:
        found: list[ports.Addressed] = []
        async with self._read() as conn:
            for chunk in _chunks(list(user_ids), _CHUNK):
                rows = await conn.execute(
                    _item_query().where(
                        inbox_items.c.tenant_id == tenant_id,
                        inbox_items.c.notification_id == notification_id,
                        inbox_items.c.user_id.in_(chunk),
                        inbox_items.c.status != str(Status.SUPPRESSED),
                    )
                )
                found.extend(_addressed(r) for r in rows)
        return found

    async def backlog(
        self,
        tenant_id: str,
        user_id: int,
        *,
        after: int | None,
        start: int,
        limit: int,
        now: datetime | None = None,
    ) -> list[ports.Addressed]:
        wanted = inbox_items.c.status == str(Status.PENDING)
        if after is not None:
            wanted = sa.or_(
                sa.and_(
                    inbox_items.c.id > after,
                    inbox_items.c.status.not_in([str(Status.SUPPRESSED), str(Status.EXPIRED)]),
                ),
                wanted,
            )
        if now is not None:
            # Expired, though the sweep may not have marked it yet.
            wanted = sa.and_(
                wanted, sa.or_(inbox_items.c.expires_at.is_(None), inbox_items.c.expires_at > now)
            )
        async with self._read() as conn:
            rows = await conn.execute(
                _item_query()
                .where(
                    inbox_items.c.tenant_id == tenant_id,
                    inbox_items.c.user_id == user_id,
                    inbox_items.c.id > start,
                    wanted,
                )
                .order_by(inbox_items.c.id)
                .limit(limit)
            )
            return [_addressed(r) for r in rows]

    async def mark_sent(
        self, tenant_id: str, item_ids: Sequence[int], *, channel: Channel, now: datetime
    ) -> list[int]:
        moved: list[int] = []
        async with self._write() as conn:
            for chunk in _chunks(list(item_ids), _CHUNK):
                rows = await conn.execute(
                    self._locked(
                        sa.select(inbox_items.c.id, inbox_items.c.status).where(
                            inbox_items.c.tenant_id == tenant_id, inbox_items.c.id.in_(chunk)
                        )
                    )
                )
                items = [(r.id, Status(r.status)) for r in rows]
                moved += await self._move(
                    conn,
                    tenant_id,
                    inbox_items,
                    Subject.ITEM,
                    items,
                    Status.SENT,
                    cause=str(channel),
                    now=now,
                )
                rows = await conn.execute(
                    self._locked(
                        sa.select(deliveries.c.id, deliveries.c.status).where(
                            deliveries.c.tenant_id == tenant_id,
                            deliveries.c.item_id.in_(chunk),
                            deliveries.c.channel == str(channel),
                        )
                    )
                )
                await self._move(
                    conn,
                    tenant_id,
                    deliveries,
                    Subject.DELIVERY,
                    [(r.id, Status(r.status)) for r in rows],
                    Status.SENT,
                    cause=str(channel),
                    now=now,
                    extra={"attempts": deliveries.c.attempts + 1},
                )
        return moved

    async def _move(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        table: sa.Table,
        subject: Subject,
        current: Iterable[tuple[int, Status]],
        target: Status,
        *,
        cause: str,
        now: datetime,
        extra: dict[str, Any] | None = None,
    ) -> list[int]:
        """Move the rows that may move to `target` and record each move. The ids moved."""
        allowed = sources_of(target)
        movable = [(i, s) for i, s in current if s in allowed]
        if not movable:
            return []
        ids = [i for i, _ in movable]
        values: dict[str, Any] = {"status": str(target)}
        stamp = timestamp_field(target)
        if stamp is not None:
            values[stamp] = now
        if "updated_at" in table.c:
            values["updated_at"] = now
        values.update(extra or {})
        for chunk in _chunks(ids, _CHUNK):
            await conn.execute(
                table.update()
                .where(table.c.id.in_(chunk), table.c.status.in_([str(s) for s in allowed]))
                .values(**values)
            )
        await conn.execute(
            transitions.insert(),
            [
                {
                    "tenant_id": tenant_id,
                    "subject": str(subject),
                    "subject_id": i,
                    "source": str(s),
                    "target": str(target),
                    "cause": cause,
                    "at": now,
                }
                for i, s in movable
            ],
        )
        if table is inbox_items:
            # Received or read: the rule's follow-ups for the item are pointless now.
            await escalations.cancel(conn, ids, target, now)
        return ids

    async def apply_receipt(
        self,
        tenant_id: str,
        user_id: int,
        item_id: int,
        target: Status,
        *,
        channel: Channel | None,
        cause: str,
        now: datetime,
    ) -> ports.Moved | None:
        async with self._write() as conn:
            row = (
                await conn.execute(
                    self._locked(
                        sa.select(inbox_items.c.id, inbox_items.c.status).where(
                            inbox_items.c.tenant_id == tenant_id,
                            inbox_items.c.user_id == user_id,
                            inbox_items.c.id == item_id,
                            # What the user opted out of was never theirs to see.
                            inbox_items.c.status != str(Status.SUPPRESSED),
                        )
                    )
                )
            ).first()
            if row is None:
                return None
            before = Status(row.status)
            moved = await self._move(
                conn,
                tenant_id,
                inbox_items,
                Subject.ITEM,
                [(row.id, before)],
                target,
                cause=cause,
                now=now,
            )
            if channel is not None:
                rows = await conn.execute(
                    self._locked(
                        sa.select(deliveries.c.id, deliveries.c.status).where(
                            deliveries.c.item_id == item_id,
                            deliveries.c.channel == str(channel),
                        )
                    )
                )
                await self._move(
                    conn,
                    tenant_id,
                    deliveries,
                    Subject.DELIVERY,
                    [(r.id, Status(r.status)) for r in rows],
                    target,
                    cause=cause,
                    now=now,
                )
        return ports.Moved(
            item_id=item_id,
            user_id=user_id,
            status=target if moved else before,
            changed=bool(moved),
        )

    # -----------------------------------------------------------------------------------------
    # the user's own side: inbox, bulk reads, preferences, devices, email

    async def inbox(self, tenant_id: str, user_id: int, query: ports.InboxQuery) -> list[InboxItem]:
        """The user's items matching `query`, newest first."""
        conditions = [
            inbox_items.c.tenant_id == tenant_id,
            inbox_items.c.user_id == user_id,
            inbox_items.c.status.in_([str(s) for s in query.statuses]),
        ]
        if query.group is not None:
            conditions.append(inbox_items.c.group_key == query.group)
        if query.category is not None:
            conditions.append(inbox_items.c.category == query.category)
        if query.since is not None:
            conditions.append(inbox_items.c.created_at >= query.since)
        if query.before is not None:
            conditions.append(inbox_items.c.id < query.before)
        async with self._read() as conn:
            rows = await conn.execute(
                _item_query()
                .where(*conditions)
                .order_by(inbox_items.c.id.desc())
                .limit(query.limit)
            )
            return [_addressed(r).item for r in rows]

    async def inbox_item(self, tenant_id: str, user_id: int, item_id: int) -> InboxItem | None:
        """One of the user's items, or None (also when it is someone else's)."""
        async with self._read() as conn:
            row = (
                await conn.execute(
                    _item_query().where(
                        inbox_items.c.tenant_id == tenant_id,
                        inbox_items.c.user_id == user_id,
                        inbox_items.c.id == item_id,
                        inbox_items.c.status != str(Status.SUPPRESSED),
                    )
                )
            ).first()
        return None if row is None else _addressed(row).item

    async def unread_counts(self, tenant_id: str, user_id: int) -> ports.UnreadCounts:
        """Unread items in all, per group and per category, in one aggregate."""
        mine = sa.and_(
            inbox_items.c.tenant_id == tenant_id,
            inbox_items.c.user_id == user_id,
            inbox_items.c.status.in_([str(s) for s in UNREAD]),
        )
        async with self._read() as conn:
            rows = (
                await conn.execute(
                    sa.select(
                        inbox_items.c.group_key,
                        inbox_items.c.category,
                        sa.func.count().label("n"),
                    )
                    .where(mine)
                    .group_by(inbox_items.c.group_key, inbox_items.c.category)
                )
            ).all()
        groups: dict[str, int] = {}
        categories: dict[str, int] = {}
        for r in rows:
            if r.group_key is not None:
                groups[r.group_key] = groups.get(r.group_key, 0) + r.n
            if r.category is not None:
                categories[r.category] = categories.get(r.category, 0) + r.n
        return ports.UnreadCounts(
            total=sum(r.n for r in rows), groups=groups, categories=categories
        )

    async def unread_totals(self, tenant_id: str, external_ids: Sequence[str]) -> dict[str, int]:
        """Each named user's unread items in all (users with none are left out), in one
        aggregate per 500 users."""
        found: dict[str, int] = {}
        async with self._read() as conn:
            for chunk in _chunks(sorted(set(external_ids)), _CHUNK):
                rows = await conn.execute(
                    sa.select(users.c.external_id, sa.func.count())
                    .select_from(inbox_items.join(users, users.c.id == inbox_items.c.user_id))
                    .where(
                        users.c.tenant_id == tenant_id,
                        users.c.external_id.in_(chunk),
                        inbox_items.c.status.in_([str(s) for s in UNREAD]),
                    )
                    .group_by(users.c.external_id)
                )
                found.update((r[0], r[1]) for r in rows)
        return found

    async def read_all(
        self,
        tenant_id: str,
        user_id: int,
        *,
        group: str | None,
        category: str | None,
        cause: str,
        now: datetime,
    ) -> list[int]:
        """Mark every unread item of the user (in the group and/or category) read, set-based:
        one statement records the moves in the audit trail, one makes them. The ids moved."""
        sources = [str(s) for s in sources_of(Status.READ)]
        conditions = [
            inbox_items.c.tenant_id == tenant_id,
            inbox_items.c.user_id == user_id,
            inbox_items.c.status.in_(sources),
        ]
        if group is not None:
            conditions.append(inbox_items.c.group_key == group)
        if category is not None:
            conditions.append(inbox_items.c.category == category)
        async with self._write() as conn:
            # Lock and read the rows that will move; on SQLite the write lock already holds.
            moving = (
                (
                    await conn.execute(
                        self._locked(sa.select(inbox_items.c.id).where(*conditions)).order_by(
                            inbox_items.c.id
                        )
                    )
                )
                .scalars()
                .all()
            )
            if not moving:
                return []
            await conn.execute(
                transitions.insert().from_select(
                    AUDIT_COLUMNS,
                    sa.select(
                        sa.literal(tenant_id),
                        sa.literal(str(Subject.ITEM)),
                        inbox_items.c.id,
                        inbox_items.c.status,
                        sa.literal(str(Status.READ)),
                        sa.literal(cause),
                        sa.literal(now, UtcNow),
                    )
                    .where(*conditions)
                    .order_by(inbox_items.c.id),
                )
            )
            await conn.execute(
                inbox_items.update().where(*conditions).values(status=str(Status.READ), read_at=now)
            )
            await escalations.cancel(conn, moving, Status.READ, now)
        return list(moving)

    async def put_preferences(
        self,
        tenant_id: str,
        user_id: int,
        scope: str,
        key: str,
        channels: dict[str, bool],
        now: datetime,
    ) -> None:
        """Replace the user's channel switches for one group or category; none re-subscribes."""
        async with self._write() as conn:
            await conn.execute(
                preferences.delete().where(
                    preferences.c.user_id == user_id,
                    preferences.c.scope == scope,
                    preferences.c.key == key,
                )
            )
            if channels:
                await conn.execute(
                    preferences.insert(),
                    [
                        {
                            "tenant_id": tenant_id,
                            "user_id": user_id,
                            "scope": scope,
                            "key": key,
                            "channel": channel,
                            "enabled": enabled,
                            "updated_at": now,
                        }
                        for channel, enabled in sorted(channels.items())
                    ],
                )

    async def preferences(
        self, tenant_id: str, user_id: int
    ) -> dict[str, dict[str, dict[str, bool]]]:
        """The user's switches: scope → key → channel → enabled."""
        result: dict[str, dict[str, dict[str, bool]]] = {"group": {}, "category": {}}
        async with self._read() as conn:
            rows = await conn.execute(
                sa.select(
                    preferences.c.scope,
                    preferences.c.key,
                    preferences.c.channel,
                    preferences.c.enabled,
                )
                .where(preferences.c.tenant_id == tenant_id, preferences.c.user_id == user_id)
                .order_by(preferences.c.scope, preferences.c.key, preferences.c.channel)
            )
            for r in rows:
                result[r.scope].setdefault(r.key, {})[r.channel] = bool(r.enabled)
        return result

    async def put_device(
        self,
        tenant_id: str,
        external_id: str,
        *,
        provider: str,
        token: str,
        app_id: str | None,
        keys: JsonObject,
        now: datetime,
    ) -> tuple[ports.Device, bool]:
        """Register a token for the user: moved from whoever had it, revived if retired."""
        async with self._write() as conn:
            await self._create_users(conn, tenant_id, [external_id], now)
            user_id = await conn.scalar(
                sa.select(users.c.id).where(_user_is(tenant_id, external_id))
            )
            existing = await conn.scalar(
                self._locked(
                    sa.select(devices.c.id).where(
                        devices.c.tenant_id == tenant_id,
                        devices.c.provider == provider,
                        devices.c.token == token,
                    )
                )
            )
            values = {
                "user_id": user_id,
                "app_id": app_id,
                "keys": keys,
                "status": "active",
                "retired_at": None,
                "retired_reason": None,
                "updated_at": now,
            }
            if existing is None:
                device_id = (
                    await conn.execute(
                        devices.insert()
                        .values(
                            tenant_id=tenant_id,
                            provider=provider,
                            token=token,
                            created_at=now,
                            **values,
                        )
                        .returning(devices.c.id)
                    )
                ).scalar_one()
            else:
                device_id = existing
                await conn.execute(
                    devices.update().where(devices.c.id == existing).values(**values)
                )
            device = await self._devices(conn, tenant_id, devices.c.id == device_id)
        return device[0], existing is None

    async def delete_device(self, tenant_id: str, external_id: str, token: str) -> bool:
        """Unregister the user's device(s) with this token; False when the user has none."""
        async with self._write() as conn:
            result = await conn.execute(
                devices.delete().where(
                    devices.c.tenant_id == tenant_id,
                    devices.c.token == token,
                    devices.c.user_id.in_(
                        sa.select(users.c.id).where(_user_is(tenant_id, external_id))
                    ),
                )
            )
            return bool(result.rowcount)

    async def devices_of(self, tenant_id: str, external_id: str) -> list[ports.Device]:
        """The user's devices, active and retired, oldest first."""
        async with self._read() as conn:
            return await self._devices(
                conn,
                tenant_id,
                devices.c.user_id.in_(
                    sa.select(users.c.id).where(_user_is(tenant_id, external_id))
                ),
            )

    async def _devices(
        self, conn: AsyncConnection, tenant_id: str, condition: sa.ColumnElement[bool]
    ) -> list[ports.Device]:
        rows = await conn.execute(
            sa.select(devices, users.c.external_id)
            .join(users, users.c.id == devices.c.user_id)
            .where(devices.c.tenant_id == tenant_id, condition)
            .order_by(devices.c.id)
        )
        return [
            ports.Device(
                id=r.id,
                user=r.external_id,
                provider=r.provider,
                token=r.token,
                app_id=r.app_id,
                keys=r.keys,
                status=r.status,
                created_at=r.created_at,
                updated_at=r.updated_at,
                retired_at=r.retired_at,
                retired_reason=r.retired_reason,
            )
            for r in rows
        ]

    async def set_email_status(
        self, tenant_id: str, user_id: int, status: str, now: datetime
    ) -> str | None:
        """Set the user's email subscription, unless the address bounced or complained (those
        only clear with a new address). The status afterwards; None if the user has no email."""
        async with self._write() as conn:
            row = (
                await conn.execute(
                    self._locked(
                        sa.select(users.c.email, users.c.email_status).where(
                            users.c.tenant_id == tenant_id, users.c.id == user_id
                        )
                    )
                )
            ).first()
            if row is None or row.email is None:
                return None
            if row.email_status in ("bounced", "complained"):
                return str(row.email_status)
            await conn.execute(
                users.update()
                .where(users.c.id == user_id)
                .values(email_status=status, updated_at=now)
            )
        return status

    async def mark_addresses(
        self, tenant_id: str, addresses: Iterable[str], status: str, now: datetime
    ) -> int:
        """Set `status` (``bounced`` or ``complained``) on every user of the tenant whose
        address, lower-cased, is one of `addresses` (given lower-cased, in every form to match).
        A complaint overrides a bounce, never the other way round. The users changed."""
        if status not in ("bounced", "complained"):
            raise ValueError(f"not a suppression: {status!r}")
        weaker = ("subscribed", "unsubscribed") + (("bounced",) if status == "complained" else ())
        wanted = sorted(addresses)
        changed = 0
        async with self._write() as conn:
            for start in range(0, len(wanted), _CHUNK):
                result = await conn.execute(
                    users.update()
                    .where(
                        users.c.tenant_id == tenant_id,
                        sa.func.lower(users.c.email).in_(wanted[start : start + _CHUNK]),
                        users.c.email_status.in_(weaker),
                    )
                    .values(email_status=status, updated_at=now)
                )
                changed += result.rowcount or 0
        return changed

    async def put_token_key(
        self, tenant_id: str, kid: str, *, algorithm: str, public_key: str, now: datetime
    ) -> bool:
        """Register or replace a token-signing public key; True if it is new."""
        async with self._write() as conn:
            existing = await conn.scalar(
                sa.select(token_keys.c.kid).where(
                    token_keys.c.tenant_id == tenant_id, token_keys.c.kid == kid
                )
            )
            if existing is None:
                await conn.execute(
                    token_keys.insert().values(
                        tenant_id=tenant_id,
                        kid=kid,
                        algorithm=algorithm,
                        public_key=public_key,
                        created_at=now,
                    )
                )
            else:
                await conn.execute(
                    token_keys.update()
                    .where(token_keys.c.tenant_id == tenant_id, token_keys.c.kid == kid)
                    .values(algorithm=algorithm, public_key=public_key, created_at=now)
                )
        return existing is None

    async def token_key(self, tenant_id: str, kid: str) -> ports.TokenKey | None:
        """A registered key, or None."""
        keys = await self.token_keys(tenant_id, kid)
        return keys[0] if keys else None

    async def token_keys(self, tenant_id: str, kid: str | None = None) -> list[ports.TokenKey]:
        """The tenant's registered keys (or the one named)."""
        query = sa.select(token_keys).where(token_keys.c.tenant_id == tenant_id)
        if kid is not None:
            query = query.where(token_keys.c.kid == kid)
        async with self._read() as conn:
            rows = await conn.execute(query.order_by(token_keys.c.kid))
            return [
                ports.TokenKey(
                    kid=r.kid,
                    algorithm=r.algorithm,
                    public_key=r.public_key,
                    created_at=r.created_at,
                )
                for r in rows
            ]

    async def delete_token_key(self, tenant_id: str, kid: str) -> bool:
        """Forget a key; tokens it signed stop working at once."""
        async with self._write() as conn:
            result = await conn.execute(
                token_keys.delete().where(
                    token_keys.c.tenant_id == tenant_id, token_keys.c.kid == kid
                )
            )
            return bool(result.rowcount)

    # -----------------------------------------------------------------------------------------
    # reports

    async def event_report(self, tenant_id: str, event_id: str) -> ports.EventReport | None:
        async with self._read() as conn:
            row = (
                await conn.execute(
                    sa.select(events).where(
                        events.c.tenant_id == tenant_id, events.c.id == event_id
                    )
                )
            ).first()
            if row is None:
                return None
            made = (
                await conn.execute(
                    sa.select(
                        notifications.c.id,
                        notifications.c.rule_key,
                        notifications.c.priority,
                        notifications.c.ttl_seconds,
                        notifications.c.template_key,
                    ).where(notifications.c.event_id == event_id)
                )
            ).first()
            notification_id = None if made is None else made.id
            by_status: dict[Status, int] = {}
            by_channel: dict[str, dict[Status, int]] = {}
            if notification_id is not None:
                rows = await conn.execute(
                    sa.select(inbox_items.c.status, sa.func.count().label("n"))
                    .where(inbox_items.c.notification_id == notification_id)
                    .group_by(inbox_items.c.status)
                )
                by_status = {Status(r.status): r.n for r in rows}
                rows = await conn.execute(
                    sa.select(deliveries.c.channel, deliveries.c.status, sa.func.count().label("n"))
                    .where(deliveries.c.notification_id == notification_id)
                    .group_by(deliveries.c.channel, deliveries.c.status)
                )
                for r in rows:
                    by_channel.setdefault(r.channel, {})[Status(r.status)] = r.n
            sent_to_topics = (
                await topics.topic_views(conn, notification_id) if notification_id else ()
            )
        return ports.EventReport(
            event=_stored_event(row),
            notification_id=notification_id,
            recipients=StatusCounts.of(by_status),
            channels={c: StatusCounts.of(counts) for c, counts in sorted(by_channel.items())},
            topics=sent_to_topics,
            rule=None
            if made is None or made.rule_key is None
            else ports.RuleApplied(
                rule_key=made.rule_key,
                priority=made.priority,
                ttl_seconds=made.ttl_seconds,
                template_key=made.template_key,
            ),
        )

    async def recipient_report(
        self, tenant_id: str, event_id: str, external_id: str
    ) -> ports.RecipientReport | None:
        async with self._read() as conn:
            row = (
                await conn.execute(
                    _item_query().where(
                        inbox_items.c.tenant_id == tenant_id,
                        notifications.c.event_id == event_id,
                        users.c.external_id == external_id,
                    )
                )
            ).first()
            if row is None:
                return None
            item = _addressed(row).item
            rows = (
                await conn.execute(
                    sa.select(deliveries)
                    .where(deliveries.c.item_id == item.id)
                    .order_by(deliveries.c.id)
                )
            ).all()
            trails = await self._trails(
                conn,
                tenant_id,
                [(Subject.ITEM, item.id)] + [(Subject.DELIVERY, r.id) for r in rows],
            )
        return ports.RecipientReport(
            item=item,
            trail=tuple(trails.get((Subject.ITEM, item.id), ())),
            deliveries=tuple(
                ports.DeliveryView(
                    id=r.id,
                    channel=r.channel,
                    endpoint=r.endpoint,
                    status=Status(r.status),
                    attempts=r.attempts,
                    error=r.error,
                    trail=tuple(trails.get((Subject.DELIVERY, r.id), ())),
                )
                for r in rows
            ),
        )

    async def _trails(
        self, conn: AsyncConnection, tenant_id: str, subjects: list[tuple[Subject, int]]
    ) -> dict[tuple[Subject, int], list[Transition]]:
        wanted = sa.or_(
            *(
                sa.and_(transitions.c.subject == str(s), transitions.c.subject_id == i)
                for s, i in subjects
            )
        )
        rows = await conn.execute(
            sa.select(transitions)
            .where(transitions.c.tenant_id == tenant_id, wanted)
            .order_by(transitions.c.id)
        )
        trails: dict[tuple[Subject, int], list[Transition]] = {}
        for r in rows:
            subject = Subject(r.subject)
            trails.setdefault((subject, r.subject_id), []).append(
                Transition(
                    subject=subject,
                    subject_id=r.subject_id,
                    source=None if r.source is None else Status(r.source),
                    target=Status(r.target),
                    cause=r.cause,
                    at=r.at,
                )
            )
        return trails

    # -----------------------------------------------------------------------------------------
    # deliveries sent by transports

    async def claim_deliveries(
        self, channel: Channel, *, limit: int, lease_seconds: float, now: datetime
    ) -> list[ports.Claimed]:
        """Lease up to `limit` due deliveries of `channel`, earliest due first.

        The rows come in the order of the index (channel, status, next_attempt_at), so a claim
        reads what it takes plus the deliveries other batches hold leases on, never the whole
        backlog. The lease touches no indexed column: moving `next_attempt_at` as well cost
        more in index upkeep than skipping the leased rows costs. On push channels,
        deliveries whose device was retired (or deleted) since routing are failed here
        instead of handed out: a dead token is never used again.
        """
        due = (
            sa.select(deliveries.c.id)
            .where(
                deliveries.c.channel == str(channel),
                deliveries.c.status == str(Status.PENDING),
                sa.or_(deliveries.c.next_attempt_at.is_(None), deliveries.c.next_attempt_at <= now),
                sa.or_(
                    deliveries.c.lease_expires_at.is_(None), deliveries.c.lease_expires_at <= now
                ),
            )
            # The index's own order: ORDER BY id sorted the whole backlog on every claim.
            .order_by(deliveries.c.next_attempt_at)
            .limit(limit)
        )
        if self._dialect == "postgresql":
            due = due.with_for_update(skip_locked=True)
        lease = (
            deliveries.update()
            .where(deliveries.c.id.in_(due.scalar_subquery()))
            .values(
                fence=deliveries.c.fence + 1,
                attempts=deliveries.c.attempts + 1,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                updated_at=now,
            )
            .returning(
                deliveries.c.id,
                deliveries.c.fence,
                deliveries.c.tenant_id,
                deliveries.c.item_id,
                deliveries.c.endpoint,
                deliveries.c.attempts,
            )
        )
        push = channel in _PUSH_PROVIDERS
        claims: list[ports.Claimed] = []
        async with self._write() as conn:
            # Deliveries to dead devices are failed, not handed out; claim again in their
            # place so that a batch of them does not look like an idle queue.
            while not claims:
                leased = sorted(await conn.execute(lease))
                if not leased:
                    break
                items = await self._claimed_items(conn, [r[3] for r in leased])
                found = await self._devices_by_id(conn, leased) if push else {}
                profiles = (
                    await self._profiles(conn, [r[3] for r in leased])
                    if channel == Channel.EMAIL or push
                    else {}
                )
                dead: list[_Failing] = []
                expiring: list[int] = []
                for delivery_id, fence, tenant_id, item_id, endpoint, attempts in leased:
                    expires_at = items[item_id].expires_at
                    if expires_at is not None and expires_at <= now:
                        expiring.append(delivery_id)
                        continue
                    device = found.get(endpoint)
                    if push and (device is None or device.status != "active"):
                        why = "device deleted" if device is None else "device retired"
                        dead.append(_Failing(delivery_id, tenant_id, item_id, why, why))
                        continue
                    claims.append(
                        ports.Claimed(
                            id=delivery_id,
                            fence=fence,
                            tenant_id=tenant_id,
                            channel=str(channel),
                            endpoint=endpoint,
                            attempts=attempts,
                            item=items[item_id],
                            address=None if device is None else device.token,
                            app_id=None if device is None else device.app_id,
                            registered_at=None if device is None else device.updated_at,
                            keys={} if device is None else dict(device.keys or {}),
                            locale=profiles[item_id][0] if item_id in profiles else None,
                            attributes=profiles[item_id][1] if item_id in profiles else {},
                        )
                    )
                await self._fail_deliveries(conn, dead, now)
                await self._expire_deliveries(conn, expiring, now)
        return claims

    async def _claimed_items(
        self, conn: AsyncConnection, item_ids: Sequence[int]
    ) -> dict[int, InboxItem]:
        """The items of claimed deliveries. Each notification is read (and its JSON parsed)
        once however many of its items the batch holds; routing writes a notification and its
        items in one transaction with one `created_at`, so the items' is the notification's."""
        rows: list[tuple[int, str, str, str, str | None, str | None]] = []
        for where in self._among(inbox_items.c.id, sorted(set(item_ids))):
            rows += (
                await conn.execute(
                    sa.select(
                        inbox_items.c.id,
                        inbox_items.c.notification_id,
                        inbox_items.c.status,
                        users.c.external_id,
                        inbox_items.c.title,
                        inbox_items.c.body,
                    )
                    .join(users, users.c.id == inbox_items.c.user_id)
                    .where(where)
                )
            ).all()
        notes = {
            n.id: n
            for n in await conn.execute(
                sa.select(notifications).where(notifications.c.id.in_(sorted({r[1] for r in rows})))
            )
        }
        found: dict[int, InboxItem] = {}
        for item_id, notification_id, status, user, title, body in rows:
            note = notes[notification_id]
            found[item_id] = InboxItem(
                id=item_id,
                notification_id=notification_id,
                event_id=note.event_id,
                user=user,
                status=_STATUSES[status],
                type=note.type,
                # Rendered from the inbox templates at routing, else the notification's own.
                title=note.title if title is None else title,
                body=note.body if body is None else body,
                data=note.data,
                category=note.category,
                group=note.group_key,
                created_at=note.created_at,
                expires_at=note.expires_at,
                push=dict(note.push or {}),
            )
        return found

    async def _profiles(
        self, conn: AsyncConnection, item_ids: Sequence[int]
    ) -> dict[int, tuple[str | None, JsonObject]]:
        """The locale and attributes of each claimed item's user (what email templates use)."""
        found: dict[int, tuple[str | None, JsonObject]] = {}
        for where in self._among(inbox_items.c.id, sorted(set(item_ids))):
            rows = await conn.execute(
                sa.select(inbox_items.c.id, users.c.locale, users.c.attributes)
                .join(users, users.c.id == inbox_items.c.user_id)
                .where(where)
            )
            found.update((r.id, (r.locale, dict(r.attributes or {}))) for r in rows)
        return found

    async def _devices_by_id(
        self, conn: AsyncConnection, leased: Sequence[tuple[Any, ...]]
    ) -> dict[str, Any]:
        """Push deliveries name their device by id (`endpoint`): the device of each, if it
        belongs to the delivery's tenant."""
        tenants = {endpoint: tenant for _, _, tenant, _, endpoint, _ in leased}
        ids = sorted({int(e) for e in tenants if e.isdigit()})
        found: dict[str, Any] = {}
        for where in self._among(devices.c.id, ids):
            rows = await conn.execute(
                sa.select(
                    devices.c.id,
                    devices.c.tenant_id,
                    devices.c.token,
                    devices.c.app_id,
                    devices.c.status,
                    devices.c.updated_at,
                    devices.c["keys"],
                ).where(where)
            )
            found.update((str(d.id), d) for d in rows if tenants.get(str(d.id)) == d.tenant_id)
        return found

    async def complete_deliveries(
        self, completions: Sequence[ports.Completion], now: datetime
    ) -> list[int]:
        """Apply outcomes set-based: a few statements per kind of outcome, whatever the
        batch size, each move audited.

        A completion counts only from the lease holder (same fence, still pending). Sent
        deliveries move their items to `sent`; failed ones fail the items that have no other
        delivery left; `TokenInvalid` on a push channel retires the device, unless it was
        registered again after the delivery was claimed (its token may be alive again); on
        email it marks the address `bounced`.
        """
        if not completions:
            return []
        wanted = {c.delivery_id: c for c in completions}
        async with self._write() as conn:
            rows: list[tuple[int, int, str, str, int, str, str]] = []
            for where in self._among(deliveries.c.id, sorted(wanted)):
                rows += (
                    await conn.execute(
                        self._locked(
                            sa.select(
                                deliveries.c.id,
                                deliveries.c.fence,
                                deliveries.c.status,
                                deliveries.c.tenant_id,
                                deliveries.c.item_id,
                                deliveries.c.endpoint,
                                deliveries.c.channel,
                            )
                            .where(where)
                            .order_by(deliveries.c.id)
                        )
                    )
                ).all()
            sent: list[tuple[int, str | None]] = []
            items_sent: dict[int, tuple[str, str]] = {}
            retry: list[tuple[int, datetime, str]] = []
            failing: list[_Failing] = []
            retiring: list[tuple[int, int, str, str]] = []
            bounced: set[tuple[str, str]] = set()
            applied: list[int] = []
            pending = str(Status.PENDING)
            for delivery_id, fence, status, tenant_id, item_id, endpoint, channel in rows:
                completion = wanted[delivery_id]
                # A completion counts only from the lease holder: same fence, still pending.
                if fence != completion.fence or status != pending:
                    continue
                applied.append(delivery_id)
                outcome = completion.outcome
                if isinstance(outcome, outcomes.Delivered):
                    sent.append((delivery_id, outcome.reference))
                    items_sent[item_id] = (tenant_id, channel)
                elif isinstance(outcome, outcomes.RetryLater | outcomes.AuthFailed):
                    retry.append((delivery_id, completion.retry_at or now, outcome.reason))
                else:
                    reason = outcome.reason
                    failing.append(_Failing(delivery_id, tenant_id, item_id, reason, reason))
                    dead_token = isinstance(outcome, outcomes.TokenInvalid)
                    if dead_token and channel in _PUSH_PROVIDERS and endpoint.isdigit():
                        retiring.append((delivery_id, int(endpoint), tenant_id, reason))
                    elif dead_token and channel == Channel.EMAIL:
                        bounced.add((tenant_id, endpoint))
            # Before the failures: it reads when each delivery was claimed (`updated_at`).
            await self._retire_devices(conn, retiring, now)
            # A mailbox that does not exist is never written to again: routing suppresses
            # email to addresses that are not `subscribed`.
            for tenant_id, address in sorted(bounced):
                await conn.execute(
                    users.update()
                    .where(users.c.tenant_id == tenant_id, users.c.email == address)
                    .values(email_status="bounced", updated_at=now)
                )
            await self._send_deliveries(conn, sent, items_sent, now)
            await self._retry_deliveries(conn, retry, now)
            await self._fail_deliveries(conn, failing, now)
        return applied

    async def _send_deliveries(
        self,
        conn: AsyncConnection,
        sent: Sequence[tuple[int, str | None]],
        items: dict[int, tuple[str, str]],
        now: datetime,
    ) -> None:
        """Deliveries `pending → sent` with their provider references, then their items."""
        if not sent:
            return
        rows = self._per_row(
            id=(sa.BigInteger, [i for i, _ in sent]),
            reference=(sa.String, [ref for _, ref in sent]),
        )
        await conn.execute(
            deliveries.update()
            .where(deliveries.c.id == rows["id"], _may_become(deliveries, Status.SENT))
            .values(
                status=str(Status.SENT),
                sent_at=now,
                updated_at=now,
                lease_expires_at=None,
                reference=rows["reference"],
            )
        )
        await self._audit_deliveries(
            conn, [i for i, _ in sent], Status.SENT, deliveries.c.channel, now
        )
        await self._move_items(conn, items, Status.SENT, now)

    async def _retry_deliveries(
        self, conn: AsyncConnection, retry: Sequence[tuple[int, datetime, str]], now: datetime
    ) -> None:
        """Deliveries stay `pending`, due again at their own time, with the reason kept."""
        if not retry:
            return
        rows = self._per_row(
            id=(sa.BigInteger, [i for i, _, _ in retry]),
            due=(UtcNow, [at for _, at, _ in retry]),
            error=(sa.String, [reason[:500] for _, _, reason in retry]),
        )
        await conn.execute(
            deliveries.update()
            .where(deliveries.c.id == rows["id"], deliveries.c.status == str(Status.PENDING))
            .values(
                next_attempt_at=rows["due"],
                error=rows["error"],
                updated_at=now,
                lease_expires_at=None,
            )
        )

    async def _fail_deliveries(
        self, conn: AsyncConnection, failing: Sequence[_Failing], now: datetime
    ) -> None:
        """Deliveries `pending → failed` with their reasons; then the items that have no
        delivery left that did not fail."""
        if not failing:
            return
        rows = self._per_row(
            id=(sa.BigInteger, [f.delivery_id for f in failing]),
            error=(sa.String, [f.error[:500] for f in failing]),
        )
        await conn.execute(
            deliveries.update()
            .where(deliveries.c.id == rows["id"], _may_become(deliveries, Status.FAILED))
            .values(
                status=str(Status.FAILED),
                failed_at=now,
                updated_at=now,
                lease_expires_at=None,
                error=rows["error"],
            )
        )
        by_cause: dict[str, list[int]] = {}
        for f in failing:
            by_cause.setdefault(f.cause[:64], []).append(f.delivery_id)
        for cause, ids in by_cause.items():
            await self._audit_deliveries(conn, ids, Status.FAILED, sa.literal(cause), now)
        tenants = {f.item_id: f.tenant_id for f in failing}
        open_left = sa.exists().where(
            deliveries.c.item_id == inbox_items.c.id,
            deliveries.c.status != str(Status.FAILED),
        )
        unreachable: dict[int, tuple[str, str]] = {}
        for where in self._among(inbox_items.c.id, sorted(tenants)):
            found = await conn.execute(sa.select(inbox_items.c.id).where(where, ~open_left))
            unreachable.update((i, (tenants[i], "unreachable")) for i in found.scalars())
        await self._move_items(conn, unreachable, Status.FAILED, now)

    async def _expire_deliveries(
        self, conn: AsyncConnection, ids: Sequence[int], now: datetime
    ) -> int:
        """Deliveries `pending → expired` (their notification's expiry passed), audited; then
        their items that are still pending, expired and not in a worker's hands. How many
        rows moved."""
        if not ids:
            return 0
        moved: list[int] = []
        for where in self._among(deliveries.c.id, sorted(ids)):
            result = await conn.execute(
                deliveries.update()
                .where(where, _may_become(deliveries, Status.EXPIRED))
                .values(
                    status=str(Status.EXPIRED),
                    expired_at=now,
                    updated_at=now,
                    lease_expires_at=None,
                )
                .returning(deliveries.c.id)
            )
            moved += result.scalars().all()
        await self._audit_deliveries(conn, moved, Status.EXPIRED, sa.literal(EXPIRY_CAUSE), now)
        items: dict[int, tuple[str, str]] = {}
        for where in self._among(deliveries.c.id, moved):
            rows = await conn.execute(
                sa.select(inbox_items.c.id, inbox_items.c.tenant_id)
                .join(deliveries, deliveries.c.item_id == inbox_items.c.id)
                .where(where, _expired_by(inbox_items, now), ~_in_flight(now))
            )
            items.update((r.id, (r.tenant_id, EXPIRY_CAUSE)) for r in rows)
        await self._move_items(conn, items, Status.EXPIRED, now)
        return len(moved) + len(items)

    async def expire_overdue(self, *, now: datetime, limit: int) -> int:
        """Move up to `limit` pending deliveries past their expiry, and then up to `limit`
        pending items, to `expired`, set-based and audited (cause ``expired``). A delivery a
        worker holds a lease on is left to its worker (its completion or the next claim
        settles it), and so is its item. How many rows moved."""
        overdue = (
            sa.select(deliveries.c.id)
            .where(
                _expired_by(deliveries, now),
                sa.or_(
                    deliveries.c.lease_expires_at.is_(None), deliveries.c.lease_expires_at <= now
                ),
            )
            .order_by(deliveries.c.expires_at)
            .limit(limit)
        )
        if self._dialect == "postgresql":
            overdue = overdue.with_for_update(skip_locked=True)
        async with self._write() as conn:
            moved = await self._expire_deliveries(
                conn, (await conn.execute(overdue)).scalars().all(), now
            )
            rows = await conn.execute(
                sa.select(inbox_items.c.id, inbox_items.c.tenant_id)
                .where(_expired_by(inbox_items, now), ~_in_flight(now))
                .order_by(inbox_items.c.expires_at)
                .limit(limit)
            )
            items = {r.id: (r.tenant_id, EXPIRY_CAUSE) for r in rows}
            await self._move_items(conn, items, Status.EXPIRED, now)
        return moved + len(items)

    async def digest_due(self, *, now: datetime, limit: int) -> int:
        """Close up to `limit` open digests due by `now` (`adapters.storage.digests`)."""
        async with self._write() as conn:
            return await digests.fire_due(
                conn,
                now,
                limit,
                postgresql=self._dialect == "postgresql",
                email_rows=_delivery_rows,
                insert=self._insert,
            )

    async def digest_contents(
        self, delivery_ids: Sequence[int]
    ) -> dict[int, tuple[str, list[dict[str, Any]]]]:
        """The rule key and unread entries of each digest delivery among `delivery_ids`."""
        if not delivery_ids:
            return {}
        async with self._read() as conn:
            return await digests.contents(conn, delivery_ids)

    async def escalate_due(self, *, now: datetime, limit: int) -> int:
        """Fire up to `limit` escalations due by `now` (`adapters.storage.escalations`)."""
        async with self._write() as conn:
            return await escalations.fire_due(
                conn,
                now,
                limit,
                postgresql=self._dialect == "postgresql",
                email_rows=_delivery_rows,
                insert=self._insert,
            )

    async def cancel_event(self, tenant_id: str, event_id: str, now: datetime) -> str | None:
        """Cancel an event not routed yet: its state becomes ``cancelled`` and its unpublished
        outbox entry goes. The state the event is in afterwards (``cancelled``, or ``routed``
        when it was too late), None when there is no such event."""
        async with self._write() as conn:
            row = (
                await conn.execute(
                    self._locked(
                        sa.select(events.c.state).where(
                            events.c.tenant_id == tenant_id, events.c.id == event_id
                        )
                    )
                )
            ).first()
            if row is None or row.state != "accepted":
                return None if row is None else str(row.state)
            await conn.execute(
                events.update()
                .where(events.c.id == event_id)
                .values(state="cancelled", cancelled_at=now)
            )
            # Only the unpublished entries: the scan stays on the (published_at, id) index.
            await conn.execute(
                outbox.delete().where(
                    outbox.c.published_at.is_(None),
                    outbox.c.topic == EVENTS_STREAM,
                    outbox.c.payload["event_id"].as_string() == event_id,
                )
            )
        return "cancelled"

    async def _retire_devices(
        self, conn: AsyncConnection, retiring: Sequence[tuple[int, int, str, str]], now: datetime
    ) -> None:
        """Retire the devices whose token the provider declared dead, unless registered again
        since their delivery was claimed (the claim set the delivery's `updated_at`)."""
        if not retiring:
            return
        rows = self._per_row(
            delivery=(sa.BigInteger, [d for d, _, _, _ in retiring]),
            device=(sa.BigInteger, [i for _, i, _, _ in retiring]),
            tenant=(sa.String, [t for _, _, t, _ in retiring]),
            reason=(sa.String, [reason[:200] for _, _, _, reason in retiring]),
        )
        claimed_at = (
            sa.select(deliveries.c.updated_at)
            .where(deliveries.c.id == rows["delivery"])
            .scalar_subquery()
        )
        await conn.execute(
            devices.update()
            .where(
                devices.c.id == rows["device"],
                devices.c.tenant_id == rows["tenant"],
                devices.c.status == "active",
                devices.c.updated_at <= claimed_at,
            )
            .values(status="retired", retired_at=now, retired_reason=rows["reason"], updated_at=now)
        )

    async def _move_items(
        self,
        conn: AsyncConnection,
        causes: dict[int, tuple[str, str]],
        target: Status,
        now: datetime,
    ) -> None:
        """Move the items (id → tenant, cause) that may move to `target`, set-based, and audit
        each move with the status it left (read under lock before the update)."""
        if not causes:
            return
        guard = [str(s) for s in sources_of(target)]
        moving: dict[tuple[str, str], list[int]] = {}
        for where in self._among(inbox_items.c.id, sorted(causes)):
            rows = await conn.execute(
                self._locked(
                    sa.select(inbox_items.c.id, inbox_items.c.status)
                    .where(where, inbox_items.c.status.in_(guard))
                    .order_by(inbox_items.c.id)
                )
            )
            for item_id, source in rows:
                moving.setdefault((source, causes[item_id][1]), []).append(item_id)
        values: dict[str, Any] = {"status": str(target)}
        stamp = timestamp_field(target)
        if stamp is not None:
            values[stamp] = now
        for (source, cause), ids in moving.items():
            for where in self._among(inbox_items.c.id, ids):
                await conn.execute(
                    inbox_items.update()
                    .where(where, inbox_items.c.status == source)
                    .values(**values)
                )
                await conn.execute(
                    transitions.insert().from_select(
                        AUDIT_COLUMNS,
                        sa.select(
                            inbox_items.c.tenant_id,
                            sa.literal(str(Subject.ITEM)),
                            inbox_items.c.id,
                            sa.literal(source),
                            sa.literal(str(target)),
                            sa.literal(cause),
                            sa.literal(now, UtcNow),
                        ).where(where),
                    )
                )

    async def _audit_deliveries(
        self,
        conn: AsyncConnection,
        ids: Sequence[int],
        target: Status,
        cause: sa.ColumnElement[Any],
        now: datetime,
    ) -> None:
        """Audit deliveries that just moved `pending → target`, straight from their rows."""
        for where in self._among(deliveries.c.id, ids):
            await conn.execute(
                transitions.insert().from_select(
                    AUDIT_COLUMNS,
                    sa.select(
                        deliveries.c.tenant_id,
                        sa.literal(str(Subject.DELIVERY)),
                        deliveries.c.id,
                        sa.literal(str(Status.PENDING)),
                        sa.literal(str(target)),
                        cause,
                        sa.literal(now, UtcNow),
                    ).where(where),
                )
            )

    def _among(self, column: sa.ColumnElement[Any], ids: Sequence[int]) -> Iterable[Any]:
        """`column` among `ids`: one ``= ANY(:array)`` on PostgreSQL (one parameter however
        many ids), ``IN`` lists of at most `_CHUNK` on SQLite."""
        if not ids:
            return
        if self._dialect == "postgresql":
            yield column == sa.any_(
                sa.bindparam(None, list(ids), type_=postgresql.ARRAY(sa.BigInteger))
            )
            return
        for chunk in _chunks(ids, _CHUNK):
            yield column.in_(chunk)

    def _per_row(self, **columns: tuple[Any, Sequence[Any]]) -> dict[str, Any]:
        """Values that differ per row of one set-based UPDATE, as columns of a table the
        statement joins (``UPDATE ... FROM``): one statement, one parameter per column on
        PostgreSQL (``unnest`` of arrays), one parameter in all on SQLite (``json_each`` of a
        JSON array of rows, parsed in C)."""
        columns = {n: (to_instance(t), values) for n, (t, values) in columns.items()}
        names = list(columns)
        if self._dialect == "postgresql":
            arrays = [
                sa.bindparam(None, [_aware(v) for v in values], type_=postgresql.ARRAY(_plain(t)))
                for t, values in columns.values()
            ]
            table = (
                sa.func.unnest(*arrays)
                .table_valued(*(sa.column(n, _plain(columns[n][0])) for n in names))
                .render_derived(name="v")
            )
            return {n: table.c[n] for n in names}
        dialect = self._engine.dialect
        binders = [t.dialect_impl(dialect).bind_processor(dialect) for t, _ in columns.values()]
        converted = [
            values if bind is None else [bind(v) for v in values]
            for bind, (_, values) in zip(binders, columns.values(), strict=True)
        ]
        payload = json.dumps(list(zip(*converted, strict=True)))
        rows = sa.func.json_each(sa.bindparam(None, payload)).table_valued("value").alias("v")
        return {
            n: sa.type_coerce(rows.c.value.op("->>")(sa.literal_column(f"'$[{k}]'")), t)
            for k, (n, (t, _)) in enumerate(columns.items())
        }


@dataclass(frozen=True, slots=True)
class _Failing:
    """A delivery to fail: why (its `error`) and the audit entry's cause."""

    delivery_id: int
    tenant_id: str
    item_id: int
    error: str
    cause: str


_STATUSES = {str(s): s for s in Status}
EXPIRY_CAUSE = "expired"  # the audit cause of every move to `expired`


def _in_flight(now: datetime) -> sa.Exists:
    """The item has a pending delivery a worker holds a lease on."""
    held = deliveries.alias("held")
    return (
        sa.exists()
        .where(
            held.c.item_id == inbox_items.c.id,
            held.c.status == str(Status.PENDING),
            held.c.lease_expires_at > now,
        )
        .correlate(inbox_items)
    )


def _expired_by(table: sa.Table, now: datetime) -> sa.ColumnElement[bool]:
    """Pending rows whose expiry passed, worded as the partial index `ix_<table>_expiring`."""
    return sa.and_(
        table.c.status == str(Status.PENDING),
        table.c.expires_at.is_not(None),
        table.c.expires_at <= now,
    )


def _may_become(table: sa.Table, target: Status) -> sa.ColumnElement[bool]:
    """The status guard of a move to `target`: `table.status` among `sources_of(target)`."""
    return sa.or_(*(table.c.status == str(s) for s in sorted(sources_of(target))))


def _plain(kind: Any) -> Any:
    """The type a PostgreSQL array of `kind` is bound as (asyncpg binds aware datetimes)."""
    return sa.DateTime(timezone=True) if isinstance(kind, sa.TypeDecorator) else kind


def _aware(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)
    return value


# ---------------------------------------------------------------------------------------------
# query builders

Key = users.c.external_id.type
UtcNow = inbox_items.c.created_at.type


REDELIVERY_DOUBLINGS = 4
"""The relay's sweep hands an unrouted event back to the bus after one window, then after 2, 4,
8 and at most 16 windows more: a lost message comes back at once, while an event that only
waits in a long queue (routing lags minutes behind a burst) is not re-published every window,
which would multiply the very load that makes it wait."""


def _redelivery_due(now: datetime, *, window: timedelta) -> sa.ColumnElement[bool]:
    """Whether an unrouted event's next re-publication is due (see `REDELIVERY_DOUBLINGS`)."""
    steps = [
        sa.and_(
            events.c.redeliveries == n,
            events.c.redelivered_at < now - window * 2 ** (n - 1),
        )
        for n in range(1, REDELIVERY_DOUBLINGS + 1)
    ]
    last = sa.and_(
        events.c.redeliveries > REDELIVERY_DOUBLINGS,
        events.c.redelivered_at < now - window * 2**REDELIVERY_DOUBLINGS,
    )
    return sa.or_(events.c.redeliveries == 0, *steps, last)


def _user_is(tenant_id: str, external_id: str) -> sa.ColumnElement[bool]:
    return sa.and_(users.c.tenant_id == tenant_id, users.c.external_id == external_id)


def _group_is(tenant_id: str, key: str) -> sa.ColumnElement[bool]:
    return sa.and_(groups.c.tenant_id == tenant_id, groups.c.key == key)


def _audience(tenant_id: str, spec: EventSpec) -> sa.Subquery:
    """The distinct internal ids of everyone the event reaches.

    Named users, members of named groups, and members of named communities: both the members
    of the community itself and of every group that belongs to it. ``UNION`` de-duplicates.
    """
    parts: list[sa.Select[Any]] = []
    r = spec.recipients
    if r.users:
        parts.append(
            sa.select(users.c.id.label("user_id")).where(
                users.c.tenant_id == tenant_id, users.c.external_id.in_(r.users)
            )
        )
    if r.groups:
        parts.append(
            sa.select(memberships.c.user_id)
            .join(groups, groups.c.id == memberships.c.group_id)
            .where(
                groups.c.tenant_id == tenant_id,
                groups.c.kind == "group",
                groups.c.key.in_(r.groups),
            )
        )
    if r.communities:
        community_ids = sa.select(groups.c.id).where(
            groups.c.tenant_id == tenant_id,
            groups.c.kind == "community",
            groups.c.key.in_(r.communities),
        )
        parts.append(
            sa.select(memberships.c.user_id)
            .join(groups, groups.c.id == memberships.c.group_id)
            .where(
                groups.c.tenant_id == tenant_id,
                sa.or_(groups.c.id.in_(community_ids), groups.c.community_id.in_(community_ids)),
            )
        )
    if not parts:
        return sa.select(users.c.id.label("user_id")).where(sa.false()).subquery()
    return sa.union(*parts).subquery()


_ITEM_COLUMNS = [
    "tenant_id",
    "notification_id",
    "user_id",
    "status",
    "category",
    "group_key",
    "created_at",
]
_UNION_PARAMETERS = 8_000
"""Bound parameters per routing ``INSERT ... SELECT ... UNION ALL``: well under the drivers'
limit (32,767), so that a batch of events is one statement, and a large one a few."""
_UNION_TERMS = 50
"""Parts per such statement (SQLite allows 500 terms in a compound SELECT)."""


def _bounded(
    parts: Sequence[tuple[str, int, sa.Select[Any]]],
) -> Iterable[Sequence[tuple[str, int, sa.Select[Any]]]]:
    """The parts in runs whose parameters and terms stay within the bounds above."""
    run: list[tuple[str, int, sa.Select[Any]]] = []
    weight = 0
    for part in parts:
        if run and (weight + part[1] > _UNION_PARAMETERS or len(run) == _UNION_TERMS):
            yield run
            run, weight = [], 0
        run.append(part)
        weight += part[1]
    if run:
        yield run


@dataclass(slots=True)
class _Routing:
    """One event being routed in a batch: what its plan and the stored event decide."""

    plan: ports.PlannedEvent
    spec: EventSpec
    tenant_id: str
    group: str | None
    channels: list[Channel]
    expires_at: datetime | None
    priority: str | None
    weight: int  # bound parameters its item or delivery rows carry, roughly
    topic_sends: int = 0

    @classmethod
    def of(cls, plan: ports.PlannedEvent, event: ports.StoredEvent, now: datetime) -> _Routing:
        spec, rule = event.spec, plan.rule
        # The event's own expiry, or the rule's TTL counted from now, whichever ends first.
        expires_at = event.expires_at
        if rule is not None and rule.ttl_seconds is not None:
            by_rule = now + timedelta(seconds=rule.ttl_seconds)
            expires_at = by_rule if expires_at is None else min(expires_at, by_rule)
        chosen = plan.channels if plan.channels is not None else routing.channels_for(spec)
        named = spec.recipients
        return cls(
            plan=plan,
            spec=spec,
            tenant_id=event.tenant_id,
            group=routing.group_of(spec),
            channels=list(dict.fromkeys(chosen)),
            expires_at=expires_at,
            priority=spec.priority or (None if rule is None else rule.priority),
            weight=len(named.users) + len(named.groups) + 2 * len(named.communities) + 24,
        )

    @property
    def notification_id(self) -> str:
        return self.plan.notification_id

    @property
    def held(self) -> bool:
        """Whether quiet hours may hold some of its deliveries (push or email, not critical)."""
        return self.priority != "critical" and any(c in _HELD_CHANNELS for c in self.channels)

    def notification_row(self, now: datetime) -> dict[str, Any]:
        spec, rule = self.spec, self.plan.rule
        return {
            "id": self.notification_id,
            "tenant_id": self.tenant_id,
            "event_id": self.plan.event_id,
            "type": spec.type,
            "title": spec.title,
            "body": spec.body,
            "data": spec.data,
            "category": spec.category,
            "group_key": self.group,
            "created_at": now,
            "expires_at": self.expires_at,
            "rule_key": None if rule is None else rule.rule_key,
            "priority": self.priority,
            "push": spec.push or None,
            "ttl_seconds": None if rule is None else rule.ttl_seconds,
            "template_key": None if rule is None else rule.template_key,
        }

    def item_rows(self, now: datetime) -> sa.Select[Any]:
        """One pending inbox item per recipient (`INSERT INTO inbox_items ... SELECT`)."""
        audience = _audience(self.tenant_id, self.spec)
        return sa.select(
            sa.literal(self.tenant_id),
            sa.literal(self.notification_id),
            audience.c.user_id,
            sa.literal(str(Status.PENDING)),
            sa.literal(self.spec.category, Key),
            sa.literal(self.group, Key),
            sa.literal(now, UtcNow),
        )


def _delivery_rows(
    tenant_id: str,
    notification_id: str,
    channel: Channel,
    now: datetime,
    *,
    category: str | None,
    group: str | None,
    excluded: sa.Select[Any] | None = None,
    among: sa.Select[Any] | None = None,
) -> sa.Select[Any]:
    """One delivery per item and endpoint of `channel` the recipient has, created `suppressed`
    where the recipient opted out of this channel for the group or category. Push channels
    leave out the users `excluded` selects (reached through a topic send instead); with
    `among`, only the users it selects get one (a rule chose them by their attributes)."""
    opted_out = _opted_out(channel, category=category, group=group)
    if channel == Channel.EMAIL:
        opted_out = sa.or_(opted_out, users.c.email_status != "subscribed")
    status = sa.case(
        (opted_out, sa.literal(str(Status.SUPPRESSED))), else_=sa.literal(str(Status.PENDING))
    )
    base: list[Any] = [
        sa.literal(tenant_id),
        sa.literal(notification_id),
        inbox_items.c.id,
        inbox_items.c.user_id,
        sa.literal(str(channel)),
    ]
    tail: list[Any] = [
        status,
        sa.literal(category, Key),
        sa.literal(group, Key),
        sa.literal(0),
        sa.literal(now, UtcNow),
        sa.literal(0),
        sa.literal(now, UtcNow),
        sa.literal(now, UtcNow),
    ]
    mine = inbox_items.c.notification_id == notification_id
    if among is not None:
        mine = sa.and_(mine, inbox_items.c.user_id.in_(among))
    if channel in REALTIME:
        return sa.select(*base, sa.literal(""), *tail).where(mine)
    if channel == Channel.EMAIL:
        columns: list[Any] = [*base, users.c.email, *tail]
        return (
            sa.select(*columns)
            .join(users, users.c.id == inbox_items.c.user_id)
            .where(mine, users.c.email.is_not(None))
        )
    columns = [*base, sa.cast(devices.c.id, sa.String()), *tail]
    query = (
        sa.select(*columns)
        .join(devices, devices.c.user_id == inbox_items.c.user_id)
        .where(mine, devices.c.provider == str(channel), devices.c.status == "active")
    )
    if excluded is not None:
        query = query.where(inbox_items.c.user_id.not_in(excluded))
    return query


def _opted_out(
    channel: Channel, *, category: str | None, group: str | None
) -> sa.ColumnElement[bool]:
    """Whether the item's user turned `channel` off for the group or the category.

    Within one group or category, a row for the channel itself wins over the row for "*"
    (so "everything off but the inbox" is two rows); across them, either one turning the
    channel off is enough.
    """

    def row(scope: str, key: str, name: str, enabled: bool) -> sa.Exists:
        return sa.exists().where(
            preferences.c.user_id == inbox_items.c.user_id,
            preferences.c.scope == scope,
            preferences.c.key == key,
            preferences.c.channel == name,
            preferences.c.enabled == enabled,
        )

    reasons = [
        sa.or_(
            row(scope, key, str(channel), False),
            sa.and_(row(scope, key, "*", False), ~row(scope, key, str(channel), True)),
        )
        for scope, key in (("group", group), ("category", category))
        if key is not None
    ]
    return sa.or_(*reasons) if reasons else sa.false()


def _item_query() -> sa.Select[Any]:
    columns: list[Any] = [
        inbox_items.c.id,
        inbox_items.c.user_id,
        inbox_items.c.status,
        inbox_items.c.created_at,
        notifications.c.id.label("notification_id"),
        notifications.c.event_id,
        notifications.c.type,
        # Rendered from the inbox templates at routing, else the notification's own.
        sa.func.coalesce(inbox_items.c.title, notifications.c.title).label("title"),
        sa.func.coalesce(inbox_items.c.body, notifications.c.body).label("body"),
        notifications.c.data,
        notifications.c.category,
        notifications.c.group_key,
        users.c.external_id,
    ]
    return sa.select(*columns).select_from(
        inbox_items.join(notifications, notifications.c.id == inbox_items.c.notification_id).join(
            users, users.c.id == inbox_items.c.user_id
        )
    )


def _addressed(row: Any) -> ports.Addressed:
    return ports.Addressed(
        user_id=row.user_id,
        item=InboxItem(
            id=row.id,
            notification_id=row.notification_id,
            event_id=row.event_id,
            user=row.external_id,
            status=Status(row.status),
            type=row.type,
            title=row.title,
            body=row.body,
            data=row.data,
            category=row.category,
            group=row.group_key,
            created_at=row.created_at,
        ),
    )


def _quiet(start: str | None, end: str | None) -> QuietHours | None:
    """The window stored as two ``HH:MM`` columns; None when unset (or unreadable)."""
    if start is None or end is None:
        return None
    try:
        return QuietHours.parse(start, end)
    except ValueError:
        return None


def _quiet_columns(window: QuietHours | None) -> dict[str, str | None]:
    if window is None:
        return {"quiet_start": None, "quiet_end": None}
    shown = window.to_json()
    return {"quiet_start": shown["start"], "quiet_end": shown["end"]}


def _stored_event(row: Any) -> ports.StoredEvent:
    return ports.StoredEvent(
        id=row.id,
        tenant_id=row.tenant_id,
        spec=EventSpec.from_json(row.payload),
        fingerprint=row.fingerprint,
        state=row.state,
        created_at=row.created_at,
        routed_at=row.routed_at,
        send_at=row.send_at,
        expires_at=row.expires_at,
        cancelled_at=row.cancelled_at,
    )


def _due_by(at: datetime) -> sa.ColumnElement[bool]:
    """The event is not scheduled, or was due to go out by `at`."""
    return sa.or_(events.c.send_at.is_(None), events.c.send_at <= at)
