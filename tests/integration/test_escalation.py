"""Escalation through a running server, the APNs and SMTP emulators, and a clock the test moves
forward: a push that nobody reads within the rule's window is followed by an email, one read in
the app first is not; a push no device reported received is resent once, one received is not;
and the timers outlive a restart of the server mid-window (they are rows, not tasks)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from clarion.emulators.apns import ApnsEmulator
from clarion.emulators.smtp import SmtpEmulator
from clarion.settings import Settings
from tests.integration.test_email_scenarios import (
    SMTP_PASSWORD,
    SMTP_USER,
    smtp_credential,
    with_email,
)
from tests.support import (
    MovableClock,
    Running,
    apns_key,
    put_apns_credential,
    running,
    with_apns,
)

RESEND, EMAIL = 60, 600
TOKENS = {"a": "a1" * 32, "b": "b2" * 32}


@dataclass
class World:
    settings: Settings
    clock: MovableClock
    apns: ApnsEmulator
    relay: SmtpEmulator
    key_pem: str
    tenant_id: str = ""
    api_key: str = ""


@pytest.fixture
async def world(sqlite_settings: Settings, tmp_path: Path) -> AsyncIterator[World]:
    apns = ApnsEmulator()
    relay = SmtpEmulator(require_tls=True, require_auth=True)
    relay.add_user(SMTP_USER, SMTP_PASSWORD)
    await apns.start()
    await relay.start()
    settings = with_apns(with_email(sqlite_settings, tmp_path, relay=relay), apns, tmp_path)
    pem = apns_key(apns)
    try:
        yield World(settings, MovableClock(), apns, relay, pem)
    finally:
        await relay.stop()
        await apns.stop()


@contextlib.asynccontextmanager
async def server(world: World, escalation: dict[str, int]) -> AsyncIterator[tuple[Running, Any]]:
    """A server on the world's database; the tenant, its rule, credentials, users and devices
    are made on the first start and found again on later ones."""
    async with running(world.settings, clock=world.clock) as srv:
        if not world.tenant_id:
            created = await srv.clarion.tenancy.create_tenant("escalation")
            world.tenant_id, world.api_key = created.tenant_id, created.api_key
        async with httpx.AsyncClient(
            base_url=srv.base_url,
            headers={"Authorization": f"Bearer {world.api_key}"},
            timeout=10,
        ) as http:
            if not await srv.clarion.ruling.list_rules(world.tenant_id):
                await _set_up(srv, http, world, escalation)
            yield srv, http


async def _set_up(
    srv: Running, http: httpx.AsyncClient, world: World, escalation: dict[str, int]
) -> None:
    await put_apns_credential(srv.clarion, world.tenant_id, world.key_pem)
    ok = (200, 201)
    answer = await http.put("/v1/credentials/email/smtp", json=smtp_credential(world.relay))
    assert answer.status_code in ok, answer.text
    sender = {"provider": "smtp", "sender": "orders@example.com"}
    answer = await http.put("/v1/settings", json={"default_locale": "en", "email": sender})
    assert answer.status_code in ok, answer.text
    rule = {"event_type": "order.*", "channels": ["apns"], "escalation": escalation}
    answer = await http.put("/v1/rules/orders", json=rule)
    assert answer.status_code in ok, answer.text
    for user, token in TOKENS.items():
        answer = await http.put(f"/v1/users/{user}", json={"email": f"{user}@example.com"})
        assert answer.status_code in ok, answer.text
        await srv.clarion.devices.register(
            world.tenant_id, user, provider="apns", token=token, app_id=None, keys={}
        )


async def _until(
    probe: Callable[[], Awaitable[Any]], ready: Callable[[Any], bool], timeout: float = 15.0
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        seen = await probe()
        if ready(seen):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"never ready: {seen}")
        await asyncio.sleep(0.05)


async def _post(http: httpx.AsyncClient) -> str:
    answer = await http.post(
        "/v1/events",
        json={"type": "order.shipped", "recipients": {"users": ["a", "b"]}, "title": "Shipped"},
    )
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


async def _report(http: httpx.AsyncClient, event_id: str) -> dict[str, Any]:
    answer = await http.get(f"/v1/events/{event_id}")
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


async def _pushed(http: httpx.AsyncClient, event_id: str) -> dict[str, Any]:
    """The event's report once both pushes went out."""
    found: dict[str, Any] = await _until(
        lambda: _report(http, event_id),
        lambda r: (
            r["routed_at"] and r["channels"].get("apns", {}).get("by_status", {}).get("sent") == 2
        ),
    )
    return found


