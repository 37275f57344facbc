"""The ASGI application (HTTP API and WebSocket gateway) and the supervisor that runs
it together with the worker in one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import uvicorn
from fastapi import FastAPI

from clarion import __version__
from clarion.bootstrap import Clarion
from clarion.entrypoints.api import errors as api_errors
from clarion.entrypoints.api.limits import BodyLimit
from clarion.entrypoints.api.routes import (
    credentials,
    devices,
    directory,
    events,
    health,
    me,
    stats,
    token_keys,
    tokens,
    webhooks,
)
from clarion.entrypoints.gateway import websocket
from clarion.entrypoints.gateway.hub import Hub
from clarion.entrypoints.worker.routers import run_routers

log = logging.getLogger(__name__)


def create_app(clarion: Clarion) -> FastAPI:
    """The HTTP API and the WebSocket gateway, sharing one set of services."""
    hub = Hub(clarion.realtime, clarion.bus)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        listening = asyncio.create_task(hub.run(stop))
        try:
            yield
        finally:
            stop.set()
            await listening

    app = FastAPI(
        title="Clarion",
        version=__version__,
        summary="Events in; WebSocket, push and email out; a registry of every notification.",
        lifespan=lifespan,
        responses={
            400: {"model": _error_model(), "description": "Malformed request"},
            401: {"model": _error_model(), "description": "Missing or bad credentials"},
            404: {"model": _error_model(), "description": "Not found (or not yours)"},
            413: {"model": _error_model(), "description": "Body too large"},
            422: {"model": _error_model(), "description": "Invalid request"},
        },
    )
    app.state.clarion = clarion
    app.state.hub = hub
    api_errors.install(app)
    for module in (
        events,
        directory,
        tokens,
        token_keys,
        devices,
        me,
        stats,
        webhooks,
        credentials,
        health,
    ):
        app.include_router(module.router)
    app.include_router(websocket.router)
    return app


def _error_model() -> type:
    from clarion.entrypoints.api.schemas import ErrorOut

    return ErrorOut


def asgi(clarion: Clarion) -> tuple[FastAPI, BodyLimit]:
    """The app, and the app wrapped in the body cap (what is actually served)."""
    app = create_app(clarion)
    return app, BodyLimit(app, max_bytes=clarion.settings.api.max_body_bytes)


async def serve(
    clarion: Clarion,
    *,
    api: bool = True,
    worker: bool = True,
    stop: asyncio.Event | None = None,
    on_listening: Callable[[int], None] | None = None,
) -> None:
    """Run the API, the gateway and the worker until `stop` is set (by default: until SIGINT
    or SIGTERM), then drain. `on_listening` receives the bound port (useful with port 0)."""
    settings = clarion.settings
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
    server: uvicorn.Server | None = None
    try:
        async with asyncio.TaskGroup() as group:
            if worker:
                # Whatever the in-process bus held died with the last process: hand every event
                # that is still unrouted to the bus again right away.
                await clarion.relay.redeliver_stale(older_than=timedelta(0))
                group.create_task(clarion.relay.run(stop))
                group.create_task(
                    run_routers(
                        clarion.routing, clarion.bus, stop, concurrency=settings.worker.concurrency
                    )
                )
                group.create_task(clarion.delivering.run(stop))
                group.create_task(clarion.callbacks.run(stop))
            if api:
                _, served = asgi(clarion)
                config = uvicorn.Config(
                    served,
                    host=settings.host,
                    port=settings.port,
                    ws_max_size=settings.gateway.max_frame_bytes,
                    ws_ping_interval=settings.gateway.heartbeat_seconds,
                    ws_ping_timeout=settings.gateway.heartbeat_seconds,
                    lifespan="on",
                    log_level=settings.log_level,
                    log_config=None,  # uvicorn's records go through our formatter
                    access_log=settings.access_log,
                    timeout_graceful_shutdown=int(settings.worker.drain_seconds),
                    server_header=False,
                )
                server = uvicorn.Server(config)
                # uvicorn would capture SIGINT/SIGTERM itself; ours stop everything together.
                server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
                serving = group.create_task(server.serve())
                while not server.started and not serving.done():  # noqa: ASYNC110 - a flag only
                    await asyncio.sleep(0.01)
                if server.started and on_listening is not None:
                    on_listening(server.servers[0].sockets[0].getsockname()[1])
            await stop.wait()
            log.info("stopping: draining in-flight work")
            if server is not None:
                server.should_exit = True
    finally:
        await clarion.close()
