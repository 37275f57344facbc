"""Fixtures shared by every suite: databases (SQLite and PostgreSQL), wired services, and a
real Clarion server listening on an ephemeral loopback port."""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from clarion import bootstrap
from clarion.settings import Settings
from tests.support import Running, Tenant, running, tenant_client

POSTGRES_ADMIN_URL = os.environ.get(
    "CLARION_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
SECRET_KEY = base64.b64encode(b"k" * 32).decode()


def unavailable(what: str, exc: BaseException) -> None:
    """A service the suite needs is missing: fail under CI, skip (with the reason) elsewhere."""
    message = f"{what} is not reachable ({exc!r}); start it or set CLARION_TEST_POSTGRES_URL"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, migrated, dropped at the end."""
    name = f"clarion_test_{uuid.uuid4().hex[:12]}"

    async def admin(statement: str) -> None:
        conn = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    try:
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        unavailable("PostgreSQL", exc)
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    url = f"{base}/{name}"
    asyncio.run(bootstrap.migrate(Settings(database_url=url, secret_key=SECRET_KEY)))
    yield url
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _empty(url: str) -> None:
    """Empty every table of the session's PostgreSQL database, so that a test starts from
    nothing, as on SQLite (a fresh file per test): work one test left pending (a delivery
    waiting to be retried, an unpublished event) must not be picked up by the next one's
    workers."""
    conn = await asyncpg.connect(url, timeout=5)
    try:
        names = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            " AND tablename <> 'alembic_version'"
        )
        if names:
            listed = ", ".join(f'"{row["tablename"]}"' for row in names)
            await conn.execute(f"TRUNCATE {listed} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings for one test, on each supported database in turn."""
    database_url = None
    if request.param == "postgres":
        database_url = request.getfixturevalue("postgres_url")
        asyncio.run(_empty(database_url))
    return Settings(
        data_dir=tmp_path / "var",
        database_url=database_url,
        secret_key=SECRET_KEY,
        port=0,
    )


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    """Settings on SQLite alone, for tests about the HTTP or socket surface itself."""
    return Settings(data_dir=tmp_path / "var", secret_key=SECRET_KEY, port=0)


@pytest.fixture
async def clarion(settings: Settings) -> AsyncIterator[bootstrap.Clarion]:
    """Services wired to a migrated database, without any server running."""
    await bootstrap.migrate(settings)
    app = bootstrap.build(settings)
    yield app
    await app.close()


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[Running]:
    """A running server on each database in turn."""
    async with running(settings) as srv:
        yield srv


@pytest.fixture
async def sqlite_server(sqlite_settings: Settings) -> AsyncIterator[Running]:
    """A running server on SQLite."""
    async with running(sqlite_settings) as srv:
        yield srv


@pytest.fixture
async def tenant(server: Running) -> AsyncIterator[Tenant]:
    """A tenant on the running server."""
    async with tenant_client(server) as t:
        yield t
