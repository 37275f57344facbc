"""Backpressure through real HTTP: per-tenant rate limits on POST /v1/events (429
`rate_limited`), and the service-wide outbox bound (503 `overloaded`), both with
`Retry-After`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx

from clarion import bootstrap
from clarion.adapters.storage.backlog import SqlBacklog
from clarion.entrypoints.server import serve
from clarion.settings import LimitsSettings, Settings
from tests.support import Running, running, tenant_client


def _event(*users: str) -> dict[str, Any]:
    return {"type": "t", "recipients": {"users": list(users)}}


def _error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["docs"] == f"docs/api.md#{code}"
    assert int(response.headers["Retry-After"]) >= 1


def _limited(settings: Settings, **limits: Any) -> Settings:
    return settings.model_copy(update={"limits": LimitsSettings(**limits)})


async def test_without_limits_events_carry_no_rate_limit_headers(
    sqlite_server: Running,
) -> None:
    async with tenant_client(sqlite_server) as tenant:
        for _ in range(20):
            posted = await tenant.http.post("/v1/events", json=_event("ann"))
            assert posted.status_code == 202
        assert "RateLimit-Limit" not in posted.headers


async def test_a_tenant_over_its_request_rate_gets_429_with_retry_after(
    sqlite_settings: Settings,
) -> None:
    settings = _limited(sqlite_settings, requests_per_second=0.5, requests_burst=2)
    async with running(settings) as srv, tenant_client(srv) as tenant:
        first = await tenant.http.post("/v1/events", json=_event("ann"))
        assert first.status_code == 202
        assert first.headers["RateLimit-Limit"] == "2"
        assert first.headers["RateLimit-Remaining"] == "1"
        assert int(first.headers["RateLimit-Reset"]) in (1, 2)
        assert (await tenant.http.post("/v1/events", json=_event("ann"))).status_code == 202
        refused = await tenant.http.post("/v1/events", json=_event("ann"))
        _error(refused, 429, "rate_limited")
        assert refused.headers["Retry-After"] == "2"
        assert refused.headers["RateLimit-Remaining"] == "0"
        # Another tenant has a bucket of its own.
        async with tenant_client(srv) as other:
            assert (await other.http.post("/v1/events", json=_event("bob"))).status_code == 202
        # Reads are not limited.
        assert (await tenant.http.get(f"/v1/events/{first.json()['id']}")).status_code == 200


async def test_recipients_are_limited_per_key_named(sqlite_settings: Settings) -> None:
    settings = _limited(sqlite_settings, recipients_per_second=1, recipients_burst=5)
    async with running(settings) as srv, tenant_client(srv) as tenant:
        posted = await tenant.http.post("/v1/events", json=_event("a", "b", "c", "d"))
        assert posted.status_code == 202
        assert posted.headers["RateLimit-Limit"] == "5"
        assert posted.headers["RateLimit-Remaining"] == "1"
        refused = await tenant.http.post("/v1/events", json=_event("a", "b", "c"))
        _error(refused, 429, "rate_limited")
        assert refused.headers["Retry-After"] == "2"
        assert (await tenant.http.post("/v1/events", json=_event("a"))).status_code == 202


async def test_an_event_larger_than_the_burst_goes_through_once_the_bucket_is_full(
    sqlite_settings: Settings,
) -> None:
    settings = _limited(sqlite_settings, recipients_per_second=100, recipients_burst=2)
    async with running(settings) as srv, tenant_client(srv) as tenant:
        users = [f"u{n}" for n in range(30)]
        assert (await tenant.http.post("/v1/events", json=_event(*users))).status_code == 202
        refused = await tenant.http.post("/v1/events", json=_event("a"))
        _error(refused, 429, "rate_limited")
        await asyncio.sleep(0.35)  # 28 tokens of debt plus one, at 100 a second
        assert (await tenant.http.post("/v1/events", json=_event("a"))).status_code == 202


@contextlib.asynccontextmanager
async def _api_only(settings: Settings) -> AsyncIterator[Running]:
    """`clarion api`: nothing relays the outbox."""
    await bootstrap.migrate(settings)
    clarion = bootstrap.build(settings)
    stop = asyncio.Event()
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(clarion, api=True, worker=False, stop=stop, on_listening=port.set_result)
    )
    try:
        bound = await asyncio.wait_for(port, 10)
        yield Running(clarion, f"http://127.0.0.1:{bound}", f"ws://127.0.0.1:{bound}/v1/ws")
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


@contextlib.asynccontextmanager
async def _worker_only(settings: Settings) -> AsyncIterator[None]:
    clarion = bootstrap.build(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(clarion, api=False, worker=True, stop=stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def test_a_backlog_over_its_bound_is_refused_with_503_until_workers_catch_up(
    settings: Settings,
) -> None:
    # The PostgreSQL database is shared by the session: other tests may have left entries.
    await bootstrap.migrate(settings)
    probe = bootstrap.build(settings)
    try:
        earlier = await SqlBacklog(probe.store.engine).unpublished(10**9)
    finally:
        await probe.close()
    settings = _limited(settings, max_unpublished_events=earlier + 3)
    async with _api_only(settings) as srv, tenant_client(srv) as tenant:
        for _ in range(5):  # the first count holds for a second
            assert (await tenant.http.post("/v1/events", json=_event("ann"))).status_code == 202
        await asyncio.sleep(1.1)
        refused = await tenant.http.post("/v1/events", json=_event("ann"))
        _error(refused, 503, "overloaded")
        assert refused.headers["Retry-After"] == "5"
        # Reads still work: only new work is refused.
        assert (await tenant.http.get("/readyz")).status_code == 200
        async with _worker_only(settings):
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 15
            while True:
                posted = await tenant.http.post("/v1/events", json=_event("ann"))
                if posted.status_code == 202:
                    break
                _error(posted, 503, "overloaded")
                assert loop.time() < deadline, "the API never took events again"
                await asyncio.sleep(0.2)
