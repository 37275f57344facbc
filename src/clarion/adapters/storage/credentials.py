"""Provider credentials on SQLAlchemy Core, their secrets sealed by the vault.

A credential's id is made here, before its row exists, because the secret is sealed for it: a
sealed secret copied to another row (another tenant, another credential) does not open there.
"""

from __future__ import annotations

import uuid
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clarion.adapters.storage import engines
from clarion.adapters.storage.tables import credentials
from clarion.adapters.vault import Vault
from clarion.domain import records

ACTIVE = "active"
PAUSED = "paused"


class SqlCredentials:
    """Provider credentials, on the store's engine."""

    def __init__(self, engine: AsyncEngine, vault: Vault) -> None:
        self._engine = engine
        self._vault = vault
        self._dialect = engine.dialect.name

    def _write(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return engines.writing(self._engine)

    def _read(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return engines.reading(self._engine)

    async def put_credential(
        self,
        tenant_id: str,
        provider: str,
        name: str,
        *,
        app_id: str | None,
        environment: str | None,
        metadata: dict[str, Any],
        secret: str,
        now: datetime,
    ) -> tuple[records.CredentialInfo, bool]:
        arguments: dict[str, Any] = {
            "app_id": app_id,
            "environment": environment,
            "metadata": metadata,
            "secret": secret,
            "now": now,
        }
        try:
            return await self._put(tenant_id, provider, name, **arguments)
        except IntegrityError:
            # A concurrent request created it first (PostgreSQL; SQLite serialises writers):
            # this one is then a replacement.
            return await self._put(tenant_id, provider, name, **arguments)

    async def _put(
        self,
        tenant_id: str,
        provider: str,
        name: str,
        *,
        app_id: str | None,
        environment: str | None,
        metadata: dict[str, Any],
        secret: str,
        now: datetime,
    ) -> tuple[records.CredentialInfo, bool]:
        mine = _named(tenant_id, provider, name)
        async with self._write() as conn:
            query = sa.select(credentials.c.id).where(mine)
            if self._dialect == "postgresql":
                query = query.with_for_update()
            existing = await conn.scalar(query)
            credential_id = existing or str(uuid.uuid4())
            # A fresh data key on every write: nothing encrypted under the old one survives.
            sealed, wrapped = self._vault.seal(
                secret, tenant_id=tenant_id, credential_id=credential_id
            )
            values: dict[str, Any] = {
                "app_id": app_id,
                "environment": environment,
                "metadata": metadata,
                "sealed_secret": sealed,
                "wrapped_key": wrapped,
                # A replaced secret is the fix for whatever paused the old one.
                "status": ACTIVE,
                "paused_reason": None,
                "updated_at": now,
            }
            if existing is None:
                await conn.execute(
                    credentials.insert().values(
                        id=credential_id,
                        tenant_id=tenant_id,
                        provider=provider,
                        name=name,
                        created_at=now,
                        **values,
                    )
                )
            else:
                await conn.execute(
                    credentials.update().where(credentials.c.id == existing).values(values)
                )
            row = (await conn.execute(sa.select(*_LISTED).where(mine))).one()
        return _info(row), existing is None

    async def list_credentials(self, tenant_id: str) -> list[records.CredentialInfo]:
        async with self._read() as conn:
            rows = await conn.execute(
                sa.select(*_LISTED)
                .where(credentials.c.tenant_id == tenant_id)
                .order_by(credentials.c.provider, credentials.c.name)
            )
            return [_info(r) for r in rows]

    async def get_credential(
        self, tenant_id: str, provider: str, name: str
    ) -> records.CredentialInfo | None:
        async with self._read() as conn:
            row = (
                await conn.execute(sa.select(*_LISTED).where(_named(tenant_id, provider, name)))
            ).one_or_none()
        return None if row is None else _info(row)

    async def delete_credential(self, tenant_id: str, provider: str, name: str) -> bool:
        async with self._write() as conn:
            result = await conn.execute(
                credentials.delete().where(_named(tenant_id, provider, name))
            )
            return bool(result.rowcount)

    async def load_credential(
        self, tenant_id: str, provider: str, app_id: str | None
    ) -> records.Credential | None:
        serves: sa.ColumnElement[bool] = credentials.c.app_id.is_(None)
        if app_id is not None:
            serves = sa.or_(credentials.c.app_id == app_id, serves)
        async with self._read() as conn:
            row = (
                await conn.execute(
                    sa.select(*_LISTED, credentials.c.sealed_secret, credentials.c.wrapped_key)
                    .where(
                        credentials.c.tenant_id == tenant_id,
                        credentials.c.provider == provider,
                        serves,
                    )
                    # The app's own credential before the default, even a paused one: the
                    # default pushes under another topic, and the transport holds a paused
                    # credential's deliveries (RetryLater) until it is replaced instead of
                    # sending them where they would be refused. Then active before paused,
                    # then the newest.
                    .order_by(
                        credentials.c.app_id.is_(None),
                        credentials.c.status != ACTIVE,
                        credentials.c.updated_at.desc(),
                        credentials.c.id,
                    )
                    .limit(1)
                )
            ).one_or_none()
        if row is None:
            return None
        secret = self._vault.open(
            row.sealed_secret, row.wrapped_key, tenant_id=row.tenant_id, credential_id=row.id
        )
        return records.Credential(info=_info(row), secret=secret)

    async def load_named_credential(
        self, tenant_id: str, provider: str, name: str
    ) -> records.Credential | None:
        async with self._read() as conn:
            row = (
                await conn.execute(
                    sa.select(
                        *_LISTED, credentials.c.sealed_secret, credentials.c.wrapped_key
                    ).where(_named(tenant_id, provider, name))
                )
            ).one_or_none()
        if row is None:
            return None
        secret = self._vault.open(
            row.sealed_secret, row.wrapped_key, tenant_id=row.tenant_id, credential_id=row.id
        )
        return records.Credential(info=_info(row), secret=secret)

    async def pause_credential(
        self, tenant_id: str, credential_id: str, *, reason: str, now: datetime
    ) -> bool:
        async with self._write() as conn:
            result = await conn.execute(
                credentials.update()
                .where(credentials.c.tenant_id == tenant_id, credentials.c.id == credential_id)
                .values(status=PAUSED, paused_reason=reason[:500], updated_at=now)
            )
            return bool(result.rowcount)


# Everything but the sealed columns, which only `load_credential` reads.
_LISTED = tuple(c for c in credentials.c if c.name not in ("sealed_secret", "wrapped_key"))


def _named(tenant_id: str, provider: str, name: str) -> sa.ColumnElement[bool]:
    return sa.and_(
        credentials.c.tenant_id == tenant_id,
        credentials.c.provider == provider,
        credentials.c.name == name,
    )


def _info(row: Any) -> records.CredentialInfo:
    return records.CredentialInfo(
        id=row.id,
        tenant_id=row.tenant_id,
        provider=row.provider,
        name=row.name,
        app_id=row.app_id,
        environment=row.environment,
        metadata=dict(row.metadata),
        status=row.status,
        paused_reason=row.paused_reason,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )
