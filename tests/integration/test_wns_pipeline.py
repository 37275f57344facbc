"""Events with channel "wns" reach the WNS emulator over real TLS with an access token fetched
with the tenant's Package SID and secret; toasts are recorded sent with WNS's message id, a
dropped notification is recorded as dropped, 410 and 404 retire the channel, 406 waits, a 401
refreshes the token once (one fetch for everyone), and a refused or paused credential sends
nothing more."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from clarion import bootstrap
from clarion.adapters.storage import tables
from clarion.domain.channels import Channel
from clarion.domain.notifications import EventSpec, InboxItem, Recipients
from clarion.domain.outcomes import AuthFailed, Delivered, RetryLater
from clarion.domain.records import Claimed
from clarion.domain.statuses import Status
from clarion.emulators.wns import WnsEmulator
from clarion.settings import Settings, WnsSettings

SID = "ms-app://s-1-15-2-2972962901-2322836549-3722629029-1345238579"
SECRET = "Vex8L9WOFZuj95euaLrvSH7XyoDhLJc7"


@pytest.fixture
async def emulator() -> AsyncIterator[WnsEmulator]:
    emu = WnsEmulator()
    emu.register_app(SID, SECRET)
    await emu.start()
    yield emu
    await emu.stop()


@pytest.fixture
async def app(
    settings: Settings, emulator: WnsEmulator, tmp_path: Path
) -> AsyncIterator[bootstrap.Clarion]:
    assert emulator.certificate_pem is not None
    ca = tmp_path / "wns.pem"
    ca.write_bytes(emulator.certificate_pem)
    configured = settings.model_copy(
        update={
            "wns": WnsSettings(
                enabled=True,
                token_url=emulator.token_url,
                channel_hosts=["127.0.0.1"],
                ca_file=ca,
            )
        }
    )
    await bootstrap.migrate(configured)
    clarion = bootstrap.build(configured)
    yield clarion
    await clarion.close()


def _transport(app: bootstrap.Clarion) -> Any:
    transport = app.transports[Channel.WNS]
    return getattr(transport, "inner", transport)


async def _tenant(app: bootstrap.Clarion, secret: str = SECRET) -> tuple[str, str]:
    tenant = (await app.tenancy.create_tenant("t")).tenant_id
    saved = await app.credentials.put_wns(tenant, "app", package_sid=SID, client_secret=secret)
    return tenant, saved.credential.id


async def _devices(
    app: bootstrap.Clarion, emulator: WnsEmulator, tenant: str, count: int
) -> dict[str, dict[str, Any]]:
    found = {}
    for n in range(count):
        channel = emulator.open_channel(SID)
        await app.devices.register(
            tenant, f"u{n}", provider="wns", token=channel["channel_uri"], app_id=None, keys={}
        )
        found[f"u{n}"] = channel
    return found


async def _send(app: bootstrap.Clarion, tenant: str, users: list[str], title: str | None) -> str:
    accepted = await app.accepting.accept(
        tenant,
        EventSpec(
            type="news",
            recipients=Recipients(users=tuple(users)),
            title=title,
            body="b & <c>" if title else None,
            data={"k": "v"},
            channels=(Channel.WNS,),
        ),
    )
    assert await app.routing.route(accepted.id) is not None
    return accepted.id


async def _deliver_all(app: bootstrap.Clarion) -> None:
    while await app.delivering.deliver_once(Channel.WNS):
        pass


async def _deliveries(app: bootstrap.Clarion, tenant: str) -> list[sa.Row[Any]]:
    async with app.store.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(
                tables.deliveries.c.endpoint,
                tables.deliveries.c.status,
                tables.deliveries.c.reference,
                tables.deliveries.c.error,
            ).where(tables.deliveries.c.tenant_id == tenant, tables.deliveries.c.channel == "wns")
        )
        return list(rows)


async def _retired(app: bootstrap.Clarion, tenant: str) -> set[str]:
    async with app.store.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(tables.devices.c.token).where(
                tables.devices.c.tenant_id == tenant, tables.devices.c.status == "retired"
            )
        )
        return {r.token for r in rows}


async def test_a_toast_is_delivered_and_recorded_with_the_wns_message_id(
    app: bootstrap.Clarion, emulator: WnsEmulator
) -> None:
    tenant, _ = await _tenant(app)
    devices = await _devices(app, emulator, tenant, 3)
    await _send(app, tenant, list(devices), "héllo")
    await _deliver_all(app)
    assert len(emulator.received) == 3
    first = emulator.received[0]
    assert first["type"] == "wns/toast"
    assert "<text>héllo</text><text>b &amp; &lt;c&gt;</text>" in first["payload"]
    assert first["headers"]["x-wns-requestforstatus"] == "true"
    rows = await _deliveries(app, tenant)
    assert [r.status for r in rows] == [str(Status.SENT)] * 3
    assert {r.reference for r in rows} == {r["msg_id"] for r in emulator.received}
    assert len(emulator.token_requests) == 1  # one token for the whole batch


async def test_an_item_without_title_or_body_goes_raw(
    app: bootstrap.Clarion, emulator: WnsEmulator
) -> None:
    tenant, _ = await _tenant(app)
    await _devices(app, emulator, tenant, 1)
    await _send(app, tenant, ["u0"], None)
    await _deliver_all(app)
    [raw] = emulator.received
    assert raw["type"] == "wns/raw"
    assert '"data":{"k":"v"}' in raw["payload"]


async def test_dropped_is_recorded_as_dropped_and_410_and_404_retire_the_channel(
    app: bootstrap.Clarion, emulator: WnsEmulator
) -> None:
    tenant, _ = await _tenant(app)
    devices = await _devices(app, emulator, tenant, 4)
    emulator.script(200, wns_status="dropped", channel=devices["u0"]["id"])
    emulator.expire_channel(devices["u1"]["id"], 410)
    emulator.expire_channel(devices["u2"]["id"], 404)
    await _send(app, tenant, list(devices), "t")
    await _deliver_all(app)
    rows = {r.endpoint: r for r in await _deliveries(app, tenant)}
    by_user: dict[str, Any] = {}
    async with app.store.engine.connect() as conn:
        for row in await conn.execute(sa.select(tables.devices.c.id, tables.devices.c.token)):
            for user, channel in devices.items():
                if channel["channel_uri"] == row.token:
                    by_user[user] = rows[str(row.id)]
    assert by_user["u0"].status == str(Status.FAILED)
    assert by_user["u0"].error == "dropped (device connected)"
    assert by_user["u1"].error.startswith("HTTP 410")
    assert by_user["u2"].error.startswith("HTTP 404")
    assert by_user["u3"].status == str(Status.SENT)
    retired = await _retired(app, tenant)
    assert retired == {devices["u1"]["channel_uri"], devices["u2"]["channel_uri"]}


async def test_406_throttling_waits_for_continue_after(
    app: bootstrap.Clarion, emulator: WnsEmulator
) -> None:
    tenant, _ = await _tenant(app)
    await _devices(app, emulator, tenant, 1)
    emulator.script(406, description="throttled", continue_after=90)
    await _send(app, tenant, ["u0"], "t")
    await _deliver_all(app)
    [row] = await _deliveries(app, tenant)
    assert (row.status, row.error) == (str(Status.PENDING), "HTTP 406: throttled")
    assert await _retired(app, tenant) == set()


# --- the transport alone, on the emulator ----------------------------------------------------


def _claimed(n: int, channel: dict[str, Any], tenant: str) -> Claimed:
    item = InboxItem(
        id=n,
        notification_id=f"n{n}",
        event_id="e",
        user="u",
        status=Status.PENDING,
        type="news",
        title="hi",
        body=None,
        data={},
        category=None,
        group=None,
        created_at=dt.datetime.now(dt.UTC),
    )
    return Claimed(
        id=n,
        fence=1,
        tenant_id=tenant,
        channel="wns",
        endpoint=str(n),
        attempts=1,
        item=item,
        address=channel["channel_uri"],
    )


async def test_a_401_refreshes_the_token_once_for_everyone_then_resends(
    app: bootstrap.Clarion, emulator: WnsEmulator
) -> None:
    tenant, _ = await _tenant(app)
    channels = [emulator.open_channel(SID) for _ in range(20)]
    transport = _transport(app)
    first = await transport.send([_claimed(0, channels[0], tenant)])
    assert isinstance(first[0], Delivered)
    emulator.expire_tokens()
    outcomes = await transport.send([_claimed(n, c, tenant) for n, c in enumerate(channels)])
    assert all(isinstance(o, Delivered) for o in outcomes)
    assert len(emulator.token_requests) == 2  # the first token, then one refresh for all 20
    assert [a["status"] for a in emulator.attempts].count(401) == 20


async def test_a_refused_secret_names_its_credential_and_a_paused_one_sends_nothing(
    app: bootstrap.Clarion, emulator: WnsEmulator
) -> None:
    tenant, credential_id = await _tenant(app, secret="wrong-secret")
    channel = emulator.open_channel(SID)
    transport = _transport(app)
    [refused] = await transport.send([_claimed(1, channel, tenant)])
    assert isinstance(refused, AuthFailed)
    assert refused.credential_id == credential_id
    assert "invalid_client" in refused.reason
    await app.credentials.pause(tenant, credential_id, refused.reason)
    before = (len(emulator.token_requests), len(emulator.attempts))
    [held] = await transport.send([_claimed(2, channel, tenant)])
    assert isinstance(held, RetryLater)
    assert "paused" in held.reason
    assert (len(emulator.token_requests), len(emulator.attempts)) == before
    await app.credentials.put_wns(tenant, "app", package_sid=SID, client_secret=SECRET)
    [sent] = await transport.send([_claimed(3, channel, tenant)])
    assert isinstance(sent, Delivered)


async def test_a_second_401_with_a_fresh_token_is_auth_failed(
    app: bootstrap.Clarion, emulator: WnsEmulator
) -> None:
    tenant, credential_id = await _tenant(app)
    channel = emulator.open_channel(SID)
    emulator.script(401, description="Invalid token", count=2)
    [outcome] = await _transport(app).send([_claimed(1, channel, tenant)])
    assert isinstance(outcome, AuthFailed)
    assert outcome.credential_id == credential_id
    assert "freshly fetched" in outcome.reason


async def test_a_channel_uri_outside_notify_windows_com_is_never_called(
    app: bootstrap.Clarion, emulator: WnsEmulator
) -> None:
    tenant, _ = await _tenant(app)
    channel = emulator.open_channel(SID)
    elsewhere = {"channel_uri": channel["channel_uri"].replace("127.0.0.1", "localhost")}
    [outcome] = await _transport(app).send([_claimed(1, elsewhere, tenant)])
    assert type(outcome).__name__ == "Rejected"
    assert "notify.windows.com" in outcome.reason
    await asyncio.sleep(0)
    assert emulator.attempts == []
