"""Tenant routing rules on SQLAlchemy Core: one row per (tenant, key), the rule as JSON."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clarion.adapters.storage import engines
from clarion.adapters.storage.tables import rules
from clarion.domain.errors import InvalidRequest
from clarion.domain.rules import Rule, RuleChanges, StoredRule, rule_from_json

log = logging.getLogger(__name__)


class SqlRules:
    """Tenant routing rules, on the store's engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    def _write(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return engines.writing(self._engine)

    def _read(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return engines.reading(self._engine)

    async def put_rule(self, tenant_id: str, rule: Rule, now: datetime) -> tuple[StoredRule, bool]:
        try:
            return await self._put(tenant_id, rule, now)
        except IntegrityError:
            # A concurrent PUT of the same key inserted first (PostgreSQL): this one replaces it.
            return await self._put(tenant_id, rule, now)

    async def _put(self, tenant_id: str, rule: Rule, now: datetime) -> tuple[StoredRule, bool]:
        async with self._write() as conn:
            created = await _save(conn, tenant_id, [rule], now)
        stored = await self.get_rule(tenant_id, rule.key)
        assert stored is not None
        return stored, bool(created)

    async def get_rule(self, tenant_id: str, key: str) -> StoredRule | None:
        async with self._read() as conn:
            row = (await conn.execute(_select(tenant_id).where(rules.c.key == key))).first()
        return None if row is None else _stored(row)

    async def list_rules(self, tenant_id: str) -> list[StoredRule]:
        async with self._read() as conn:
            rows = list(await conn.execute(_select(tenant_id)))
        found = (_stored(row) for row in rows)
        return [stored for stored in found if stored is not None]

    async def delete_rule(self, tenant_id: str, key: str) -> bool:
        async with self._write() as conn:
            result = await conn.execute(
                rules.delete().where(rules.c.tenant_id == tenant_id, rules.c.key == key)
            )
            return bool(result.rowcount)

    async def apply_rules(
        self, tenant_id: str, given: Sequence[Rule], now: datetime, *, replace: bool
    ) -> RuleChanges:
        try:
            return await self._apply(tenant_id, given, now, replace=replace)
        except IntegrityError:
            return await self._apply(tenant_id, given, now, replace=replace)

    async def _apply(
        self, tenant_id: str, given: Sequence[Rule], now: datetime, *, replace: bool
    ) -> RuleChanges:
        keys = {rule.key for rule in given}
        async with self._write() as conn:
            deleted: list[str] = []
            if replace:
                deleted = sorted(
                    await conn.scalars(
                        sa.select(rules.c.key).where(
                            rules.c.tenant_id == tenant_id, rules.c.key.not_in(keys)
                        )
                    )
                )
                if deleted:
                    await conn.execute(
                        rules.delete().where(
                            rules.c.tenant_id == tenant_id, rules.c.key.in_(deleted)
                        )
                    )
            created = await _save(conn, tenant_id, given, now)
        return RuleChanges(
            created=tuple(r.key for r in given if r.key in created),
            updated=tuple(r.key for r in given if r.key not in created),
            deleted=tuple(deleted),
        )


async def _save(
    conn: AsyncConnection, tenant_id: str, given: Sequence[Rule], now: datetime
) -> set[str]:
    """Insert or replace `given`; the keys that were new."""
    if not given:
        return set()
    keys = [rule.key for rule in given]
    existing = set(
        await conn.scalars(
            sa.select(rules.c.key).where(rules.c.tenant_id == tenant_id, rules.c.key.in_(keys))
        )
    )
    fresh = [rule for rule in given if rule.key not in existing]
    if fresh:
        await conn.execute(
            rules.insert(),
            [
                {
                    "tenant_id": tenant_id,
                    "key": rule.key,
                    "definition": rule.to_json(),
                    "position": rule.order,
                    "created_at": now,
                    "updated_at": now,
                }
                for rule in fresh
            ],
        )
    for rule in given:
        if rule.key in existing:
            await conn.execute(
                rules.update()
                .where(rules.c.tenant_id == tenant_id, rules.c.key == rule.key)
                .values(definition=rule.to_json(), position=rule.order, updated_at=now)
            )
    return {rule.key for rule in fresh}


def _select(tenant_id: str) -> sa.Select[Any]:
    c = rules.c
    return (
        sa.select(c.key, c.definition, c.created_at, c.updated_at)
        .where(c.tenant_id == tenant_id)
        .order_by(c.position, c.key)
    )


def _stored(row: Any) -> StoredRule | None:
    try:
        rule = rule_from_json(row.definition)
    except InvalidRequest as error:
        # Saved rules were valid when saved; one a newer version no longer reads is left out
        # (and logged) rather than stopping the routing of every event of its tenant.
        log.error(
            "stored rule no longer valid; ignored",
            extra={"action": "rule_ignored", "rule": row.key, "error": error.message},
        )
        return None
    return StoredRule(rule, row.created_at, row.updated_at)
