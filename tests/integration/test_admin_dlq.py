"""The operators' dead-letter API (/v1/admin/dlq) over real HTTP: its own token, 404 when none
is configured, and a replayed event that is routed exactly once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from clarion import bootstrap
from clarion.adapters.storage import tables
from clarion.domain.notifications import EVENTS_STREAM, INGEST_STREAM
from clarion.entrypoints.server import serve
from clarion.entrypoints.worker.routers import GROUP, run_routers
from clarion.settings import AdminSettings, Settings
from tests.support import Running, running, tenant_client

ADMIN_TOKEN = "operator-" + "x" * 40


@contextlib.asynccontextmanager
async def _api_only(settings: Settings) -> AsyncIterator[Running]:
    """The API alone (no worker): accepted events wait in the outbox until the test moves them."""
    await bootstrap.migrate(settings)
    app = bootstrap.build(settings)
    stop = asyncio.Event()
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(app, api=True, worker=False, stop=stop, on_listening=port.set_result)
    )
    try:
        bound = await asyncio.wait_for(port, 10)
        yield Running(app, f"http://127.0.0.1:{bound}", f"ws://127.0.0.1:{bound}/v1/ws")
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


def _admin(srv: Running, token: str = ADMIN_TOKEN) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=srv.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )


def _with_token(settings: Settings) -> Settings:
    return settings.model_copy(update={"admin": AdminSettings(token=ADMIN_TOKEN)})


async def test_without_an_admin_token_configured_the_routes_do_not_exist(
    sqlite_server: Running,
) -> None:
    async with _admin(sqlite_server) as http:
        for method, path in (
            ("GET", "/v1/admin/dlq"),
            ("GET", "/v1/admin/dlq/events/1"),
            ("POST", "/v1/admin/dlq/events/1/replay"),
            ("DELETE", "/v1/admin/dlq/events/1"),
            ("GET", "/v1/admin/dlq/nonsense/1"),
            ("PUT", "/v1/admin/dlq"),
        ):
            answer = await http.request(method, path)
            assert answer.status_code == 404, (method, path, answer.text)
            assert answer.json()["error"]["code"] == "route_not_found"
        spec = (await http.get("/openapi.json")).json()
        assert not [path for path in spec["paths"] if path.startswith("/v1/admin")]


async def test_only_the_admin_token_opens_the_admin_routes(sqlite_settings: Settings) -> None:
    async with _api_only(_with_token(sqlite_settings)) as srv, tenant_client(srv) as t:
        user_token = (await t.http.post("/v1/users/ann/tokens")).json()["token"]
        for credential in (None, t.api_key, user_token, ADMIN_TOKEN[:-1], ADMIN_TOKEN + "x"):
            headers = {} if credential is None else {"Authorization": f"Bearer {credential}"}
            answer = await srv_get(srv, "/v1/admin/dlq", headers)
            assert answer.status_code == 401, (credential, answer.text)
            assert answer.json()["error"]["code"] == "unauthorized"
            assert answer.headers["WWW-Authenticate"] == "Bearer"
        for header in (f"Basic {ADMIN_TOKEN}", "Bearer", ADMIN_TOKEN):
            answer = await srv_get(srv, "/v1/admin/dlq", {"Authorization": header})
            assert answer.status_code == 401, header
        async with _admin(srv) as http:
            answer = await http.get("/v1/admin/dlq")
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"stream": "events", "dead_letters": [], "next_after": None}
            for path, code in (
                ("/v1/admin/dlq?stream=nonsense", "invalid_request"),
                ("/v1/admin/dlq?limit=0", "invalid_request"),
                ("/v1/admin/dlq/nonsense/1", "invalid_request"),
                ("/v1/admin/dlq/events/1", "not_found"),
                ("/v1/admin/dlq/ingest/99", "not_found"),
            ):
                answer = await http.get(path)
                assert answer.json()["error"]["code"] == code, (path, answer.text)
            assert (await http.delete("/v1/admin/dlq/events/1")).status_code == 404
            assert (await http.post("/v1/admin/dlq/events/1/replay")).status_code == 404


async def srv_get(srv: Running, path: str, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=srv.base_url, timeout=10) as http:
        return await http.get(path, headers=headers)


async def test_a_replayed_dead_letter_is_routed_exactly_once(sqlite_settings: Settings) -> None:
    async with _api_only(_with_token(sqlite_settings)) as srv, tenant_client(srv) as t:
        clarion = srv.clarion
        accepted = await t.http.post(
            "/v1/events", json={"type": "t", "recipients": {"users": ["ann", "bob"]}}
        )
        assert accepted.status_code == 202
        event_id = accepted.json()["id"]
        assert await clarion.relay.relay_once() == 1  # onto the bus, as a worker's relay does
        # A router that gives up on it: dead-lettered.
        messages = clarion.bus.consume(EVENTS_STREAM, GROUP).__aiter__()
        envelope = await asyncio.wait_for(anext(messages), 5)
        assert envelope.payload["event_id"] == event_id
        await envelope.reject("routing failed")

        routed: list[Any] = []
        route_many = clarion.routing.route_many

        async def counting(events: list[str]) -> Any:
            routed.extend(events)
            return await route_many(events)

        clarion.routing.route_many = counting  # type: ignore[method-assign]
        stop = asyncio.Event()
        routers = asyncio.create_task(
            run_routers(clarion.routing, clarion.bus, stop, concurrency=2)
        )
        try:
            async with _admin(srv) as http:
                page = (await http.get("/v1/admin/dlq")).json()
                [letter] = page["dead_letters"]
                assert letter["stream"] == "events"
                assert letter["group"] == "routers"
                assert letter["deliveries"] == 1
                assert letter["reason"] == "routing failed"
                assert letter["payload"] == envelope.payload
                assert letter["dead_at"]
                shown = await http.get(f"/v1/admin/dlq/events/{letter['id']}")
                assert shown.json() == letter
                await asyncio.sleep(0.3)
                assert routed == []  # nothing routes it while it is a dead letter

                replayed = await http.post(f"/v1/admin/dlq/events/{letter['id']}/replay")
                assert replayed.status_code == 202, replayed.text
                assert replayed.json() == letter
                for _ in range(200):
                    report = (await t.http.get(f"/v1/events/{event_id}")).json()
                    if report["state"] == "routed":
                        break
                    await asyncio.sleep(0.02)
                assert report["recipients"]["total"] == 2
                assert (await http.get("/v1/admin/dlq")).json()["dead_letters"] == []
                again = await http.post(f"/v1/admin/dlq/events/{letter['id']}/replay")
                assert again.status_code == 404
                await asyncio.sleep(0.5)
                assert routed == [event_id]  # once more, and only once
        finally:
            stop.set()
            await asyncio.wait_for(routers, 5)


@pytest.mark.parametrize("count", [3])
async def test_dead_letters_are_paged_and_dropped(sqlite_settings: Settings, count: int) -> None:
    async with _api_only(_with_token(sqlite_settings)) as srv:
        bus = srv.clarion.bus
        messages = bus.consume("ingest", "ingesters").__aiter__()
        for n in range(count):
            await bus.publish("ingest", {"n": n})
            await (await asyncio.wait_for(anext(messages), 5)).reject(f"invalid_request: {n}")
        async with _admin(srv) as http:
            first = (
                await http.get("/v1/admin/dlq", params={"stream": "ingest", "limit": 2})
            ).json()
            assert [x["payload"] for x in first["dead_letters"]] == [{"n": 0}, {"n": 1}]
            assert first["next_after"] == first["dead_letters"][-1]["id"]
            rest = (
                await http.get(
                    "/v1/admin/dlq",
                    params={"stream": "ingest", "limit": 2, "after": first["next_after"]},
                )
            ).json()
            assert [x["payload"] for x in rest["dead_letters"]] == [{"n": 2}]
            assert rest["next_after"] is None
            dropped = first["dead_letters"][0]["id"]
            assert (await http.delete(f"/v1/admin/dlq/ingest/{dropped}")).status_code == 204
            assert (await http.get(f"/v1/admin/dlq/ingest/{dropped}")).status_code == 404
            left = (await http.get("/v1/admin/dlq", params={"stream": "ingest"})).json()
            assert [x["payload"] for x in left["dead_letters"]] == [{"n": 1}, {"n": 2}]


async def test_a_replayed_ingest_message_is_stored_once_its_cause_is_fixed(
    sqlite_settings: Settings,
) -> None:
    async with running(_with_token(sqlite_settings)) as srv, tenant_client(srv) as t:
        message = {
            "tenant_id": t.id,
            "idempotency_key": "order-1042-shipped",
            "event": {"type": "order.shipped", "recipients": {"groups": ["vips"]}},
        }
        await srv.clarion.bus.publish(INGEST_STREAM, message)
        async with _admin(srv) as http:
            letters: list[dict[str, Any]] = []
            for _ in range(250):
                page = await http.get("/v1/admin/dlq", params={"stream": "ingest"})
                letters = page.json()["dead_letters"]
                if letters:
                    break
                await asyncio.sleep(0.02)
            [letter] = letters
            assert (letter["reason"], letter["group"], letter["payload"]) == (
                "unknown_group",
                "ingesters",
                message,
            )
            # The operator fixes the cause, then replays: the event is stored, once.
            assert (await t.http.put("/v1/groups/vips/members/ann")).status_code == 404
            assert (await t.http.put("/v1/groups/vips", json={})).status_code == 201
            assert (await t.http.put("/v1/groups/vips/members/ann")).status_code == 201
            replayed = await http.post(f"/v1/admin/dlq/ingest/{letter['id']}/replay")
            assert replayed.status_code == 202, replayed.text
            events = tables.events
            stored = sa.select(events.c.id, events.c.state).where(
                events.c.tenant_id == t.id, events.c.idempotency_key == message["idempotency_key"]
            )
            rows: list[Any] = []
            for _ in range(250):
                async with srv.clarion.store.engine.connect() as conn:
                    rows = list(await conn.execute(stored))
                if rows and rows[0].state == "routed":
                    break
                await asyncio.sleep(0.02)
            [(event_id, state)] = rows
            assert state == "routed"
            assert (await t.http.get(f"/v1/events/{event_id}")).json()["recipients"]["total"] == 1
            assert (
                await http.post(f"/v1/admin/dlq/ingest/{letter['id']}/replay")
            ).status_code == 404
            await asyncio.sleep(0.5)
            async with srv.clarion.store.engine.connect() as conn:
                assert len(list(await conn.execute(stored))) == 1
            assert (await http.get("/v1/admin/dlq", params={"stream": "ingest"})).json()[
                "dead_letters"
            ] == []
