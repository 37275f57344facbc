"""Scheduling and expiry through a running server, on a clock the test moves forward: an event
with `send_at` is routed only once due and may be cancelled until then; what is undelivered at
its expiry ends `expired`, is left out of a later backlog, and a push the provider keeps refusing
stops being retried."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import websockets

from clarion.domain import retrying
from clarion.emulators.apns import ApnsEmulator
from clarion.settings import Settings
from tests.support import MovableClock, Running, Tenant, apns_tenant, running, tenant_client


@dataclass
class Setup:
    srv: Running
    t: Tenant
    clock: MovableClock

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.srv.clarion.relay.wake()


@pytest.fixture
async def setup(sqlite_settings: Settings) -> AsyncIterator[Setup]:
    clock = MovableClock()
    async with running(sqlite_settings, clock=clock) as srv, tenant_client(srv) as t:
        yield Setup(srv, t, clock)


def _at(clock: MovableClock, seconds: float) -> str:
    return (clock.now() + timedelta(seconds=seconds)).isoformat()


async def _post(t: Tenant, **body: Any) -> str:
    response = await t.http.post(
        "/v1/events", json={"type": "t", "recipients": {"users": ["a"]}, **body}
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def _event(t: Tenant, event_id: str) -> dict[str, Any]:
    response = await t.http.get(f"/v1/events/{event_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


async def _until(
    probe: Callable[[], Awaitable[dict[str, Any]]],
    ready: Callable[[dict[str, Any]], bool],
    timeout: float = 15.0,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        seen = await probe()
        if ready(seen):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"never ready: {seen}")
        await asyncio.sleep(0.05)


async def _routed(t: Tenant, event_id: str) -> dict[str, Any]:
    return await _until(lambda: _event(t, event_id), lambda e: e["state"] == "routed")


async def test_a_scheduled_event_is_routed_only_once_its_send_at_has_come(setup: Setup) -> None:
    t = setup.t
    send_at = _at(setup.clock, 60)
    event_id = await _post(t, send_at=send_at)
    now_id = await _post(t)
    await _routed(t, now_id)  # a later, due event is not held up behind the scheduled one
    await asyncio.sleep(1.2)  # more than two relay polls
    waiting = await _event(t, event_id)
    assert waiting["state"] == "accepted"
    assert waiting["notification"] is None
    assert datetime.fromisoformat(waiting["send_at"]) == datetime.fromisoformat(send_at)
    setup.advance(61)
    routed = await _routed(t, event_id)
    assert routed["recipients"]["total"] == 1


async def test_a_cancelled_event_is_never_routed_and_a_routed_one_cannot_be_cancelled(
    setup: Setup,
) -> None:
    t = setup.t
    event_id = await _post(t, send_at=_at(setup.clock, 60))
    assert (await t.http.delete(f"/v1/events/{event_id}")).status_code == 204
    assert (await t.http.delete(f"/v1/events/{event_id}")).status_code == 204
    setup.advance(61)
    await asyncio.sleep(1.2)
    cancelled = await _event(t, event_id)
    assert cancelled["state"] == "cancelled"
    assert cancelled["cancelled_at"] is not None
    assert cancelled["notification"] is None

    routed_id = await _post(t)
    await _routed(t, routed_id)
    refused = await t.http.delete(f"/v1/events/{routed_id}")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "already_sent"
    missing = await t.http.delete("/v1/events/no-such-event")
    assert missing.status_code == 404


async def test_the_batch_endpoint_takes_send_at_per_event(setup: Setup) -> None:
    t = setup.t
    response = await t.http.post(
        "/v1/events/batch",
        json={
            "events": [
                {"type": "t", "recipients": {"users": ["a"]}, "send_at": _at(setup.clock, 60)},
                {"type": "t", "recipients": {"users": ["b"]}},
            ]
        },
    )
    assert response.status_code == 202, response.text
    later, now = (e["id"] for e in response.json()["events"])
    await _routed(t, now)
    assert (await _event(t, later))["state"] == "accepted"
    setup.advance(61)
    await _routed(t, later)


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"send_at": "2030-01-01T00:00:00"}, "timezone"),
        ({"send_at": 1893456000}, "RFC 3339"),
        ({"send_at": "2099-01-01T00:00:00Z"}, "days ahead"),
        ({"ttl": 60, "expires_at": "2099-01-01T00:00:00Z"}, "not both"),
        ({"ttl": 0}, "ttl"),
        ({"expires_at": "2001-01-01T00:00:00Z"}, "after"),
    ],
)
async def test_bad_schedules_are_refused(setup: Setup, fields: dict[str, Any], why: str) -> None:
    response = await setup.t.http.post(
        "/v1/events", json={"type": "t", "recipients": {"users": ["a"]}, **fields}
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_request"
    assert why in response.text


async def test_an_undelivered_item_expires_and_is_not_in_a_later_backlog(setup: Setup) -> None:
    t, srv = setup.t, setup.srv
    token = (await t.http.post("/v1/users/a/tokens")).json()["token"]  # on real time: JWT
    event_id = await _post(t, ttl=30)
    routed = await _routed(t, event_id)
    expires_at = datetime.fromisoformat(routed["expires_at"])
    assert routed["recipients"]["by_status"]["pending"] == 1
    setup.advance(31)
    assert srv.clarion.expiring is not None
    await srv.clarion.expiring.once()
    report = await _event(t, event_id)
    assert report["recipients"]["by_status"]["expired"] == 1
    assert report["channels"]["websocket"]["by_status"]["expired"] == 1
    recipient = (await t.http.get(f"/v1/events/{event_id}/recipients/a")).json()
    assert recipient["status"] == "expired"
    assert recipient["trail"][-1]["cause"] == "expired"
    assert recipient["deliveries"][0]["trail"][-1]["to"] == "expired"
    assert expires_at <= setup.clock.now()

    fresh = await _post(t)
    await _routed(t, fresh)
    async with websockets.connect(srv.ws_url) as ws:
        await ws.send(json.dumps({"type": "auth", "token": token, "since": "0"}))
        frames = []
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 3))
            frames.append(frame)
            if frame["type"] == "notification" and frame["event_id"] == fresh:
                break
    delivered = [f["event_id"] for f in frames if f["type"] == "notification"]
    assert event_id not in delivered


async def test_the_expiry_sweep_runs_in_the_worker(setup: Setup) -> None:
    t = setup.t
    event_id = await _post(t, ttl=5)
    await _routed(t, event_id)
    setup.advance(6)
    await _until(
        lambda: _event(t, event_id),
        lambda e: e["recipients"]["by_status"]["expired"] == 1,
        timeout=15,
    )


@pytest.fixture
async def apns(
    sqlite_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Setup, ApnsEmulator]]:
    monkeypatch.setattr(retrying, "BASE_DELAY_SECONDS", 0.2)
    monkeypatch.setattr(retrying, "MAX_DELAY_SECONDS", 0.5)
    clock = MovableClock()
    async with apns_tenant(sqlite_settings, tmp_path, clock=clock) as (srv, t, emulator):
        await srv.clarion.devices.register(
            t.id, "a", provider="apns", token="ab" * 32, app_id=None, keys={}
        )
        yield Setup(srv, t, clock), emulator


async def test_a_push_carries_the_expiry_and_is_expired_instead_of_retried_forever(
    apns: tuple[Setup, ApnsEmulator],
) -> None:
    setup, emulator = apns
    t = setup.t
    first = await _post(t, channels=["apns"], ttl=600)
    expires_at = datetime.fromisoformat((await _routed(t, first))["expires_at"])
    await _until(lambda: _event(t, first), lambda e: e["channels"]["apns"]["by_status"]["sent"])
    assert emulator.received[0]["headers"]["apns-expiration"] == str(int(expires_at.timestamp()))

    emulator.script(503, "ServiceUnavailable")
    second = await _post(t, channels=["apns"], ttl=30)
    await _routed(t, second)
    await _until(lambda: _attempts(emulator), lambda n: n["503"] >= 2)
    setup.advance(31)
    expired = await _until(
        lambda: _event(t, second), lambda e: e["channels"]["apns"]["by_status"]["expired"] == 1
    )
    assert expired["recipients"]["by_status"]["expired"] == 1
    tried = (await _attempts(emulator))["503"]
    await asyncio.sleep(1.5)  # several retry delays
    assert (await _attempts(emulator))["503"] == tried
    trail = (await t.http.get(f"/v1/events/{second}/recipients/a")).json()["deliveries"]
    push = next(d for d in trail if d["channel"] == "apns")
    assert (push["status"], push["trail"][-1]["cause"]) == ("expired", "expired")


async def _attempts(emulator: ApnsEmulator) -> dict[str, int]:
    return {"503": sum(a["status"] == 503 for a in emulator.attempts)}
