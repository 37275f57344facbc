"""Enrichment through a running server (issue 8, point 2), against a tenant's enrichment webhook
served on 127.0.0.1 (allowed through `webhooks.allowed_networks`), the SMTP emulator and the
APNs emulator: the webhook's answer appears in the rendered email and push, its requests are
signed; a webhook that answers after 3 s (past the 2 s budget) follows each rule's policy:
``send`` sends without the data, ``fail`` fails the delivery with "enrichment failed: timeout",
``retry`` leaves it pending with that error.

SQLite only: what this adds is the fetch, the policy and the rendering, which do not depend on
the database (the store's new queries are plain selects and updates).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from clarion.emulators.apns import ApnsEmulator
from clarion.emulators.smtp import SmtpEmulator
from clarion.settings import Settings
from clarion.wire import webhooks as wire
from tests.integration.test_email_scenarios import smtp_credential, with_email
from tests.support import (
    Running,
    Tenant,
    apns_key,
    put_apns_credential,
    running,
    tenant_client,
    with_apns,
)

SECRET = "enrichment-secret-0123456789"


@dataclass
class Hook:
    """A tenant's enrichment webhook: records each request, answers `answer` after `delay`."""

    answer: dict[str, Any]
    delay: float = 0.0
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    port: int = 0
    server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/enrich"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")[1:]
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in lines if line)
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append((headers, body))
            await asyncio.sleep(self.delay)
            payload = json.dumps(self.answer).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@dataclass
