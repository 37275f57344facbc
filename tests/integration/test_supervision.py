"""The supervisor (`entrypoints/server.serve`) and the routers under stop and outage: work held
when stopping is finished within the drain time and cancelled after it, and a router waits for
an unreachable database instead of failing the events it holds."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from clarion import bootstrap
from clarion.adapters.bus.memory import MemoryBus
from clarion.domain import errors
from clarion.domain.notifications import EVENTS_STREAM
from clarion.entrypoints.server import serve
from clarion.entrypoints.worker import routers
from clarion.settings import Settings, WorkerSettings
from tests.conftest import SECRET_KEY


@pytest.fixture
async def worker(tmp_path: Path) -> bootstrap.Clarion:
    settings = Settings(
        data_dir=tmp_path / "var",
        secret_key=SECRET_KEY,
        port=0,
        worker=WorkerSettings(drain_seconds=1.0),
    )
    await bootstrap.migrate(settings)
    return bootstrap.build(settings)  # serve() closes it


async def test_a_stopped_worker_finishes_the_work_it_holds(worker: bootstrap.Clarion) -> None:
    finished = asyncio.Event()

    async def holding(stop: asyncio.Event) -> None:
        await stop.wait()
        await asyncio.sleep(0.3)  # a send in flight when SIGTERM came
        finished.set()

    worker.callbacks.run = holding  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(serve(worker, api=False, worker=True, stop=stop))
    await asyncio.sleep(0.2)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert finished.is_set()


async def test_work_still_running_when_the_drain_time_is_up_is_cancelled(
    worker: bootstrap.Clarion,
) -> None:
    cancelled = asyncio.Event()

    async def stuck(stop: asyncio.Event) -> None:
        try:
            await asyncio.sleep(3600)  # a provider that never answers
        except asyncio.CancelledError:
            cancelled.set()
            raise

    worker.callbacks.run = stuck  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(serve(worker, api=False, worker=True, stop=stop))
    await asyncio.sleep(0.2)
    loop = asyncio.get_running_loop()
    stop.set()
    stopped_at = loop.time()
    await asyncio.wait_for(task, 5)
    assert cancelled.is_set()
    assert loop.time() - stopped_at < worker.settings.worker.drain_seconds + 1


async def test_serve_needs_a_role(worker: bootstrap.Clarion) -> None:
    with pytest.raises(ValueError, match="API, the worker, or both"):
        await serve(worker, api=False, worker=False, stop=asyncio.Event())
    await worker.close()


class FlakyRouting:
    """Routing whose database is unreachable for the first `down` attempts."""

    def __init__(self, down: int) -> None:
        self.down = down
        self.attempts = 0
        self.routed: list[str] = []

    async def route_many(self, event_ids: list[str]) -> None:
        self.attempts += 1
        if self.attempts <= self.down:
            raise errors.Unavailable("the database is unavailable; try again later")
        self.routed.extend(event_ids)


async def test_a_router_waits_for_the_database_and_then_routes_and_acknowledges(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(routers, "UNAVAILABLE_BACKOFF", (0.01, 0.02))
    bus = MemoryBus(visibility_timeout=60)
    await bus.publish(EVENTS_STREAM, {"event_id": "e1"})
    routing = FlakyRouting(down=5)
    stop = asyncio.Event()
    task = asyncio.create_task(routers.run_routers(routing, bus, stop, concurrency=1))  # type: ignore[arg-type]
    for _ in range(200):
        if routing.routed:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert routing.routed == ["e1"]
    assert routing.attempts == 6


async def test_a_router_gives_an_event_back_when_its_patience_runs_out_or_it_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(routers, "UNAVAILABLE_BACKOFF", (0.01, 0.02))
    monkeypatch.setattr(routers, "UNAVAILABLE_PATIENCE", 0.1)
    routing = FlakyRouting(down=10**6)
    stop = asyncio.Event()
    with pytest.raises(errors.Unavailable):
        await routers._route(routing, ["e1"], stop)  # type: ignore[arg-type]
    attempts = routing.attempts
    assert 2 <= attempts < 20
    monkeypatch.setattr(routers, "UNAVAILABLE_PATIENCE", 3600.0)
    stop.set()
    with pytest.raises(errors.Unavailable):
        await asyncio.wait_for(routers._route(routing, ["e1"], stop), 1)  # type: ignore[arg-type]
    assert routing.attempts == attempts + 1
