"""One push channel, four providers: a user with an iPhone, an Android phone, a Windows laptop and
a browser subscription hears of one event on all four, through a running Clarion (HTTP API,
relay, router, delivery workers) and the four emulators over TLS; each delivery row carries its
provider's message id, or its error."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from clarion.adapters.storage import tables
from clarion.emulators.apns import ApnsEmulator
from clarion.emulators.fcm import FcmEmulator
from clarion.emulators.webpush import WebPushEmulator
from clarion.emulators.wns import WnsEmulator
from clarion.settings import ApnsSettings, FcmSettings, Settings, WebPushSettings, WnsSettings
from tests.support import Running, Tenant, running, tenant_client

TEAM, KID, TOPIC = "TEAM123456", "KEY1234567", "com.example.app"
SID = "ms-app://s-1-15-2-2972962901-2322836549-3722629029-1345238579"
WNS_SECRET = "Vex8L9WOFZuj95euaLrvSH7XyoDhLJc7"


@dataclass
class Providers:
    apns: ApnsEmulator
    fcm: FcmEmulator
    wns: WnsEmulator
    webpush: WebPushEmulator


@pytest.fixture
async def providers() -> AsyncIterator[Providers]:
    found = Providers(ApnsEmulator(), FcmEmulator(tls=True), WnsEmulator(), WebPushEmulator())
    found.wns.register_app(SID, WNS_SECRET)
    for emulator in (found.apns, found.fcm, found.wns, found.webpush):
        await emulator.start()
    yield found
    for emulator in (found.apns, found.fcm, found.wns, found.webpush):
        await emulator.stop()


def configured(settings: Settings, providers: Providers, tmp_path: Path) -> Settings:
    def trust(name: str, pem: bytes | None) -> Path:
        assert pem is not None
        path = tmp_path / f"{name}.pem"
        path.write_bytes(pem)
        return path

    return settings.model_copy(
        update={
            "apns": ApnsSettings(
                enabled=True,
                host="127.0.0.1",
                port=providers.apns.port,
                ca_file=trust("apns", providers.apns.certificate_pem),
            ),
            "fcm": FcmSettings(
                enabled=True,
                base_url=providers.fcm.base_url,
                token_url=providers.fcm.token_url,
                ca_file=trust("fcm", providers.fcm.certificate_pem),
            ),
            "wns": WnsSettings(
                enabled=True,
                token_url=providers.wns.token_url,
                channel_hosts=["127.0.0.1"],
                ca_file=trust("wns", providers.wns.certificate_pem),
            ),
            "webpush": WebPushSettings(
                enabled=True,
                allowed_networks=["127.0.0.1/32"],
                ca_file=trust("webpush", providers.webpush.certificate_pem),
            ),
        }
    )


async def put_credentials(srv: Running, tenant: Tenant, providers: Providers) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    providers.apns.register_key(
        TEAM,
        KID,
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode(),
    )
    credentials = {
        "apns": {
            "auth": "token",
            "key_id": KID,
            "team_id": TEAM,
            "topic": TOPIC,
            "environment": "sandbox",
            "private_key": key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode(),
        },
        "fcm": {
            "service_account": providers.fcm.create_service_account(
                f"clarion-{secrets.token_hex(4)}", token_uri="https://oauth2.googleapis.com/token"
            )
        },
        "wns": {"package_sid": SID, "client_secret": WNS_SECRET},
        "webpush": {"subject": "mailto:ops@example.com"},
    }
    for provider, body in credentials.items():
        answer = await tenant.http.put(f"/v1/credentials/{provider}/main", json=body)
        assert answer.status_code in (200, 201), (provider, answer.text)


async def register_devices(srv: Running, tenant: Tenant, providers: Providers, user: str) -> None:
    subscription = providers.webpush.subscribe()
    devices: list[tuple[str, str, dict[str, Any]]] = [
        ("apns", secrets.token_hex(32), {}),
        ("fcm", f"{secrets.token_urlsafe(11)}:APA91b{secrets.token_urlsafe(100)}", {}),
        ("wns", providers.wns.open_channel(SID)["channel_uri"], {}),
        ("webpush", subscription["endpoint"], subscription["keys"]),
    ]
    for provider, token, keys in devices:
        await srv.clarion.devices.register(
            tenant.id, user, provider=provider, token=token, app_id=None, keys=keys
        )


async def settled(tenant: Tenant, event_id: str, *, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    report: dict[str, Any] = {}
    while time.monotonic() < deadline:
        report = (await tenant.http.get(f"/v1/events/{event_id}")).json()
        push = {k: v for k, v in report["channels"].items() if k != "websocket"}
        if len(push) == 4 and not any(c["by_status"].get("pending") for c in push.values()):
            return report
        await asyncio.sleep(0.2)
    raise AssertionError(f"not settled: {report}")


async def deliveries(srv: Running, tenant: Tenant) -> dict[str, Any]:
    d = tables.deliveries
    async with srv.clarion.store.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(d.c.channel, d.c.status, d.c.reference, d.c.error).where(
                d.c.tenant_id == tenant.id, d.c.channel != "websocket"
            )
        )
        return {r.channel: r for r in rows}


@pytest.mark.parametrize("named", [["push"], ["apns", "fcm", "wns", "webpush"]])
async def test_one_event_reaches_a_users_four_push_devices(
    settings: Settings, providers: Providers, tmp_path: Path, named: list[str]
) -> None:
    async with (
        running(configured(settings, providers, tmp_path)) as srv,
        tenant_client(srv) as tenant,
    ):
        await put_credentials(srv, tenant, providers)
        await register_devices(srv, tenant, providers, "ada")
        answer = await tenant.http.post(
            "/v1/events",
            json={
                "type": "order.shipped",
                "recipients": {"users": ["ada"]},
                "title": "Shipped",
                "body": "Your order is on its way",
                "channels": named,
            },
        )
        assert answer.status_code == 202, answer.text
        report = await settled(tenant, answer.json()["id"])
        rows = await deliveries(srv, tenant)

    for channel in ("apns", "fcm", "wns", "webpush"):
        assert report["channels"][channel]["by_status"]["sent"] == 1, (report["channels"], rows)
    assert set(rows) == {"apns", "fcm", "wns", "webpush"}
    assert all(r.status == "sent" and r.reference for r in rows.values()), rows
    # Each reference is the id the provider gave that message.
    assert rows["apns"].reference == providers.apns.received[0]["apns_id"]
    assert rows["fcm"].reference.endswith(providers.fcm.received[0]["name"].rsplit("/", 1)[-1])
    assert len(providers.wns.received) == 1
    [message] = providers.webpush.messages
    assert "Shipped" in message["payload"]


async def test_a_provider_error_is_recorded_on_its_own_delivery(
    sqlite_settings: Settings, providers: Providers, tmp_path: Path
) -> None:
    async with (
        running(configured(sqlite_settings, providers, tmp_path)) as srv,
        tenant_client(srv) as tenant,
    ):
        await put_credentials(srv, tenant, providers)
        await register_devices(srv, tenant, providers, "bo")
        providers.apns.script(400, "BadTopic")
        answer = await tenant.http.post(
            "/v1/events",
            json={
                "type": "news",
                "recipients": {"users": ["bo"]},
                "title": "Hi",
                "channels": ["push"],
            },
        )
        assert answer.status_code == 202, answer.text
        await settled(tenant, answer.json()["id"])
        rows = await deliveries(srv, tenant)
    assert rows["apns"].status == "failed"
    assert rows["apns"].error == "BadTopic"
    assert {rows[c].status for c in ("fcm", "wns", "webpush")} == {"sent"}


async def test_push_without_any_push_transport_is_an_unknown_channel(
    sqlite_settings: Settings,
) -> None:
    async with running(sqlite_settings) as srv, tenant_client(srv) as tenant:
        answer = await tenant.http.post(
            "/v1/events",
            json={"type": "news", "recipients": {"users": ["x"]}, "channels": ["push"]},
        )
    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == "unknown_channel"