async def _item_of(srv: Running, http: httpx.AsyncClient, user: str) -> tuple[str, int]:
    """A user token for `user`, and the id of their newest inbox item."""
    token = (await http.post(f"/v1/users/{user}/tokens")).json()["token"]
    async with httpx.AsyncClient(
        base_url=srv.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=10
    ) as me:
        items = (await me.get("/v1/me/notifications")).json()["items"]
    return token, int(items[0]["id"])


async def _acknowledge(srv: Running, http: httpx.AsyncClient, user: str, what: str) -> None:
    token, item = await _item_of(srv, http, user)
    async with httpx.AsyncClient(
        base_url=srv.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=10
    ) as me:
        answer = await me.post(f"/v1/me/notifications/{item}/{what}")
        assert answer.status_code == 200, answer.text


def _mail_to(relay: SmtpEmulator, user: str) -> list[dict[str, Any]]:
    return [m for m in relay.messages if f"{user}@example.com" in m["rcpt_to"]]


def _pushes_to(apns: ApnsEmulator, user: str) -> int:
    return sum(r["token"] == TOKENS[user] for r in apns.received)


async def test_an_unread_push_is_followed_by_email_and_a_read_one_is_not(world: World) -> None:
    async with server(world, {"email_if_unread_after": EMAIL}) as (srv, http):
        event_id = await _post(http)
        await _pushed(http, event_id)
        await _acknowledge(srv, http, "b", "read")
        world.clock.advance(EMAIL - 5)
        await asyncio.sleep(1.5)  # more than an escalation poll: not due yet
        assert world.relay.messages == []
        world.clock.advance(10)
        await _until(lambda: asyncio.sleep(0, _mail_to(world.relay, "a")), bool)
        await asyncio.sleep(1.5)
        [mail] = _mail_to(world.relay, "a")
        assert "Shipped" in mail["subject"]
        assert _mail_to(world.relay, "b") == []
        recipient = (await http.get(f"/v1/events/{event_id}/recipients/a")).json()
        email = next(d for d in recipient["deliveries"] if d["channel"] == "email")
        assert email["status"] == "sent"
        assert email["trail"][0]["cause"] == "escalation_email"


async def test_the_email_follow_up_survives_a_restart_mid_window(world: World) -> None:
    escalation = {"email_if_unread_after": EMAIL}
    async with server(world, escalation) as (srv, http):
        event_id = await _post(http)
        await _pushed(http, event_id)
        await _acknowledge(srv, http, "b", "read")
        world.clock.advance(EMAIL / 2)
    # Nothing runs while the server is down; the timers wait in the database.
    async with server(world, escalation) as (srv, http):
        world.clock.advance(EMAIL / 2 + 5)
        await _until(lambda: asyncio.sleep(0, _mail_to(world.relay, "a")), bool)
        await asyncio.sleep(1.5)
        assert len(_mail_to(world.relay, "a")) == 1
        assert _mail_to(world.relay, "b") == []
    async with server(world, escalation) as (srv, http):
        await asyncio.sleep(1.5)  # a second restart fires nothing again
        assert len(_mail_to(world.relay, "a")) == 1


async def test_a_push_not_received_is_resent_once_and_a_received_one_is_not(
    world: World,
) -> None:
    async with server(world, {"resend_push_after": RESEND}) as (srv, http):
        event_id = await _post(http)
        await _pushed(http, event_id)
        assert (_pushes_to(world.apns, "a"), _pushes_to(world.apns, "b")) == (1, 1)
        await _acknowledge(srv, http, "b", "received")
        world.clock.advance(RESEND + 1)
        await _until(lambda: asyncio.sleep(0, _pushes_to(world.apns, "a")), lambda n: n == 2)
        world.clock.advance(RESEND + 1)
        await asyncio.sleep(2)  # several polls: nothing more is due
        assert (_pushes_to(world.apns, "a"), _pushes_to(world.apns, "b")) == (2, 1)
        recipient = (await http.get(f"/v1/events/{event_id}/recipients/a")).json()
        push = next(d for d in recipient["deliveries"] if d["channel"] == "apns")
        causes = [step["cause"] for step in push["trail"]]
        assert causes == ["routed", "apns", "escalation_resend", "apns"]
        assert push["status"] == "sent"
