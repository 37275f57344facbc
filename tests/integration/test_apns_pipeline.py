"""Events with channel "apns" reach the APNs emulator over real TLS, and what it answers lands in
the registry: sent with the apns-id, dead tokens retired, outages retried without loss."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from clarion import bootstrap
from clarion.adapters.storage import tables
from clarion.domain import retrying
from clarion.domain.channels import Channel
from clarion.domain.notifications import EventSpec, Recipients
from clarion.domain.statuses import Status
from clarion.emulators.apns import ApnsEmulator
from clarion.settings import ApnsSettings, Settings

TEAM = "TEAM123456"
KID = "KEY1234567"
TOPIC = "com.example.app"


def token_of(n: int) -> str:
    return f"{n:064x}"


@pytest.fixture
async def emulator() -> AsyncIterator[ApnsEmulator]:
    emu = ApnsEmulator()
    await emu.start()
    yield emu
    await emu.stop()


@pytest.fixture
async def app(
    settings: Settings, emulator: ApnsEmulator, tmp_path: Path
) -> AsyncIterator[bootstrap.Clarion]:
    assert emulator.certificate_pem is not None
    ca = tmp_path / "emulator.pem"
    ca.write_bytes(emulator.certificate_pem)
    configured = settings.model_copy(
        update={
            "apns": ApnsSettings(enabled=True, host="127.0.0.1", port=emulator.port, ca_file=ca)
        }
    )
    await bootstrap.migrate(configured)
    clarion = bootstrap.build(configured)
    yield clarion
    await clarion.close()


async def _tenant_with_credential(app: bootstrap.Clarion, emulator: ApnsEmulator) -> str:
    tenant = (await app.tenancy.create_tenant("t")).tenant_id
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    emulator.register_key(TEAM, KID, public)
    await app.credentials.put_apns(
        tenant,
        "main",
        auth="token",
        topic=TOPIC,
        environment="sandbox",
        private_key=pem,
        key_id=KID,
        team_id=TEAM,
    )
    return tenant


async def _users_with_devices(app: bootstrap.Clarion, tenant: str, count: int) -> list[str]:
    users = [f"u{n}" for n in range(count)]
    for n, user in enumerate(users):
        await app.devices.register(
            tenant, user, provider="apns", token=token_of(n), app_id=None, keys={}
        )
    return users


async def _send(app: bootstrap.Clarion, tenant: str, users: list[str], title: str) -> str:
    accepted = await app.accepting.accept(
        tenant,
        EventSpec(
            type="news",
            recipients=Recipients(users=tuple(users)),
            title=title,
            body="b",
            data={"k": "v"},
            group="g1",
            channels=(Channel.APNS,),
        ),
    )
    assert await app.routing.route(accepted.id) is not None
    return accepted.id


async def _deliver_all(app: bootstrap.Clarion, *, settle: float = 0.0) -> None:
    while await app.delivering.deliver_once(Channel.APNS):
        pass
    if settle:
        await asyncio.sleep(settle)


async def _apns_deliveries(app: bootstrap.Clarion, tenant: str) -> list[sa.Row]:
    async with app.store.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(
                tables.deliveries.c.endpoint,
                tables.deliveries.c.status,
                tables.deliveries.c.reference,
                tables.deliveries.c.error,
            ).where(
                tables.deliveries.c.tenant_id == tenant,
                tables.deliveries.c.channel == "apns",
            )
        )
        return list(rows)


async def test_an_apns_event_is_sent_and_recorded_with_its_apns_id(
    app: bootstrap.Clarion, emulator: ApnsEmulator
) -> None:
    tenant = await _tenant_with_credential(app, emulator)
    users = await _users_with_devices(app, tenant, 3)
    await _send(app, tenant, users, "hello")
    await _deliver_all(app)
    assert sorted(r["token"] for r in emulator.received) == [token_of(n) for n in range(3)]
    first = emulator.received[0]
    assert first["topic"] == TOPIC
    assert first["payload"] == {
        "aps": {"alert": {"title": "hello", "body": "b"}, "thread-id": "g1"},
        "k": "v",
    }
    rows = await _apns_deliveries(app, tenant)
    assert [r.status for r in rows] == [str(Status.SENT)] * 3
    assert sorted(r.reference for r in rows) == sorted(r["apns_id"] for r in emulator.received)


async def test_dead_tokens_fail_are_retired_and_are_never_tried_again(
    app: bootstrap.Clarion, emulator: ApnsEmulator
) -> None:
    tenant = await _tenant_with_credential(app, emulator)
    users = await _users_with_devices(app, tenant, 100)
    dead = {token_of(n) for n in range(0, 100, 10)}
    for token in dead:
        emulator.script(410, "Unregistered", token=token)
    await _send(app, tenant, users, "first")
    await _deliver_all(app)
    rows = await _apns_deliveries(app, tenant)
    assert sum(r.status == str(Status.SENT) for r in rows) == 90
    failed = [r for r in rows if r.status == str(Status.FAILED)]
    assert len(failed) == 10
    assert {r.error for r in failed} == {"Unregistered"}
    async with app.store.engine.connect() as conn:
        retired = await conn.execute(
            sa.select(tables.devices.c.token).where(
                tables.devices.c.tenant_id == tenant, tables.devices.c.status == "retired"
            )
        )
        assert {r.token for r in retired} == dead
    emulator.reset()
    await _send(app, tenant, users, "second")
    await _deliver_all(app)
    assert not [a for a in emulator.attempts if a["token"] in dead]
    assert len(emulator.received) == 90


async def test_a_503_window_delays_deliveries_but_loses_none(
    app: bootstrap.Clarion, emulator: ApnsEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retrying, "BASE_DELAY_SECONDS", 0.2)
    monkeypatch.setattr(retrying, "MAX_DELAY_SECONDS", 0.5)
    tenant = await _tenant_with_credential(app, emulator)
    users = await _users_with_devices(app, tenant, 20)
    emulator.script(503, "ServiceUnavailable", seconds=2)
    await _send(app, tenant, users, "during an outage")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        await _deliver_all(app, settle=0.1)
        rows = await _apns_deliveries(app, tenant)
        if all(r.status == str(Status.SENT) for r in rows):
            break
    assert [r.status for r in rows] == [str(Status.SENT)] * 20
    assert any(a["status"] == 503 for a in emulator.attempts)
    assert sorted({r["token"] for r in emulator.received}) == [token_of(n) for n in range(20)]


async def test_the_stream_limit_grows_after_the_first_answer(
    app: bootstrap.Clarion, emulator: ApnsEmulator
) -> None:
    tenant = await _tenant_with_credential(app, emulator)
    users = await _users_with_devices(app, tenant, 50)
    emulator.latency_ms = 300
    await _send(app, tenant, users, "fan out")
    started = time.monotonic()
    await _deliver_all(app)
    elapsed = time.monotonic() - started
    times = sorted(a["time"] for a in emulator.attempts)
    assert len(times) == 50
    # The first request goes alone (one stream until a valid token was seen) ...
    assert times[1] - times[0] >= 0.25
    # ... then the other 49 together: nowhere near 49 x 300 ms.
    assert elapsed < 3
    [connection] = emulator.connections()
    assert connection["max_concurrent_streams"] == 1000
    transport = app.transports[Channel.APNS]
    peak = max(c.peak_streams for c in transport.connections())  # type: ignore[attr-defined]
    assert peak > 1
