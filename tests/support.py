"""Helpers for tests that run a real Clarion server in-process."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

from clarion import bootstrap
from clarion.entrypoints.server import serve
from clarion.services.ports import Clock
from clarion.settings import Settings


@dataclass
class Running:
    """A Clarion server running in this process."""

    clarion: bootstrap.Clarion
    base_url: str
    ws_url: str


@contextlib.asynccontextmanager
async def running(settings: Settings, *, clock: Clock | None = None) -> AsyncIterator[Running]:
    """Run API, gateway and worker in-process on an ephemeral port until the block ends, on
    the system clock or on `clock`."""
    await bootstrap.migrate(settings)
    app = bootstrap.build(settings, clock=clock)
    stop = asyncio.Event()
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(app, stop=stop, on_listening=port.set_result))
    try:
        bound = await asyncio.wait_for(port, 10)
        yield Running(app, f"http://127.0.0.1:{bound}", f"ws://127.0.0.1:{bound}/v1/ws")
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


@dataclass
class Tenant:
    """A tenant made for one test, with an HTTP client that carries its API key."""

    id: str
    api_key: str
    http: httpx.AsyncClient


@contextlib.asynccontextmanager
async def tenant_client(srv: Running) -> AsyncIterator[Tenant]:
    """A new tenant on `srv` and a client authenticated as it."""
    created = await srv.clarion.tenancy.create_tenant(f"test-{uuid.uuid4().hex[:8]}")
    async with httpx.AsyncClient(
        base_url=srv.base_url,
        headers={"Authorization": f"Bearer {created.api_key}"},
        timeout=10,
    ) as http:
        yield Tenant(created.tenant_id, created.api_key, http)
