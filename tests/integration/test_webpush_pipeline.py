"""Events with channel "webpush" reach the Web Push emulator over real TLS, encrypted for each
subscription and signed with the tenant's VAPID key; the emulator decrypts them, and what it
answers lands in the registry: sent with the message's Location, 404/410 retire the
subscription, 429 waits for Retry-After, a refused key is named, a paused one sends nothing, and
an endpoint that resolves to a loopback address is never called unless the operator allows it
(checked at send time, on the addresses the name resolves to: see test names)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from clarion import bootstrap
from clarion.adapters.providers.webpush import WebPushTransport
from clarion.adapters.storage import tables
from clarion.domain.channels import Channel
from clarion.domain.notifications import EventSpec, InboxItem, Recipients
from clarion.domain.outcomes import AuthFailed, Delivered, Rejected, RetryLater
from clarion.domain.records import Claimed, Credential
from clarion.domain.statuses import Status
from clarion.emulators.webpush import WebPushEmulator
from clarion.settings import Settings, WebPushSettings
from clarion.wire.webhooks import parse_networks

SUBJECT = "mailto:ops@example.com"


@pytest.fixture
async def emulator() -> AsyncIterator[WebPushEmulator]:
    emu = WebPushEmulator()
    await emu.start()
    yield emu
    await emu.stop()


@pytest.fixture
def ca_file(emulator: WebPushEmulator, tmp_path: Path) -> Path:
    assert emulator.certificate_pem is not None
    path = tmp_path / "webpush-emulator.pem"
    path.write_bytes(emulator.certificate_pem)
    return path


async def _app(settings: Settings, ca_file: Path, *, allowed: list[str]) -> bootstrap.Clarion:
    configured = settings.model_copy(
        update={"webpush": WebPushSettings(enabled=True, allowed_networks=allowed, ca_file=ca_file)}
    )
    await bootstrap.migrate(configured)
    return bootstrap.build(configured)


@pytest.fixture
async def app(settings: Settings, ca_file: Path) -> AsyncIterator[bootstrap.Clarion]:
    clarion = await _app(settings, ca_file, allowed=["127.0.0.1/32"])
    yield clarion
    await clarion.close()


async def _tenant(app: bootstrap.Clarion) -> tuple[str, str]:
    tenant = (await app.tenancy.create_tenant("t")).tenant_id
    saved = await app.credentials.put_webpush(tenant, "site", subject=SUBJECT)
    return tenant, saved.credential.id


async def _subscribers(
    app: bootstrap.Clarion, emulator: WebPushEmulator, tenant: str, count: int
) -> dict[str, dict[str, Any]]:
    found = {}
    for n in range(count):
        subscription = emulator.subscribe()
        await app.devices.register(
            tenant,
            f"u{n}",
            provider="webpush",
            token=subscription["endpoint"],
            app_id=None,
            keys=subscription["keys"],
        )
        found[f"u{n}"] = subscription
    return found


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
            channels=(Channel.WEBPUSH,),
        ),
    )
    assert await app.routing.route(accepted.id) is not None
    return accepted.id


async def _deliver_all(app: bootstrap.Clarion) -> None:
    while await app.delivering.deliver_once(Channel.WEBPUSH):
        pass


async def _deliveries(app: bootstrap.Clarion, tenant: str) -> list[sa.Row[Any]]:
    async with app.store.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(
                tables.deliveries.c.endpoint,
                tables.deliveries.c.status,
                tables.deliveries.c.reference,
                tables.deliveries.c.error,
                tables.deliveries.c.next_attempt_at,
            ).where(
                tables.deliveries.c.tenant_id == tenant,
                tables.deliveries.c.channel == "webpush",
            )
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


async def test_a_subscription_receives_the_notification_decrypted_as_sent(
    app: bootstrap.Clarion, emulator: WebPushEmulator
) -> None:
    tenant, _ = await _tenant(app)
    subscribers = await _subscribers(app, emulator, tenant, 3)
    event = await _send(app, tenant, list(subscribers), "héllo")
    await _deliver_all(app)
    assert len(emulator.messages) == 3
    by_endpoint = {m["endpoint"]: m for m in emulator.messages}
    assert set(by_endpoint) == {s["endpoint"] for s in subscribers.values()}
    notification = (await app.reporting.event(tenant, event)).notification_id
    for message in emulator.messages:
        assert message["json"] == {
            "id": notification,
            "type": "news",
            "title": "héllo",
            "body": "b",
            "group": "g1",
            "data": {"k": "v"},
        }
        assert message["ttl"] == 2_419_200
        assert message["vapid"]["sub"] == SUBJECT
    # One VAPID token for the origin, reused for every message.
    assert len({m["vapid"]["exp"] for m in emulator.messages}) == 1
    rows = await _deliveries(app, tenant)
    assert [r.status for r in rows] == [str(Status.SENT)] * 3
    locations = {f"{emulator.origin}/m/{m['id']}" for m in emulator.messages}
    assert {r.reference for r in rows} == locations


@pytest.mark.parametrize("status", [404, 410])
async def test_an_expired_or_unsubscribed_subscription_is_retired(
    app: bootstrap.Clarion, emulator: WebPushEmulator, status: int
) -> None:
    tenant, _ = await _tenant(app)
    subscribers = await _subscribers(app, emulator, tenant, 4)
    gone = subscribers["u1"]
    emulator.unsubscribe(gone["endpoint"].rsplit("/", 1)[1], status)
    await _send(app, tenant, list(subscribers), "first")
    await _deliver_all(app)
    assert await _retired(app, tenant) == {gone["endpoint"]}
    rows = await _deliveries(app, tenant)
    assert sorted(r.status for r in rows) == [str(Status.FAILED)] + [str(Status.SENT)] * 3
    emulator.reset()
    await _send(app, tenant, list(subscribers), "second")
    await _deliver_all(app)
    assert len(emulator.messages) == 3
    assert all(a["subscription"] != gone["endpoint"].rsplit("/", 1)[1] for a in emulator.attempts)


async def test_429_waits_for_retry_after_and_413_fails_without_retiring(
    app: bootstrap.Clarion, emulator: WebPushEmulator
) -> None:
    tenant, _ = await _tenant(app)
    subscribers = await _subscribers(app, emulator, tenant, 2)
    slow, big = (s["endpoint"].rsplit("/", 1)[1] for s in subscribers.values())
    emulator.script(429, "slow down", subscription=slow, retry_after="120")
    emulator.script(413, "too big", subscription=big)
    before = dt.datetime.now(dt.UTC)
    await _send(app, tenant, list(subscribers), "t")
    await _deliver_all(app)
    rows = {r.endpoint: r for r in await _deliveries(app, tenant)}
    statuses = sorted((r.status, r.error) for r in rows.values())
    assert statuses == [
        (str(Status.FAILED), "HTTP 413: too big"),
        (str(Status.PENDING), "HTTP 429: slow down"),
    ]
    pending = next(r for r in rows.values() if r.status == str(Status.PENDING))
    due = pending.next_attempt_at
    due = due if due.tzinfo else due.replace(tzinfo=dt.UTC)
    assert due >= before + dt.timedelta(seconds=119)
    assert await _retired(app, tenant) == set()


async def test_an_endpoint_on_loopback_is_refused_when_the_override_is_off(
    settings: Settings, emulator: WebPushEmulator, ca_file: Path
) -> None:
    app = await _app(settings, ca_file, allowed=[])
    try:
        tenant, _ = await _tenant(app)
        await _subscribers(app, emulator, tenant, 1)
        await _send(app, tenant, ["u0"], "t")
        await _deliver_all(app)
        rows = await _deliveries(app, tenant)
        assert [r.status for r in rows] == [str(Status.FAILED)]
        assert "refused endpoint" in rows[0].error
        assert "loopback" in rows[0].error
        assert emulator.attempts == []
        assert await _retired(app, tenant) == set()  # refused, not proven dead
    finally:
        await app.close()


# --- the transport alone, on the emulator ----------------------------------------------------


def _claimed(
    n: int, subscription: dict[str, Any], tenant: str = "t", *, endpoint: str | None = None
) -> Claimed:
    now = dt.datetime.now(dt.UTC)
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
        created_at=now,
    )
    return Claimed(
        id=n,
        fence=1,
        tenant_id=tenant,
        channel="webpush",
        endpoint=str(n),
        attempts=1,
        item=item,
        address=endpoint or subscription["endpoint"],
        keys=dict(subscription["keys"]),
    )


async def _credential(app: bootstrap.Clarion, tenant: str) -> Credential:
    credential = await app.credentials.load(tenant, "webpush", None)
    assert credential is not None
    return credential


async def test_a_name_resolving_to_loopback_is_refused_before_connecting(
    emulator: WebPushEmulator, ca_file: Path, app: bootstrap.Clarion
) -> None:
    import ssl

    tenant, _ = await _tenant(app)
    credential = await _credential(app, tenant)

    async def load(*_: object) -> Credential:
        return credential

    context = ssl.create_default_context(cafile=str(ca_file))
    subscription = emulator.subscribe()
    by_name = subscription["endpoint"].replace("127.0.0.1", "localhost")
    guarded = WebPushTransport(load, ssl_context=context)
    allowed = WebPushTransport(
        load, ssl_context=context, allowed_networks=parse_networks(["127.0.0.0/8", "::1/128"])
    )
    try:
        [refused] = await guarded.send([_claimed(1, subscription, tenant, endpoint=by_name)])
        assert isinstance(refused, Rejected)
        assert "resolves to" in refused.reason
        assert emulator.attempts == []
        [ok] = await allowed.send([_claimed(2, subscription, tenant)])
        assert isinstance(ok, Delivered)
    finally:
        await guarded.close()
        await allowed.close()


async def test_a_refused_vapid_key_names_its_credential_and_a_paused_one_sends_nothing(
    app: bootstrap.Clarion, emulator: WebPushEmulator
) -> None:
    tenant, credential_id = await _tenant(app)
    transport = app.transports[Channel.WEBPUSH]
    transport = getattr(transport, "inner", transport)
    subscription = emulator.subscribe()
    emulator.script(403, "invalid JWT provided", count=1)
    [refused] = await transport.send([_claimed(1, subscription, tenant)])
    assert refused == AuthFailed("HTTP 403: invalid JWT provided", credential_id)
    await app.credentials.pause(tenant, credential_id, refused.reason)
    attempts = len(emulator.attempts)
    [held] = await transport.send([_claimed(2, subscription, tenant)])
    assert isinstance(held, RetryLater)
    assert "paused" in held.reason
    assert len(emulator.attempts) == attempts
    await app.credentials.put_webpush(tenant, "site", subject=SUBJECT)  # replaced: active again
    [sent] = await transport.send([_claimed(3, subscription, tenant)])
    assert isinstance(sent, Delivered)


async def test_a_subscription_made_for_another_key_is_retired_not_the_credential(
    app: bootstrap.Clarion, emulator: WebPushEmulator
) -> None:
    tenant, _ = await _tenant(app)
    from cryptography.hazmat.primitives.asymmetric import ec

    from clarion.wire import webpush as wire

    other = wire.vapid_public_key(ec.generate_private_key(ec.SECP256R1()))
    subscription = emulator.subscribe(application_server_key=other)
    transport = app.transports[Channel.WEBPUSH]
    [outcome] = await getattr(transport, "inner", transport).send(
        [_claimed(1, subscription, tenant)]
    )
    assert type(outcome).__name__ == "TokenInvalid"
    info = await app.credentials.get(tenant, "webpush", "site")
    assert info.status == "active"
    mine = emulator.subscribe(application_server_key=info.metadata["public_key"])
    [ok] = await getattr(transport, "inner", transport).send([_claimed(2, mine, tenant)])
    assert isinstance(ok, Delivered)
