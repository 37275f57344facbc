"""The APNs issue's done-scenarios at full size, through a running Clarion (HTTP API, relay,
router, delivery worker) and the APNs emulator over TLS:

- an event to 1,000 users whose devices include 100 tokens the emulator knows as dead: 900
  `sent`, 100 `failed` with `Unregistered`, those devices retired, and a second event makes no
  request for them;
- a 60-second `503` storm delays but loses nothing, with the backoff visible in the emulator's
  timestamps (real retry constants: this test takes one to two minutes).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from clarion.adapters.storage import tables
from clarion.emulators.apns import ApnsEmulator
from clarion.settings import ApnsSettings, Settings
from tests.support import Running, Tenant, running, tenant_client

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


def with_apns(settings: Settings, emulator: ApnsEmulator, tmp_path: Path) -> Settings:
    assert emulator.certificate_pem is not None
    ca = tmp_path / "emulator.pem"
    ca.write_bytes(emulator.certificate_pem)
    return settings.model_copy(
        update={
            "apns": ApnsSettings(enabled=True, host="127.0.0.1", port=emulator.port, ca_file=ca)
        }
    )


async def put_credential(tenant: Tenant, emulator: ApnsEmulator) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    emulator.register_key(TEAM, KID, public)
    answer = await tenant.http.put(
        "/v1/credentials/apns/main",
        json={
            "auth": "token",
            "key_id": KID,
            "team_id": TEAM,
            "topic": TOPIC,
            "environment": "sandbox",
            "private_key": pem,
        },
    )
    assert answer.status_code in (200, 201), answer.text


async def register_devices(srv: Running, tenant: Tenant, count: int) -> list[str]:
    users = [f"user-{n}" for n in range(count)]
    for n, user in enumerate(users):
        await srv.clarion.devices.register(
            tenant.id, user, provider="apns", token=token_of(n), app_id=None, keys={}
        )
    return users


async def post_event(tenant: Tenant, users: list[str], title: str) -> str:
    answer = await tenant.http.post(
        "/v1/events",
        json={
            "type": "order.shipped",
            "recipients": {"users": users},
            "title": title,
            "body": "Your parcel is on its way",
            "channels": ["apns"],
        },
    )
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


async def until_settled(tenant: Tenant, event_id: str, *, timeout: float) -> dict[str, Any]:
    """The event's report once it is routed and none of its APNs deliveries is pending."""
    deadline = time.monotonic() + timeout
    report: dict[str, Any] = {}
    while time.monotonic() < deadline:
        answer = await tenant.http.get(f"/v1/events/{event_id}")
        assert answer.status_code == 200, answer.text
        report = answer.json()
        apns = report["channels"].get("apns")
        if report["routed_at"] and apns and not apns["by_status"].get("pending"):
            return report
        await asyncio.sleep(0.25)
    raise AssertionError(f"event {event_id} did not settle in {timeout} s: {report}")


def counts(report: dict[str, Any]) -> dict[str, int]:
    """The event's APNs delivery counts that are not zero."""
    return {k: v for k, v in report["channels"]["apns"]["by_status"].items() if v}


async def deliveries_of(srv: Running, event_id: str) -> list[Any]:
    d, items = tables.deliveries, tables.inbox_items
    async with srv.clarion.store.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(d.c.status, d.c.error, d.c.reference, tables.devices.c.token)
            .join(items, items.c.id == d.c.item_id)
            .join(tables.notifications, tables.notifications.c.id == items.c.notification_id)
            .join(tables.devices, tables.devices.c.id == sa.cast(d.c.endpoint, sa.Integer))
            .where(tables.notifications.c.event_id == event_id, d.c.channel == "apns")
        )
        return list(rows)


async def test_a_thousand_users_with_a_hundred_dead_tokens(
    settings: Settings, emulator: ApnsEmulator, tmp_path: Path
) -> None:
    dead = {token_of(n) for n in range(5, 1000, 10)}
    async with running(with_apns(settings, emulator, tmp_path)) as srv, tenant_client(srv) as t:
        await put_credential(t, emulator)
        users = await register_devices(srv, t, 1000)
        await asyncio.sleep(0.01)
        for token in dead:
            # As APNs does: 410 with the millisecond time the token stopped being valid, which
            # is after the app last registered it (else the token would be kept).
            emulator.script(410, "Unregistered", token=token, timestamp_ms=int(time.time() * 1000))

        first = await post_event(t, users, "first")
        report = await until_settled(t, first, timeout=120)
        assert counts(report) == {"sent": 900, "failed": 100}
        rows = await deliveries_of(srv, first)
        failed = [r for r in rows if r.status == "failed"]
        assert {r.token for r in failed} == dead
        assert {r.error for r in failed} == {"Unregistered"}
        sent = [r for r in rows if r.status == "sent"]
        assert {r.reference for r in sent} == {p["apns_id"] for p in emulator.received}
        async with srv.clarion.store.engine.connect() as conn:
            retired = await conn.execute(
                sa.select(tables.devices.c.token).where(
                    tables.devices.c.tenant_id == t.id, tables.devices.c.status == "retired"
                )
            )
            assert {r.token for r in retired} == dead

        emulator.reset()
        second = await post_event(t, users, "second")
        report = await until_settled(t, second, timeout=120)
        assert counts(report) == {"sent": 900}
        assert not [a for a in emulator.attempts if a["token"] in dead]
        assert len(emulator.attempts) == 900
        assert {p["token"] for p in emulator.received} == {token_of(n) for n in range(1000)} - dead


