"""Tenant templates on SQLAlchemy Core: one row per (subject, name, channel, locale), saved and
replaced a set at a time (every channel and locale of one event type or category)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clarion.adapters.storage import engines
from clarion.adapters.storage.tables import templates, tenants
from clarion.domain.templates import (
    EmailTemplate,
    Subject,
    TemplateEntry,
    TemplateKey,
    TemplateSet,
    TemplateSetInfo,
)

FALLBACK_LOCALE = "en"  # the column's own default, for a tenant that is not (or no longer) there


class SqlTemplates:
    """Tenant templates, on the store's engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._dialect = engine.dialect.name

    def _write(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return engines.writing(self._engine)

    def _read(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return engines.reading(self._engine)

    async def put_template_set(
        self,
        tenant_id: str,
        subject: Subject,
        name: str,
        entries: Sequence[TemplateEntry],
        now: datetime,
    ) -> tuple[TemplateSet, bool]:
        try:
            return await self._put(tenant_id, subject, name, entries, now)
        except IntegrityError:
            # A concurrent PUT of the same set inserted first (PostgreSQL; SQLite serialises
            # writers): this one then replaces what that one saved.
            return await self._put(tenant_id, subject, name, entries, now)

    async def _put(
        self,
        tenant_id: str,
        subject: Subject,
        name: str,
        entries: Sequence[TemplateEntry],
        now: datetime,
    ) -> tuple[TemplateSet, bool]:
        mine = _named(tenant_id, subject, name)
        async with self._write() as conn:
            if self._dialect == "postgresql":
                # Row locks cannot serialise two PUTs of a set that has no rows yet (or whose
                # rows the other is replacing): one lock per set, held to the commit, does.
                # Each statement after it sees what the previous holder committed.
                await conn.execute(
                    sa.select(sa.func.pg_advisory_xact_lock(_lock_id(tenant_id, subject, name)))
                )
            before = list(await conn.scalars(sa.select(templates.c.created_at).where(mine)))
            created_at = min(before) if before else now
            await conn.execute(templates.delete().where(mine))
            if entries:
                await conn.execute(
                    templates.insert(),
                    [
                        {
                            "tenant_id": tenant_id,
                            "subject": str(subject),
                            "name": name,
                            "channel": e.channel,
                            "locale": e.locale,
                            "title": e.title,
                            "text": e.text,
                            "html": e.html,
                            "created_at": created_at,
                            "updated_at": now,
                        }
                        for e in entries
                    ],
                )
            rows = list(await conn.execute(_select_set(mine)))
        saved = _set(rows)
        if saved is None:  # an empty set: nothing stored, as after a delete
            saved = TemplateSet(subject, name, (), created_at, now)
        return saved, not before

    async def get_template_set(
        self, tenant_id: str, subject: Subject, name: str
    ) -> TemplateSet | None:
        async with self._read() as conn:
            rows = list(await conn.execute(_select_set(_named(tenant_id, subject, name))))
        return _set(rows)

    async def list_template_sets(self, tenant_id: str) -> list[TemplateSetInfo]:
        c = templates.c
        async with self._read() as conn:
            rows = await conn.execute(
                sa.select(c.subject, c.name, c.channel, c.locale, c.created_at, c.updated_at)
                .where(c.tenant_id == tenant_id)
                .order_by(c.subject, c.name, c.channel, c.locale)
            )
            found: dict[tuple[str, str], dict[str, Any]] = {}
            for row in rows:
                one = found.setdefault(
                    (row.subject, row.name),
                    {"channels": {}, "created_at": row.created_at, "updated_at": row.updated_at},
                )
                one["channels"].setdefault(row.channel, []).append(row.locale)
                one["created_at"] = min(one["created_at"], row.created_at)
                one["updated_at"] = max(one["updated_at"], row.updated_at)
        return [
            TemplateSetInfo(
                subject=Subject(subject),
                name=name,
                channels={ch: tuple(locales) for ch, locales in one["channels"].items()},
                created_at=one["created_at"],
                updated_at=one["updated_at"],
            )
            for (subject, name), one in found.items()
        ]

    async def delete_template_set(self, tenant_id: str, subject: Subject, name: str) -> bool:
        async with self._write() as conn:
            result = await conn.execute(templates.delete().where(_named(tenant_id, subject, name)))
            return bool(result.rowcount)

    async def templates_for(
        self, tenant_id: str, channel: str, *, event_type: str, category: str | None
    ) -> dict[TemplateKey, EmailTemplate]:
        c = templates.c
        wanted = sa.and_(c.subject == str(Subject.EVENT_TYPE), c.name == event_type)
        if category is not None:
            wanted = sa.or_(wanted, sa.and_(c.subject == str(Subject.CATEGORY), c.name == category))
        async with self._read() as conn:
            rows = await conn.execute(
                sa.select(c.subject, c.name, c.channel, c.locale, c.title, c.text, c.html).where(
                    c.tenant_id == tenant_id, c.channel == channel, wanted
                )
            )
            return {
                TemplateKey(Subject(r.subject), r.name, r.channel, r.locale): EmailTemplate(
                    r.title, r.text, r.html
                )
                for r in rows
            }

    async def default_locale(self, tenant_id: str) -> str:
        async with self._read() as conn:
            found = await conn.scalar(
                sa.select(tenants.c.default_locale).where(tenants.c.id == tenant_id)
            )
        return found or FALLBACK_LOCALE


def _lock_id(tenant_id: str, subject: Subject, name: str) -> int:
    digest = hashlib.blake2b(
        f"clarion.templates\0{tenant_id}\0{subject}\0{name}".encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big", signed=True)


def _named(tenant_id: str, subject: Subject, name: str) -> sa.ColumnElement[bool]:
    return sa.and_(
        templates.c.tenant_id == tenant_id,
        templates.c.subject == str(subject),
        templates.c.name == name,
    )


def _select_set(where: sa.ColumnElement[bool]) -> sa.Select[Any]:
    c = templates.c
    return (
        sa.select(
            c.subject,
            c.name,
            c.channel,
            c.locale,
            c.title,
            c.text,
            c.html,
            c.created_at,
            c.updated_at,
        )
        .where(where)
        .order_by(c.channel, c.locale)
    )


def _set(rows: Sequence[Any]) -> TemplateSet | None:
    if not rows:
        return None
    return TemplateSet(
        subject=Subject(rows[0].subject),
        name=rows[0].name,
        entries=tuple(TemplateEntry(r.channel, r.locale, r.title, r.text, r.html) for r in rows),
        created_at=min(r.created_at for r in rows),
        updated_at=max(r.updated_at for r in rows),
    )
