"""Quiet hours and push content through a running server, on a clock the test moves forward
and against the APNs emulator: a push to a user inside their quiet window waits for its end
while the in-app copy goes at once, a critical event goes through, the tenant's default window
holds users without one; a push template renders per user locale, with the badge (the unread
count) and the event's push options."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import websockets

from clarion.emulators.apns import ApnsEmulator
from clarion.settings import Settings
from tests.support import MovableClock, Running, Tenant, apns_tenant


@dataclass
class Setup:
    srv: Running
    t: Tenant
    clock: MovableClock
    emulator: ApnsEmulator

    async def user(self, key: str, **fields: Any) -> str:
        response = await self.t.http.put(f"/v1/users/{key}", json=fields)
        assert response.status_code in (200, 201), response.text
        token = f"{len(self.emulator.received)}{key}".encode().hex().ljust(64, "0")[:64]
        await self.srv.clarion.devices.register(
            self.t.id, key, provider="apns", token=token, app_id=None, keys={}
        )
        return token

    async def post(self, users: list[str], **body: Any) -> str:
        response = await self.t.http.post(
            "/v1/events",
            json={"type": "t", "title": "hi", "recipients": {"users": users}, "channels": ["apns"]}
            | body,
        )
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    async def report(self, event_id: str) -> dict[str, Any]:
        response = await self.t.http.get(f"/v1/events/{event_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def pushed_to(self, token: str) -> list[dict[str, Any]]:
        return [r for r in self.emulator.received if r["token"] == token]


@pytest.fixture
async def setup(settings: Settings, tmp_path: Path) -> AsyncIterator[Setup]:
    clock = MovableClock()
    async with apns_tenant(settings, tmp_path, clock=clock) as (srv, t, emulator):
        yield Setup(srv, t, clock, emulator)


async def _until(
    probe: Callable[[], Awaitable[Any]], ready: Callable[[Any], bool], timeout: float = 15.0
) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = await probe()
        if ready(found):
            return found
        assert asyncio.get_running_loop().time() < deadline, f"not ready: {found}"
        await asyncio.sleep(0.05)


def _window_around(now: datetime) -> dict[str, str]:
    """A UTC window that started 30 minutes ago and ends in an hour or so."""
    return {
        "start": (now - timedelta(minutes=30)).strftime("%H:%M"),
        "end": (now + timedelta(minutes=61)).strftime("%H:%M"),
    }


def _apns(report: dict[str, Any], status: str) -> int:
    channel = report.get("channels", {}).get("apns")
    return 0 if channel is None else int(channel["by_status"][status])


async def test_a_push_in_the_quiet_window_waits_for_its_end_the_inbox_does_not(
    setup: Setup,
) -> None:
    window = _window_around(setup.clock.now())
    quiet = await setup.user("q", timezone="UTC", quiet_hours=window)
    awake = await setup.user("w", timezone="UTC")
    optout = await setup.user("o", timezone="UTC", quiet_hours={"start": "05:00", "end": "05:00"})
    event_id = await setup.post(["q", "w", "o"])
    report = await _until(lambda: setup.report(event_id), lambda r: _apns(r, "sent") == 2)
    assert _apns(report, "pending") == 1
    assert setup.pushed_to(awake)
    assert setup.pushed_to(optout)
    # The in-app copy is not held.
    token = (await setup.t.http.post("/v1/users/q/tokens")).json()["token"]
    async with websockets.connect(setup.srv.ws_url) as ws:
        await ws.send(json.dumps({"type": "auth", "token": token, "since": "0"}))
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
            if frame["type"] == "notification":
                assert frame["event_id"] == event_id
                break
    await asyncio.sleep(1.0)
    assert not setup.pushed_to(quiet)
    detail = (await setup.t.http.get(f"/v1/events/{event_id}/recipients/q")).json()
    assert {d["channel"]: d["status"] for d in detail["deliveries"]}["apns"] == "pending"

    setup.clock.advance(62 * 60)
    await _until(lambda: setup.report(event_id), lambda r: _apns(r, "sent") == 3)
    assert len(setup.pushed_to(quiet)) == 1


async def test_a_critical_event_goes_through_quiet_hours(setup: Setup) -> None:
    quiet = await setup.user("q", timezone="UTC", quiet_hours=_window_around(setup.clock.now()))
    event_id = await setup.post(["q"], priority="critical")
    await _until(lambda: setup.report(event_id), lambda r: _apns(r, "sent") == 1)
    assert len(setup.pushed_to(quiet)) == 1


async def test_the_tenants_default_window_and_zone_hold_users_without_their_own(
    setup: Setup,
) -> None:
    now = setup.clock.now()
    # The tenant's zone is 5 hours ahead of UTC all year: its window is read there.
    local = now.astimezone(ZoneInfo("Asia/Karachi"))
    response = await setup.t.http.put(
        "/v1/settings",
        json={"quiet_hours": _window_around(local), "default_timezone": "Asia/Karachi"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["quiet_hours"] == _window_around(local)
    assert response.json()["default_timezone"] == "Asia/Karachi"
    defaulted = await setup.user("d")
    # Their own zone puts the tenant's window five hours away: not quiet now.
    elsewhere = await setup.user("u", timezone="UTC")
    own = await setup.user("n", quiet_hours={"start": "00:00", "end": "00:00"})
    event_id = await setup.post(["d", "u", "n"])
    await _until(lambda: setup.report(event_id), lambda r: _apns(r, "sent") == 2)
    assert setup.pushed_to(elsewhere)
    assert setup.pushed_to(own)
    await asyncio.sleep(0.5)
    assert not setup.pushed_to(defaulted)
    setup.clock.advance(62 * 60)
    await _until(lambda: setup.report(event_id), lambda r: _apns(r, "sent") == 3)

    user = (await setup.t.http.get("/v1/users/n")).json()
    assert user["quiet_hours"] == {"start": "00:00", "end": "00:00"}
    # Settings without the new fields keep working, and clear them.
    response = await setup.t.http.put("/v1/settings", json={"default_locale": "en"})
    assert response.status_code == 200, response.text
    assert response.json()["quiet_hours"] is None


async def test_bad_quiet_hours_are_refused(setup: Setup) -> None:
    for window in ({"start": "7:00", "end": "08:00"}, {"start": "22:00"}, "22-07"):
        response = await setup.t.http.put("/v1/users/x", json={"quiet_hours": window})
        assert response.status_code == 422, response.text
    response = await setup.t.http.put("/v1/settings", json={"default_timezone": "Mars/Olympus"})
    assert response.status_code == 422, response.text
    response = await setup.t.http.post(
        "/v1/events", json={"type": "t", "recipients": {"users": ["x"]}, "priority": "urgent"}
    )
    assert response.status_code == 422, response.text


async def test_a_push_template_renders_per_locale_with_the_badge_and_push_options(
    setup: Setup,
) -> None:
    response = await setup.t.http.put(
        "/v1/templates/t",
        json={
            "channels": {
                "push": {
                    "en": {"title": "Hello {{ user.id }}", "body": "{{ event.data.n }} new"},
                    "de": {"title": "Hallo {{ user.id }}", "body": "{{ event.data.n }} neu"},
                }
            }
        },
    )
    assert response.status_code == 201, response.text
    german = await setup.user("g", locale="de-AT")
    english = await setup.user("e", locale="en")
    push = {
        "badge": True,
        "sound": "ping.caf",
        "collapse_id": "c-1",
        "thread_id": "th-1",
        "link": "app://orders/1",
    }
    first = await setup.post(["g", "e"], data={"n": "1"}, push=push)
    await _until(lambda: setup.report(first), lambda r: _apns(r, "sent") == 2)
    second = await setup.post(["g"], data={"n": "2"}, push=push)
    await _until(lambda: setup.report(second), lambda r: _apns(r, "sent") == 1)

    g1, g2 = (r["payload"] for r in setup.pushed_to(german))
    assert g1["aps"]["alert"] == {"title": "Hallo g", "body": "1 neu"}
    assert g1["aps"]["badge"] == 1
    assert g2["aps"]["badge"] == 2  # two unread items by then
    assert g1["aps"]["sound"] == "ping.caf"
    assert g1["aps"]["thread-id"] == "th-1"
    assert g1["link"] == "app://orders/1"
    assert setup.pushed_to(german)[0]["collapse_id"] == "c-1"
    (e1,) = (r["payload"] for r in setup.pushed_to(english))
    assert e1["aps"]["alert"] == {"title": "Hello e", "body": "1 new"}
    assert e1["aps"]["badge"] == 1

    # Without a template the event's own text goes out, and no badge unless asked for.
    plain = await setup.post(["e"], type="other", title="Plain", body="text")
    await _until(lambda: setup.report(plain), lambda r: _apns(r, "sent") == 1)
    last = setup.pushed_to(english)[-1]["payload"]
    assert last["aps"]["alert"] == {"title": "Plain", "body": "text"}
    assert "badge" not in last["aps"]


async def test_a_push_template_that_cannot_render_fails_the_delivery(setup: Setup) -> None:
    response = await setup.t.http.put(
        "/v1/templates/t",
        json={"channels": {"push": {"en": {"title": "Hi", "body": "{{ event.data.missing }}"}}}},
    )
    assert response.status_code == 201, response.text
    await setup.user("e", locale="en")
    event_id = await setup.post(["e"])
    report = await _until(lambda: setup.report(event_id), lambda r: _apns(r, "failed") == 1)
    assert _apns(report, "sent") == 0
    detail = (await setup.t.http.get(f"/v1/events/{event_id}/recipients/e")).json()
    push = next(d for d in detail["deliveries"] if d["channel"] == "apns")
    assert "template" in (push.get("error") or json.dumps(push))
