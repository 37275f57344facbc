"""Engines for the two supported databases, with the settings each needs to be safe.

SQLite: WAL so readers never block the writer, ``synchronous=FULL`` so a committed event
survives power loss (an ack is not durable until fsync), foreign keys on, a busy timeout, and
``BEGIN IMMEDIATE`` for every writing transaction. A deferred transaction that reads and then
writes cannot wait for the lock in WAL mode: it fails at once with SQLITE_BUSY when another
writer committed in between, so writers take the lock up front and queue on the busy timeout.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

READONLY = "clarion_readonly"
"""Execution option: the transaction only reads, so SQLite may begin it deferred."""

SQLITE_BUSY_TIMEOUT_MS = 30_000  # a 1M-recipient fan-out holds the write lock for a few seconds


@asynccontextmanager
async def writing(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A writing transaction (BEGIN IMMEDIATE on SQLite), committed when the block ends."""
    async with engine.begin() as conn:
        yield conn


@asynccontextmanager
async def reading(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A read-only transaction: one snapshot, and no write lock on SQLite."""
    async with engine.connect() as raw:
        conn = await raw.execution_options(**{READONLY: True})
        async with conn.begin():
            yield conn


def normalise_url(url: str) -> str:
    """The async driver URL for a plain ``postgresql://`` or ``sqlite:///`` URL."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    elif parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    return parsed.render_as_string(hide_password=False)


def dialect_of(url: str) -> str:
    """``sqlite`` or ``postgresql``."""
    return make_url(url).get_backend_name()


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    """An engine for `url` (SQLite file or PostgreSQL)."""
    url = normalise_url(url)
    if dialect_of(url) == "sqlite":
        engine = create_async_engine(url)
        _make_sqlite_safe(engine)
        return engine
    return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def _make_sqlite_safe(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver so that "begin" below decides how to begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=FULL",
            "PRAGMA foreign_keys=ON",
            f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
        ):
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        readonly = conn.get_execution_options().get(READONLY, False)
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")
