"""Engines for the two supported databases, with the settings each needs to be safe.

SQLite: WAL so readers never block the writer, ``synchronous=FULL`` so a committed event
survives power loss (an ack is not durable until fsync), foreign keys on, a busy timeout, and
``BEGIN IMMEDIATE`` for every writing transaction. A deferred transaction that reads and then
writes cannot wait for the lock in WAL mode: it fails at once with SQLITE_BUSY when another
writer committed in between, so writers take the lock up front and queue on the busy timeout.

PostgreSQL: every wait is bounded (connecting, waiting for a pooled connection, one statement),
and a database that cannot be reached leaves the transaction helpers as `errors.Unavailable`
(503 on the API), never as a driver exception: see `unreachable`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from sqlalchemy import event, exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from clarion.domain import errors

log = logging.getLogger(__name__)

READONLY = "clarion_readonly"
"""Execution option: the transaction only reads, so SQLite may begin it deferred."""

SQLITE_BUSY_TIMEOUT_MS = 30_000  # a 1M-recipient fan-out holds the write lock for a few seconds

# SQLSTATE classes and codes that mean "not now" rather than "not this": connection exceptions
# (08), insufficient resources such as too many connections (53), the server shutting down or
# starting up (57P01-57P03), a statement cancelled by a timeout (57014), a lock not obtained in
# time (55P03).
_UNAVAILABLE_SQLSTATES = ("08", "53", "57P01", "57P02", "57P03", "57014", "55P03")
_WARN_EVERY_SECONDS = 1.0  # an outage fails every transaction; one log line a second is enough
_last_warning = 0.0


def unreachable(exc: BaseException) -> bool:
    """Whether `exc`, raised by the driver or the pool, means the database cannot serve now
    (down, unreachable, out of connections, too slow) rather than that the statement is wrong.

    Integrity errors are the caller's business (an idempotency race, a duplicate) and never
    count; nor does cancellation, which is not an `Exception`.
    """
    if isinstance(exc, sa_exc.IntegrityError):
        return False
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated or isinstance(
            exc, sa_exc.InterfaceError | sa_exc.OperationalError
        ):
            # DBAPI: OperationalError is for "errors related to the database's operation and
            # not necessarily under the control of the programmer" (disconnects, SQLite's lock
            # timeouts); InterfaceError for the client's connection itself.
            return True
        state = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        return isinstance(state, str) and state.startswith(_UNAVAILABLE_SQLSTATES)
    # Pool checkout timed out (every connection busy), or connecting failed below the DBAPI:
    # refused, reset, unreachable, DNS, or the connect timeout (TimeoutError is an OSError).
    return isinstance(exc, sa_exc.TimeoutError | OSError)


@contextmanager
def translated() -> Iterator[None]:
    """Turn the database being unreachable into `errors.Unavailable`; let all else through."""
    try:
        yield
    except Exception as exc:
        if not unreachable(exc):
            raise
        _warn(exc)
        raise errors.Unavailable("the database is unavailable; try again later") from exc


def _warn(exc: BaseException) -> None:
    global _last_warning
    now = time.monotonic()
    if now - _last_warning < _WARN_EVERY_SECONDS:
        return
    _last_warning = now
    log.warning(
        "database unavailable",
        extra={"action": "database_unavailable", "error": f"{type(exc).__name__}: {exc}"[:300]},
    )


@asynccontextmanager
async def writing(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A writing transaction (BEGIN IMMEDIATE on SQLite), committed when the block ends.

    Raises:
        errors.Unavailable: the database cannot be reached (see `unreachable`).
    """
    with translated():
        async with engine.begin() as conn:
            yield conn


@asynccontextmanager
async def reading(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A read-only transaction: one snapshot, and no write lock on SQLite.

    Raises:
        errors.Unavailable: the database cannot be reached (see `unreachable`).
    """
    with translated():
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


def create_engine(
    url: str,
    *,
    pool_size: int = 10,
    connect_timeout: float = 3.0,
    pool_timeout: float = 5.0,
    statement_timeout: float = 0.0,
) -> AsyncEngine:
    """An engine for `url` (SQLite file or PostgreSQL).

    On PostgreSQL: `connect_timeout` bounds opening a connection, `pool_timeout` waiting for a
    pooled one, and `statement_timeout` (0: none) each statement, on the client side so that it
    also bounds a network that went silent. SQLite has its busy timeout instead.
    """
    url = normalise_url(url)
    if dialect_of(url) == "sqlite":
        engine = create_async_engine(url)
        _make_sqlite_safe(engine)
        return engine
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,  # a connection the server dropped is replaced, not handed out
        pool_timeout=pool_timeout,
        connect_args={
            "timeout": connect_timeout,
            "command_timeout": statement_timeout or None,
        },
    )


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
