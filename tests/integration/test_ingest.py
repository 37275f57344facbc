"""Producers publish events straight onto the bus (`ingest`, docs/bus.md): a running Clarion
stores each as `POST /v1/events` would, once however often the bus hands it out, routes it, and
dead-letters what the API would refuse; on every bus backend."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa

from clarion.adapters.storage import tables
from clarion.domain.notifications import INGEST_STREAM
from clarion.settings import Settings, StreamSettings
from tests.contract.test_bus import _forget, _url_of
from tests.support import Running, running, tenant_client


@pytest.fixture(params=["memory", "redis", "nats"])
async def on_bus(
    request: pytest.FixtureRequest, sqlite_settings: Settings
) -> AsyncIterator[Settings]:
    kind = str(request.param)
    url = await _url_of(kind)
    prefix = f"t{uuid.uuid4().hex[:10]}"
    yield sqlite_settings.model_copy(
        update={"bus": kind, "bus_url": url, "streams": StreamSettings(prefix=prefix)}
    )
    if url is not None:
        await _forget(kind, url, prefix)


async def events_of(srv: Running, tenant_id: str) -> list[Any]:
    async with srv.clarion.store.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(tables.events.c.id, tables.events.c.routed_at).where(
                tables.events.c.tenant_id == tenant_id
            )
        )
        return list(rows)


async def until(check: Any, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError("timed out")


def message(tenant_id: str, key: str, **event: Any) -> dict[str, Any]:
    return {
        "tenant_id": tenant_id,
        "idempotency_key": key,
        "event": {"type": "order.placed", "recipients": {"users": ["ada"]}, **event},
    }


async def test_a_published_event_is_stored_once_and_routed(on_bus: Settings) -> None:
    async with running(on_bus) as srv, tenant_client(srv) as tenant:
        bus = srv.clarion.bus
        published = message(tenant.id, "order-1", title="Thanks for your order")
        await bus.publish(INGEST_STREAM, published)
        await bus.publish(INGEST_STREAM, published)  # the producer retried: stored once

        async def routed() -> list[Any]:
            rows = await events_of(srv, tenant.id)
            return rows if rows and all(r.routed_at for r in rows) else []

        [event] = await until(routed)
        await asyncio.sleep(0.5)
        assert len(await events_of(srv, tenant.id)) == 1
        inbox = await tenant.http.get(f"/v1/events/{event.id}")
        assert inbox.status_code == 200
        assert inbox.json()["recipients"]["total"] == 1
        # What the API knows of it is what the producer sent.
        assert inbox.json()["notification"]["title"] == "Thanks for your order"


async def test_what_the_api_would_refuse_is_dead_lettered_with_its_code(
    on_bus: Settings,
) -> None:
    async with running(on_bus) as srv, tenant_client(srv) as tenant:
        bus = srv.clarion.bus
        refused = [
            ({"tenant_id": tenant.id, "event": {"type": "x"}}, "invalid_request"),
            (message("no-such-tenant", "k1"), "unknown_tenant"),
            (message(tenant.id, "k2", channels=["pigeon"]), "invalid_request"),
            (
                {**message(tenant.id, "k3"), "event": {"type": "x", "recipients": {}}},
                "no_recipients",
            ),
            (message(tenant.id, "k4", channels=["apns"]), "unknown_channel"),
        ]
        for payload, _ in refused:
            await bus.publish(INGEST_STREAM, payload)
        dead = bus.consume(f"{INGEST_STREAM}.dead", "inspectors").__aiter__()
        reasons = []
        for _ in refused:
            letter = await asyncio.wait_for(anext(dead), 20)
            reasons.append(str(letter.payload["reason"]).split(":")[0])
            await letter.ack()
        assert sorted(reasons) == sorted(code for _, code in refused)
        assert await events_of(srv, tenant.id) == []

        # The same key with another event is refused as over HTTP; the first one stands.
        await bus.publish(INGEST_STREAM, message(tenant.id, "same", title="first"))
        await until(lambda: events_of(srv, tenant.id))
        await bus.publish(INGEST_STREAM, message(tenant.id, "same", title="second"))
        letter = await asyncio.wait_for(anext(dead), 20)
        assert letter.payload["reason"] == "idempotency_key_reused"
        assert len(await events_of(srv, tenant.id)) == 1