STORM_SECONDS = 60.0


@pytest.mark.slow
@pytest.mark.timeout(360)
async def test_a_sixty_second_503_storm_delays_but_loses_nothing(
    sqlite_settings: Settings, emulator: ApnsEmulator, tmp_path: Path
) -> None:
    count = 200
    async with (
        running(with_apns(sqlite_settings, emulator, tmp_path)) as srv,
        tenant_client(srv) as t,
    ):
        await put_credential(t, emulator)
        users = await register_devices(srv, t, count)
        storm = emulator.script(503, "ServiceUnavailable", seconds=STORM_SECONDS)
        storm_ends = storm.until
        assert storm_ends is not None
        event = await post_event(t, users, "through the storm")
        report = await until_settled(t, event, timeout=STORM_SECONDS + 150)

    # Nothing lost: every recipient's push went out once the storm was over.
    assert counts(report) == {"sent": count}
    assert {p["token"] for p in emulator.received} == {token_of(n) for n in range(count)}

    by_token: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for attempt in emulator.attempts:
        by_token[attempt["token"]].append((attempt["time"], attempt["status"]))
    assert len(by_token) == count
    for token, attempts in by_token.items():
        times = [at for at, _ in sorted(attempts)]
        statuses = [status for _, status in sorted(attempts)]
        # Refused while the storm lasted, accepted after it: once, and only at the end.
        assert statuses[-1] == 200, token
        assert set(statuses[:-1]) == {503}, token
        assert times[-1] >= storm_ends - 0.05, token
        # Backoff: each wait at least as long as the one before (jitter keeps them within
        # [1/2, 1] of the doubling schedule, so consecutive waits never shrink beyond scheduling
        # noise), and a minute of refusals takes at most a handful of tries, not a busy loop.
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(later >= earlier - 0.75 for earlier, later in itertools.pairwise(gaps)), (
            token,
            gaps,
        )
        assert 4 <= len(statuses) <= 9, (token, statuses)
        assert gaps[-1] >= 8, (token, gaps)


async def test_a_refused_key_pauses_its_credential_until_it_is_replaced(
    settings: Settings, emulator: ApnsEmulator, tmp_path: Path
) -> None:
    async with running(with_apns(settings, emulator, tmp_path)) as srv, tenant_client(srv) as t:
        # A key the emulator never heard of: APNs answers 403 InvalidProviderToken.
        stranger = ec.generate_private_key(ec.SECP256R1())
        answer = await t.http.put(
            "/v1/credentials/apns/main",
            json={
                "auth": "token",
                "key_id": KID,
                "team_id": TEAM,
                "topic": TOPIC,
                "environment": "sandbox",
                "private_key": stranger.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ).decode(),
            },
        )
        assert answer.status_code in (200, 201), answer.text
        users = await register_devices(srv, t, 20)
        event = await post_event(t, users, "refused")
        deadline = time.monotonic() + 30
        described: dict[str, Any] = {}
        while time.monotonic() < deadline:
            described = (await t.http.get("/v1/credentials/apns/main")).json()
            if described.get("status") == "paused":
                break
            await asyncio.sleep(0.1)
        assert described["status"] == "paused", described
        assert "InvalidProviderToken" in described["paused_reason"]
        # Paused: nothing more goes to APNs with that key, however long the deliveries wait.
        refused = len(emulator.attempts)
        assert 1 <= refused <= 20
        assert {a["reason"] for a in emulator.attempts} == {"InvalidProviderToken"}
        await asyncio.sleep(1.5)
        report = (await t.http.get(f"/v1/events/{event}")).json()
        assert counts(report) == {"pending": 20}
        assert len(emulator.attempts) == refused

        # The tenant replaces the key: the credential is active again and the deliveries go
        # out when their retry comes due (bring it forward rather than wait for the backoff).
        await put_credential(t, emulator)
        described = (await t.http.get("/v1/credentials/apns/main")).json()
        assert described["status"] == "active"
        async with srv.clarion.store.engine.begin() as conn:
            await conn.execute(
                tables.deliveries.update()
                .where(tables.deliveries.c.tenant_id == t.id)
                .values(next_attempt_at=datetime.now(UTC) - timedelta(seconds=1))
            )
        report = await until_settled(t, event, timeout=60)
        assert counts(report) == {"sent": 20}
