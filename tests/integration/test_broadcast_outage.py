"""A receipt or a bulk read is committed before its realtime broadcast: when the bus then fails
(a broker outage), the request still succeeds with what it did, never a 503 that would invite a
retry of something done. The user's other sockets miss the news and see it when they reload."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import pytest
import websockets

from clarion import bootstrap
from clarion.adapters.bus import open_bus
from clarion.domain import errors
from clarion.entrypoints.server import serve
from clarion.settings import Settings
from tests.support import Running, Tenant, tenant_client


class FlakyBus:
    """The in-process bus, whose broadcasts fail while `down` is set, as a broker's would."""

    def __init__(self) -> None:
        self.inner = open_bus("memory")
        self.down = False
        self.refused = 0

    async def broadcast(self, channel: str, payload: dict[str, Any]) -> None:
        if self.down:
            self.refused += 1
            raise errors.Unavailable("the Redis bus at 127.0.0.1:6379 is unavailable", broker="x")
        await self.inner.broadcast(channel, payload)

    def listen(self, channel: str) -> AbstractAsyncContextManager[AsyncIterator[dict[str, Any]]]:
        return self.inner.listen(channel)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@contextlib.asynccontextmanager
async def _running(settings: Settings, bus: FlakyBus) -> AsyncIterator[Running]:
    await bootstrap.migrate(settings)
    app = bootstrap.build(settings, bus=bus)  # type: ignore[arg-type]
    stop = asyncio.Event()
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(app, stop=stop, on_listening=port.set_result))
    try:
        bound = await asyncio.wait_for(port, 10)
        yield Running(app, f"http://127.0.0.1:{bound}", f"ws://127.0.0.1:{bound}/v1/ws")
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        await bus.inner.close()


@contextlib.asynccontextmanager
async def _routed_items(
    srv: Running, t: Tenant, count: int
) -> AsyncIterator[tuple[httpx.AsyncClient, list[int]]]:
    """`count` notifications routed to ann, and a client with ann's token."""
    for n in range(count):
        answer = await t.http.post(
            "/v1/events", json={"type": "t", "recipients": {"users": ["ann"]}, "title": f"{n}"}
        )
        assert answer.status_code == 202, answer.text
    token = (await t.http.post("/v1/users/ann/tokens")).json()["token"]
    async with httpx.AsyncClient(
        base_url=srv.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=10
    ) as me:
        for _ in range(300):
            items = (await me.get("/v1/me/notifications")).json()["items"]
            if len(items) == count:
                yield me, sorted(item["id"] for item in items)
                return
            await asyncio.sleep(0.02)
        raise AssertionError("not routed")


async def test_a_receipt_is_kept_and_answered_when_its_broadcast_fails(
    sqlite_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    bus = FlakyBus()
    async with _running(sqlite_settings, bus) as srv, tenant_client(srv) as t:
        async with _routed_items(srv, t, 2) as (me, [first, second]):
            bus.down = True
            with caplog.at_level(logging.WARNING, logger="clarion.services.acknowledging"):
                read = await me.post(f"/v1/me/notifications/{first}/read")
                received = await me.post(f"/v1/me/notifications/{second}/received")
            assert read.status_code == 200, read.text
            assert read.json()["status"] == "read"
            assert received.status_code == 200, received.text
            assert received.json()["status"] == "received"
            assert bus.refused == 2
            assert (await me.get(f"/v1/me/notifications/{first}")).json()["status"] == "read"
            told = [r for r in caplog.records if r.name == "clarion.services.acknowledging"]
            assert [getattr(r, "action", None) for r in told] == ["broadcast_failed"] * 2
            # A repeated receipt changes nothing, so it broadcasts nothing either.
            again = await me.post(f"/v1/me/notifications/{first}/read")
            assert (again.status_code, bus.refused) == (200, 2)


async def test_a_bulk_read_is_kept_and_answered_when_its_broadcast_fails(
    sqlite_settings: Settings,
) -> None:
    bus = FlakyBus()
    async with _running(sqlite_settings, bus) as srv, tenant_client(srv) as t:
        async with _routed_items(srv, t, 3) as (me, ids):
            bus.down = True
            answer = await me.post("/v1/me/notifications/read", json={})
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"read": len(ids)}
            assert bus.refused == 1
            assert (await me.get("/v1/me/unread-counts")).json()["total"] == 0
            bus.down = False
            # The bus is back: news flows again.
            await t.http.post("/v1/events", json={"type": "t", "recipients": {"users": ["ann"]}})
            for _ in range(300):
                if len((await me.get("/v1/me/notifications")).json()["items"]) == 4:
                    break
                await asyncio.sleep(0.02)
            [new] = (await me.get("/v1/me/notifications", params={"status": "unread"})).json()[
                "items"
            ]
            assert (await me.post(f"/v1/me/notifications/{new['id']}/read")).status_code == 200
            assert bus.refused == 1


async def test_a_notification_whose_broadcast_failed_reaches_the_socket_on_reconnect(
    sqlite_settings: Settings,
) -> None:
    # Routing commits, then broadcasts (docs/bus.md, "Broadcasts after a commit"): with the bus
    # refusing broadcasts the event is routed all the same, and the user's next connection
    # gets it in its backlog, as every item never written to a socket.
    bus = FlakyBus()
    async with _running(sqlite_settings, bus) as srv, tenant_client(srv) as t:
        token = (await t.http.post("/v1/users/ann/tokens")).json()["token"]
        async with websockets.connect(srv.ws_url) as ws:
            await ws.send(json.dumps({"type": "auth", "token": token}))
            assert json.loads(await ws.recv())["type"] == "ready"
            bus.down = True
            answer = await t.http.post(
                "/v1/events", json={"type": "t", "recipients": {"users": ["ann"]}, "title": "x"}
            )
            event_id = answer.json()["id"]
            for _ in range(300):
                report = (await t.http.get(f"/v1/events/{event_id}")).json()
                if report["state"] == "routed":
                    break
                await asyncio.sleep(0.02)
            assert report["recipients"]["total"] == 1
            assert bus.refused >= 1
        async with websockets.connect(srv.ws_url) as ws:
            await ws.send(json.dumps({"type": "auth", "token": token}))
            assert json.loads(await ws.recv())["type"] == "ready"
            frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert (frame["type"], frame["event_id"]) == ("notification", event_id)
