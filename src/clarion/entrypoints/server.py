"""The ASGI application (HTTP API and WebSocket gateway) and the supervisor that runs it, the
worker, or both in one process (`clarion api`, `clarion worker`, `clarion serve`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import timedelta
from typing import Any

import uvicorn
from fastapi import FastAPI

from clarion import __version__
from clarion.bootstrap import Clarion
from clarion.entrypoints.api import errors as api_errors
from clarion.entrypoints.api.limits import BodyLimit
from clarion.entrypoints.api.rates import Limit, TenantLimits
from clarion.entrypoints.api.routes import (
    admin,
    credentials,
    devices,
    directory,
    events,
    health,
    mail_events,
    me,
    rules,
    settings as settings_routes,
    stats,
    templates,
    token_keys,
    tokens,
    unsubscribe,
    webhooks,
)
from clarion.entrypoints.gateway import websocket
from clarion.entrypoints.gateway.hub import Hub
from clarion.entrypoints.worker.ingest import run_ingest
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
            503: {"model": _error_model(), "description": "Unavailable; see Retry-After"},
        },
    )
    app.state.clarion = clarion
    app.state.hub = hub
    limits = clarion.settings.limits
    app.state.limits = TenantLimits(
        Limit(limits.requests_per_second, limits.requests_burst),
        Limit(limits.recipients_per_second, limits.recipients_burst),
    )
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
        unsubscribe,
        mail_events,
        templates,
        rules,
        settings_routes,
        health,
    ):
        app.include_router(module.router)
    if clarion.settings.admin.token is not None:
        # Without an admin token the operators' routes do not exist: 404 for every method.
        app.include_router(admin.router)
    app.include_router(websocket.router)
    return app


def _error_model() -> type:
    from clarion.entrypoints.api.schemas import ErrorOut

    return ErrorOut


def asgi(clarion: Clarion) -> tuple[FastAPI, BodyLimit]:
    """The app, and the app wrapped in the body cap (what is actually served)."""
    app = create_app(clarion)
    return app, BodyLimit(app, max_bytes=clarion.settings.api.max_body_bytes)


REDELIVER_RETRY_SECONDS = (0.5, 5.0)  # backoff while the database is unreachable at start


async def serve(
    clarion: Clarion,
    *,
    api: bool = True,
    worker: bool = True,
    stop: asyncio.Event | None = None,
    on_listening: Callable[[int], None] | None = None,
) -> None:
    """Run the API and gateway (`api`), the worker (`worker`), or both, until `stop` is set (by
    default: until SIGINT or SIGTERM), then drain. `on_listening` receives the bound port
    (useful with port 0).

    Draining: the API stops accepting connections, closes sockets (1012) and lets requests in
    flight finish; the worker's loops stop taking new work and finish what they hold. Both get
    `worker.drain_seconds`; whatever is still running then is cancelled, which loses nothing
    (unacknowledged bus messages come back, leased deliveries are claimed again).
    """
    if not (api or worker):
        raise ValueError("serve needs the API, the worker, or both")
    settings = clarion.settings
    drain = settings.worker.drain_seconds
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
    server: uvicorn.Server | None = None
    try:
        async with asyncio.TaskGroup() as group:
            working = (
                [group.create_task(job, name=name) for name, job in _worker_jobs(clarion, stop)]
                if worker
                else []
            )
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
                    timeout_graceful_shutdown=math.ceil(drain),
                    server_header=False,
                )
                server = uvicorn.Server(config)
                # uvicorn would capture SIGINT/SIGTERM itself; ours stop everything together.
                server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
                serving = group.create_task(server.serve(), name="api")
                while not server.started and not serving.done():  # noqa: ASYNC110 - a flag only
                    await asyncio.sleep(0.01)
                if server.started and on_listening is not None:
                    on_listening(server.servers[0].sockets[0].getsockname()[1])
            log.info(
                "started",
                extra={"action": "started", "roles": ["api"] * api + ["worker"] * worker},
            )
            await stop.wait()
            log.info(
                "stopping: draining in-flight work",
                extra={"action": "draining", "drain_seconds": drain},
            )
            if server is not None:
                server.should_exit = True
            if working:
                _, late = await asyncio.wait(working, timeout=drain)
                for task in late:
                    log.warning(
                        "drain time is up; cancelling what is still running",
                        extra={"action": "drain_expired", "task": task.get_name()},
                    )
                    task.cancel()
    finally:
        await clarion.close()


def _worker_jobs(
    clarion: Clarion, stop: asyncio.Event
) -> list[tuple[str, Coroutine[Any, Any, None]]]:
    """The worker's long-running parts, each a `run(stop)`."""
    # Hand the events still unrouted to the bus again right away: whatever the in-process bus
    # held died with the last process, and a shared broker may have lost messages while no
    # worker ran (a Redis without persistence restarted, a JetStream store lost), which the
    # relay's periodic sweep would only find `worker.redeliver_after_seconds` later. Messages
    # the broker still holds are dropped by its dedupe window or ignored by routing, which is
    # idempotent under a row lock; so are the duplicates of several workers starting at once.
    jobs: list[tuple[str, Coroutine[Any, Any, None]]] = [
        ("redeliver", _redeliver_unrouted(clarion, stop)),
        ("relay", clarion.relay.run(stop)),
        (
            "routers",
            run_routers(
                clarion.routing,
                clarion.bus,
                stop,
                concurrency=clarion.settings.worker.concurrency,
                batch=clarion.settings.worker.routing_batch,
                linger=clarion.settings.worker.routing_linger_seconds,
            ),
        ),
        ("ingest", run_ingest(clarion.accepting, clarion.tenancy, clarion.bus, stop)),
        ("delivering", clarion.delivering.run(stop)),
        ("callbacks", clarion.callbacks.run(stop)),
    ]
    if clarion.broadcasting is not None:
        jobs.append(("broadcasting", clarion.broadcasting.run(stop)))
    if clarion.expiring is not None:
        jobs.append(("expiring", clarion.expiring.run(stop)))
    if clarion.escalating is not None:
        jobs.append(("escalating", clarion.escalating.run(stop)))
    if clarion.digesting is not None:
        jobs.append(("digesting", clarion.digesting.run(stop)))
    return jobs


async def _redeliver_unrouted(clarion: Clarion, stop: asyncio.Event) -> None:
    """Publish every unrouted event once, retrying while the database cannot be reached."""
    delay, longest = REDELIVER_RETRY_SECONDS
    while not stop.is_set():
        try:
            await clarion.relay.redeliver_stale(older_than=timedelta(0))
            return
        except Exception as exc:
            log.warning(
                "redelivering unrouted events failed; retrying",
                extra={"action": "redeliver_failed", "error": str(exc)},
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, longest)