class Setup:
    srv: Running
    t: Tenant
    relay: SmtpEmulator
    apns: ApnsEmulator

    async def put(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = await self.t.http.put(path, json=body)
        assert answer.status_code in (200, 201), (path, answer.text)
        found: dict[str, Any] = answer.json()
        return found

    async def user(self, key: str) -> str:
        await self.put(f"/v1/users/{key}", {"email": f"{key}@example.com", "locale": "en"})
        token = key.encode().hex().ljust(64, "0")[:64]
        await self.srv.clarion.devices.register(
            self.t.id, key, provider="apns", token=token, app_id=None, keys={}
        )
        return token

    async def post(self, event_type: str, users: list[str], channels: list[str]) -> str:
        answer = await self.t.http.post(
            "/v1/events",
            json={
                "type": event_type,
                "title": "Shipped",
                "recipients": {"users": users},
                "channels": channels,
            },
        )
        assert answer.status_code == 202, answer.text
        return str(answer.json()["id"])

    async def delivery(self, event_id: str, user: str, channel: str) -> dict[str, Any]:
        answer = await self.t.http.get(f"/v1/events/{event_id}/recipients/{user}")
        if answer.status_code != 200:
            return {}
        found: list[dict[str, Any]] = answer.json()["deliveries"]
        return next((d for d in found if d["channel"] == channel), {})


@pytest.fixture
async def setup(sqlite_settings: Settings, tmp_path: Path) -> AsyncIterator[Setup]:
    relay = SmtpEmulator(require_tls=True, require_auth=True)
    relay.add_user("clarion", "s3cret-password")
    await relay.start()
    apns = ApnsEmulator()
    await apns.start()
    settings = with_apns(with_email(sqlite_settings, tmp_path, relay=relay), apns, tmp_path)
    settings = settings.model_copy(
        update={
            "webhooks": settings.webhooks.model_copy(
                update={"allowed_networks": ["127.0.0.1/32"], "allow_http": True}
            ),
        }
    )
    try:
        async with running(settings) as srv, tenant_client(srv) as t:
            await put_apns_credential(srv.clarion, t.id, apns_key(apns))
            setup = Setup(srv, t, relay, apns)
            await setup.put("/v1/credentials/email/smtp", smtp_credential(relay))
            yield setup
    finally:
        await apns.stop()
        await relay.stop()


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    found = Hook(
        answer={"event": {"carrier": "DHL"}, "users": {"ann": {"eta": "Tuesday"}}},
    )
    await found.start()
    yield found
    await found.stop()


async def _until(
    probe: Callable[[], Awaitable[Any]], ready: Callable[[Any], bool], timeout: float = 20.0
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = await probe()
        if ready(found):
            return found
        assert time.monotonic() < deadline, f"not ready: {found}"
        await asyncio.sleep(0.1)


async def configure(setup: Setup, hook: Hook, event_type: str) -> None:
    sender = {"provider": "smtp", "sender": "shop@example.com"}
    saved = await setup.put(
        "/v1/settings",
        {
            "default_locale": "en",
            "email": sender,
            "enrichment": {"url": hook.url, "secret": SECRET},
        },
    )
    assert saved["enrichment"] == {"url": hook.url}
    text = "{{ enrichment.carrier | default('no carrier') }} {{ enrichment.eta | default('-') }}"
    await setup.put(
        f"/v1/templates/{event_type}",
        {
            "channels": {
                "email": {"en": {"subject": "Order via " + text, "text": "ETA " + text}},
                "push": {"en": {"title": "Order via " + text, "body": "{{ group | length }}"}},
            }
        },
    )


async def test_the_webhooks_data_appears_in_the_email_and_the_push(
    setup: Setup, hook: Hook
) -> None:
    await configure(setup, hook, "order.shipped")
    await setup.put(
        "/v1/rules/orders",
        {"event_type": "order.*", "enrichment": {"webhook": True, "on_failure": "fail"}},
    )
    shown = await setup.t.http.get("/v1/settings")
    assert shown.json()["enrichment"] == {"url": hook.url}
    assert SECRET not in shown.text
    # A PUT without `enrichment` (an older client) keeps it.
    kept = await setup.put("/v1/settings", {"default_locale": "en", "email": None})
    assert kept["enrichment"] == {"url": hook.url}
    await setup.put(
        "/v1/settings",
        {
            "default_locale": "en",
            "email": {"provider": "smtp", "sender": "shop@example.com"},
        },
    )

    token = await setup.user("ann")
    event_id = await setup.post("order.shipped", ["ann"], ["email", "apns"])
    await _until(
        lambda: setup.delivery(event_id, "ann", "email"), lambda d: d.get("status") == "sent"
    )
    await _until(
        lambda: setup.delivery(event_id, "ann", "apns"), lambda d: d.get("status") == "sent"
    )

    [mail] = setup.relay.messages
    assert mail["subject"] == "Order via DHL Tuesday"
    [push] = [r for r in setup.apns.received if r["token"] == token]
    assert push["payload"]["aps"]["alert"]["title"] == "Order via DHL Tuesday"

    assert hook.requests
    for headers, body in hook.requests:
        assert wire.verify(
            SECRET, body, headers[wire.SIGNATURE_HEADER.lower()], now=int(time.time())
        )
        assert json.loads(body) == {
            "event_id": event_id,
            "type": "order.shipped",
            "tenant": setup.t.id,
            "recipients": ["ann"],
        }
    # The email and the push shared one answer, unless both asked at the same moment.
    assert len(hook.requests) <= 2

    # Null removes the webhook.
    removed = await setup.put(
        "/v1/settings", {"default_locale": "en", "email": None, "enrichment": None}
    )
    assert removed["enrichment"] is None


async def test_a_webhook_that_times_out_follows_each_rules_policy(setup: Setup, hook: Hook) -> None:
    hook.delay = 3.0
    for policy in ("send", "fail", "retry"):
        await configure(setup, hook, f"slow.{policy}")
        await setup.put(
            f"/v1/rules/{policy}",
            {
                "event_type": f"slow.{policy}",
                "enrichment": {"webhook": True, "on_failure": policy},
            },
        )
    await setup.user("ann")
    events = {
        p: await setup.post(f"slow.{p}", ["ann"], ["email"]) for p in ("send", "fail", "retry")
    }

    await _until(
        lambda: setup.delivery(events["send"], "ann", "email"), lambda d: d.get("status") == "sent"
    )
    [mail] = setup.relay.messages
    assert mail["subject"] == "Order via no carrier -"

    failed = await _until(
        lambda: setup.delivery(events["fail"], "ann", "email"),
        lambda d: d.get("status") == "failed",
    )
    assert failed["error"] == "enrichment failed: timeout"

    retried = await _until(
        lambda: setup.delivery(events["retry"], "ann", "email"),
        lambda d: d.get("error") == "enrichment failed: timeout",
    )
    assert retried["status"] == "pending"
    assert len(setup.relay.messages) == 1
