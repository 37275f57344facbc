"""Helpers for tests that run a real Clarion server in-process."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from clarion import bootstrap
from clarion.emulators.apns import ApnsEmulator
from clarion.entrypoints.server import serve
from clarion.services.ports import Clock
from clarion.settings import ApnsSettings, Settings

APNS_TEAM, APNS_KID, APNS_TOPIC = "TEAM123456", "KEY1234567", "com.example.app"


@dataclass
class Running:
    """A Clarion server running in this process."""

    clarion: bootstrap.Clarion
    base_url: str
    ws_url: str


@contextlib.asynccontextmanager
async def running(settings: Settings, *, clock: Clock | None = None) -> AsyncIterator[Running]:
    """Run API, gateway and worker in-process on an ephemeral port until the block ends, on
    the system clock or on `clock`."""
    await bootstrap.migrate(settings)
    app = bootstrap.build(settings, clock=clock)
    stop = asyncio.Event()
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(app, stop=stop, on_listening=port.set_result))
    try:
        bound = await asyncio.wait_for(port, 10)
        yield Running(app, f"http://127.0.0.1:{bound}", f"ws://127.0.0.1:{bound}/v1/ws")
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


@dataclass
class Tenant:
    """A tenant made for one test, with an HTTP client that carries its API key."""

    id: str
    api_key: str
    http: httpx.AsyncClient


@contextlib.asynccontextmanager
async def tenant_client(srv: Running) -> AsyncIterator[Tenant]:
    """A new tenant on `srv` and a client authenticated as it."""
    created = await srv.clarion.tenancy.create_tenant(f"test-{uuid.uuid4().hex[:8]}")
    async with httpx.AsyncClient(
        base_url=srv.base_url,
        headers={"Authorization": f"Bearer {created.api_key}"},
        timeout=10,
    ) as http:
        yield Tenant(created.tenant_id, created.api_key, http)


class MovableClock:
    """The system clock, plus however far the test has moved it forward."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


def with_apns(settings: Settings, emulator: ApnsEmulator, directory: Path) -> Settings:
    """`settings` with APNs on the (started) emulator, its certificate trusted as the CA."""
    assert emulator.certificate_pem is not None
    ca = directory / "apns-emulator.pem"
    ca.write_bytes(emulator.certificate_pem)
    return settings.model_copy(
        update={
            "apns": ApnsSettings(enabled=True, host="127.0.0.1", port=emulator.port, ca_file=ca)
        }
    )


def apns_key(emulator: ApnsEmulator) -> str:
    """A new P-256 token key, registered with the emulator for APNS_TEAM / APNS_KID; its
    private PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    emulator.register_key(APNS_TEAM, APNS_KID, public.decode())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


async def put_apns_credential(clarion: bootstrap.Clarion, tenant_id: str, pem: str) -> None:
    """The tenant's default APNs credential ("main"): token auth with the key `pem`."""
    await clarion.credentials.put_apns(
        tenant_id,
        "main",
        auth="token",
        topic=APNS_TOPIC,
        environment="sandbox",
        private_key=pem,
        key_id=APNS_KID,
        team_id=APNS_TEAM,
    )


@contextlib.asynccontextmanager
async def apns_tenant(
    settings: Settings, directory: Path, *, clock: Clock | None = None
) -> AsyncIterator[tuple[Running, Tenant, ApnsEmulator]]:
    """A running server with APNs on a fresh emulator (TLS, its certificate trusted), and a
    tenant whose default APNs credential is a new token key the emulator knows."""
    emulator = ApnsEmulator()
    await emulator.start()
    try:
        settings = with_apns(settings, emulator, directory)
        async with running(settings, clock=clock) as srv, tenant_client(srv) as t:
            await put_apns_credential(srv.clarion, t.id, apns_key(emulator))
            yield srv, t, emulator
    finally:
        await emulator.stop()
