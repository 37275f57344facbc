"""FCM end to end: the transport against the FCM emulator over real sockets (TLS and h2c), and
events with channel "fcm" through the pipeline (routing, delivering, the registry) on SQLite and
PostgreSQL: sent with the message name as reference, dead tokens retired, quota windows and
stale access tokens survived, refused and paused credentials handled.

On PostgreSQL every test of the session shares one database, so a delivery another test left
waiting may be claimed here too: these tests use tokens and projects of their own and look only
at their own tenant's rows and the emulator's entries for their own tokens."""

from __future__ import annotations

import asyncio
import datetime
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from clarion import bootstrap
from clarion.adapters.providers import fcm as fcm_provider
from clarion.adapters.providers.fcm import AccessTokens, FcmTransport
from clarion.adapters.storage import tables
from clarion.domain import retrying
from clarion.domain.channels import Channel
from clarion.domain.notifications import EventSpec, InboxItem, JsonObject, Recipients
from clarion.domain.outcomes import AuthFailed, Delivered, Rejected, RetryLater, TokenInvalid
from clarion.domain.records import Claimed, Credential, CredentialInfo
from clarion.domain.statuses import Status
from clarion.emulators.fcm import FcmEmulator
from clarion.settings import FcmSettings, Settings

GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"


class FakeClock:
    """One clock for the emulator (seconds) and the transport (datetimes)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def datetime(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.now, datetime.UTC)

    def advance(self, seconds: float) -> None:
        self.now += seconds


def fcm_token() -> str:
    return f"{secrets.token_urlsafe(11)}:APA91b{secrets.token_urlsafe(100)}"


def project_id() -> str:
    return f"clarion-{secrets.token_hex(4)}"


def context_for(emulator: FcmEmulator) -> ssl.SSLContext | None:
    if emulator.certificate_pem is None:
        return None
    return ssl.create_default_context(cadata=emulator.certificate_pem.decode())


# --- the transport, on its own -------------------------------------------------------------------


def credential_of(
    account: dict[str, Any], *, status: str = "active", cid: str = "cred-1"
) -> Credential:
    now = datetime.datetime.now(datetime.UTC)
    return Credential(
        info=CredentialInfo(
            id=cid,
            tenant_id="t",
            provider="fcm",
            name="main",
            app_id=None,
            environment=None,
            metadata={
                k: account[k] for k in ("project_id", "client_email", "token_uri", "private_key_id")
            },
            status=status,
            paused_reason="THIRD_PARTY_AUTH_ERROR: nope" if status != "active" else None,
            created_at=now,
            updated_at=now,
        ),
        secret=account["private_key"],
    )


def claimed(n: int, address: str | None, data: JsonObject | None = None) -> Claimed:
    now = datetime.datetime.now(datetime.UTC)
    item = InboxItem(
        id=n,
        notification_id=f"n{n}",
        event_id="e",
        user=f"u{n}",
        status=Status.PENDING,
        type="news",
        title="hello",
        body="b",
        data={"k": "v"} if data is None else data,
        category=None,
        group=None,
        created_at=now,
    )
    return Claimed(
        id=n,
        fence=1,
        tenant_id="t",
        channel="fcm",
        endpoint=str(n),
        attempts=1,
        item=item,
        address=address,
    )


class Rig:
    """An emulator, a service account in it, and a transport loading that account."""

    def __init__(self, emulator: FcmEmulator, clock: FakeClock, **options: Any) -> None:
        self.emulator = emulator
        self.clock = clock
        self.project = project_id()
        self.account = emulator.create_service_account(self.project, token_uri=GOOGLE_TOKEN_URI)
        self.credential: Credential | None = credential_of(self.account)
        self.tokens = AccessTokens(now=clock.datetime)

        async def load(tenant: str, provider: str, app_id: str | None) -> Credential | None:
            assert provider == "fcm"
            return self.credential

        self.transport = FcmTransport(
            load,
            base_url=emulator.base_url,
            token_url=emulator.token_url,
            ssl_context=context_for(emulator),
            tokens=self.tokens,
            now=clock.datetime,
            **options,
        )

    async def send(self, *batch: Claimed) -> list[Any]:
        return await self.transport.send(list(batch))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["tls", "h2c"])
async def emulator(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[FcmEmulator]:
    emu = FcmEmulator(tls=request.param == "tls", clock=clock)
    await emu.start()
    yield emu
    await emu.stop()


@pytest.fixture
async def rig(emulator: FcmEmulator, clock: FakeClock) -> AsyncIterator[Rig]:
    made = Rig(emulator, clock)
    yield made
    await made.transport.close()


async def test_the_transport_sends_over_http2_and_answers_with_the_message_names(rig: Rig) -> None:
    tokens = [fcm_token() for _ in range(5)]
    outcomes = await rig.send(*(claimed(n, t) for n, t in enumerate(tokens)))
    received = {r["token"]: r for r in rig.emulator.received}
    assert sorted(received) == sorted(tokens)
    for token, outcome in zip(tokens, outcomes, strict=True):
        assert outcome == Delivered(received[token]["name"])
        assert received[token]["http_version"].startswith("HTTP/2")
        assert received[token]["message"] == {
            "token": token,
            "notification": {"title": "hello", "body": "b"},
            "data": {"k": "v"},
        }
    [fetch] = rig.emulator.token_requests
    assert fetch["client_email"] == rig.account["client_email"]


async def test_one_access_token_serves_concurrent_batches(rig: Rig) -> None:
    batches = [[claimed(n * 10 + i, fcm_token()) for i in range(10)] for n in range(5)]
    results = await asyncio.gather(*(rig.transport.send(b) for b in batches))
    assert all(isinstance(o, Delivered) for r in results for o in r)
    assert len(rig.emulator.token_requests) == 1
    assert rig.tokens.fetches == 1


async def test_the_access_token_is_fetched_again_before_it_expires(rig: Rig) -> None:
    await rig.send(claimed(1, fcm_token()))
    rig.clock.advance(3599 - 4 * 60)  # inside the five-minute margin
    [outcome] = await rig.send(claimed(2, fcm_token()))
    assert isinstance(outcome, Delivered)
    assert len(rig.emulator.token_requests) == 2
    assert [a["status"] for a in rig.emulator.attempts] == [200, 200]  # never a 401


async def test_a_401_mid_run_fetches_one_new_token_and_sends_again(rig: Rig) -> None:
    await rig.send(claimed(0, fcm_token()))
    rig.emulator.revoke_access_tokens()
    tokens = [fcm_token() for _ in range(20)]
    outcomes = await rig.send(*(claimed(n, t) for n, t in enumerate(tokens, 1)))
    assert all(isinstance(o, Delivered) for o in outcomes)
    assert len(rig.emulator.token_requests) == 2  # one refresh for twenty 401s
    mine = [a for a in rig.emulator.attempts if a["target"] in set(tokens)]
    assert sorted(a["status"] for a in mine) == [200] * 20 + [401] * 20
    assert sorted(r["token"] for r in rig.emulator.received[1:]) == sorted(tokens)


async def test_a_fresh_token_refused_too_fails_auth_naming_the_credential(rig: Rig) -> None:
    rig.emulator.script("UNAUTHENTICATED")
    [outcome] = await rig.send(claimed(1, fcm_token()))
    assert isinstance(outcome, AuthFailed)
    assert outcome.credential_id == "cred-1"
    assert "freshly fetched" in outcome.reason
    assert len(rig.emulator.token_requests) == 2
    assert [a["status"] for a in rig.emulator.attempts] == [401, 401]


async def test_an_account_google_refuses_fails_auth_without_sending(rig: Rig) -> None:
    rig.emulator.delete_account(rig.account["client_email"])
    outcomes = await rig.send(claimed(1, fcm_token()), claimed(2, fcm_token()))
    assert [type(o) for o in outcomes] == [AuthFailed, AuthFailed]
    assert {o.credential_id for o in outcomes} == {"cred-1"}
    assert outcomes[0].reason.startswith("OAuth HTTP 400 invalid_grant")
    assert rig.emulator.attempts == []


async def test_a_token_endpoint_outage_is_retried_after_its_retry_after(rig: Rig) -> None:
    rig.emulator.script_token_endpoint(503, "temporarily_unavailable", retry_after=42)
    [outcome] = await rig.send(claimed(1, fcm_token()))
    assert outcome == RetryLater("OAuth HTTP 503 temporarily_unavailable", 42.0)
    assert rig.emulator.attempts == []


async def test_retry_after_holds_the_projects_other_sends(
    emulator: FcmEmulator, clock: FakeClock
) -> None:
    rig = Rig(emulator, clock, concurrency=1)
    try:
        emulator.script("QUOTA_EXCEEDED", retry_after=30, count=1)
        outcomes = await rig.send(*(claimed(n, fcm_token()) for n in range(4)))
    finally:
        await rig.transport.close()
    first, *others = outcomes
    assert first == RetryLater("QUOTA_EXCEEDED: Quota exceeded for sending messages.", 30.0)
    for outcome in others:
        assert isinstance(outcome, RetryLater)
        assert outcome.reason.startswith("held after QUOTA_EXCEEDED")
        assert outcome.after_seconds is not None
        assert 29 < outcome.after_seconds <= 30
    assert len(emulator.attempts) == 1


async def test_dead_tokens_are_invalid_and_bad_messages_rejected_without_a_request(
    rig: Rig,
) -> None:
    dead, other = fcm_token(), fcm_token()
    rig.emulator.script("UNREGISTERED", target=dead)
    rig.emulator.script("SENDER_ID_MISMATCH", target=other)
    outcomes = await rig.send(
        claimed(1, dead),
        claimed(2, other),
        claimed(3, fcm_token(), data={"count": 3}),
        claimed(4, None),
    )
    assert outcomes[0] == TokenInvalid("UNREGISTERED: Requested entity was not found.")
    assert outcomes[1] == TokenInvalid("SENDER_ID_MISMATCH: SenderId mismatch")
    assert isinstance(outcomes[2], Rejected)
    assert "must be a string" in outcomes[2].reason
    assert isinstance(outcomes[3], Rejected)
    assert len(rig.emulator.attempts) == 2


async def test_a_paused_or_missing_credential_sends_nothing(rig: Rig) -> None:
    rig.credential = credential_of(rig.account, status="paused")
    [held] = await rig.send(claimed(1, fcm_token()))
    assert held == RetryLater(
        "the FCM credential is paused: THIRD_PARTY_AUTH_ERROR: nope",
        fcm_provider.PAUSED_RETRY_SECONDS,
    )
    rig.credential = None
    [missing] = await rig.send(claimed(2, fcm_token()))
    assert missing == Rejected("no FCM credential for this app")
    assert rig.emulator.token_requests == rig.emulator.attempts == []


async def test_a_topic_address_sends_to_the_topic(rig: Rig) -> None:
    [outcome] = await rig.send(claimed(1, "/topics/news"))
    assert isinstance(outcome, Delivered)
    [received] = rig.emulator.received
    assert (received["topic"], received["token"]) == ("news", None)


async def test_sends_in_flight_are_bounded(emulator: FcmEmulator, clock: FakeClock) -> None:
    rig = Rig(emulator, clock, concurrency=3)
    emulator.latency_ms = 200
    try:
        await rig.send(claimed(0, fcm_token()))  # the token fetch, out of the timing
        started = time.monotonic()
        outcomes = await rig.send(*(claimed(n, fcm_token()) for n in range(1, 10)))
        elapsed = time.monotonic() - started
    finally:
        await rig.transport.close()
    assert all(isinstance(o, Delivered) for o in outcomes)
    assert 0.55 <= elapsed < 2.0  # three rounds of three, not one round of nine


async def test_an_unreachable_fcm_is_retried(clock: FakeClock) -> None:
    emulator = FcmEmulator(tls=False, clock=clock)
    await emulator.start()
    rig = Rig(emulator, clock)
    await rig.send(claimed(0, fcm_token()))  # a token in hand
    await emulator.stop()
    try:
        [outcome] = await rig.send(claimed(1, fcm_token()))
    finally:
        await rig.transport.close()
    assert isinstance(outcome, RetryLater)
    assert outcome.reason.startswith("FCM could not be reached")


# --- through the pipeline ------------------------------------------------------------------------


@pytest.fixture
async def service() -> AsyncIterator[FcmEmulator]:
    emu = FcmEmulator(tls=True)
    await emu.start()
    yield emu
    await emu.stop()


@pytest.fixture
async def app(
    settings: Settings, service: FcmEmulator, tmp_path: Path
) -> AsyncIterator[bootstrap.Clarion]:
    assert service.certificate_pem is not None
    ca = tmp_path / "fcm-emulator.pem"
    ca.write_bytes(service.certificate_pem)
    configured = settings.model_copy(
        update={
            "fcm": FcmSettings(
                enabled=True, base_url=service.base_url, token_url=service.token_url, ca_file=ca
            )
        }
    )
    await bootstrap.migrate(configured)
    clarion = bootstrap.build(configured)
    yield clarion
    await clarion.close()


async def _tenant_with_account(
    app: bootstrap.Clarion, service: FcmEmulator
) -> tuple[str, dict[str, Any]]:
    tenant = (await app.tenancy.create_tenant("t")).tenant_id
    account = service.create_service_account(project_id(), token_uri=GOOGLE_TOKEN_URI)
    saved = await app.credentials.put_fcm(tenant, "main", service_account=account)
    assert saved.credential.metadata["project_id"] == account["project_id"]
    return tenant, account


async def _android_users(app: bootstrap.Clarion, tenant: str, count: int) -> dict[str, str]:
    devices = {f"u{n}": fcm_token() for n in range(count)}
    for user, token in devices.items():
        await app.devices.register(
            tenant, user, provider="fcm", token=token, app_id="com.example.android", keys={}
        )
    return devices


async def _send(app: bootstrap.Clarion, tenant: str, users: Iterable[str], title: str) -> str:
    accepted = await app.accepting.accept(
        tenant,
        EventSpec(
            type="news",
            recipients=Recipients(users=tuple(users)),
            title=title,
            body="b",
            data={"article": "42"},
            channels=(Channel.FCM,),
        ),
    )
    assert await app.routing.route(accepted.id) is not None
    return accepted.id


async def _deliver_all(app: bootstrap.Clarion) -> None:
    while await app.delivering.deliver_once(Channel.FCM):
        pass


async def _fcm_rows(app: bootstrap.Clarion, tenant: str) -> list[sa.Row[Any]]:
    async with app.store.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(
                tables.deliveries.c.endpoint,
                tables.deliveries.c.status,
                tables.deliveries.c.reference,
                tables.deliveries.c.error,
            ).where(tables.deliveries.c.tenant_id == tenant, tables.deliveries.c.channel == "fcm")
        )
        return list(rows)


def _to(
    tokens: Iterable[str], log: list[dict[str, Any]], key: str = "token"
) -> list[dict[str, Any]]:
    wanted = set(tokens)
    return [entry for entry in log if entry.get(key) in wanted]


async def test_an_fcm_event_is_sent_and_recorded_with_its_message_name(
    app: bootstrap.Clarion, service: FcmEmulator
) -> None:
    tenant, account = await _tenant_with_account(app, service)
    devices = await _android_users(app, tenant, 3)
    await _send(app, tenant, devices, "hello")
    await _deliver_all(app)
    received = _to(devices.values(), service.received)
    assert sorted(r["token"] for r in received) == sorted(devices.values())
    for push in received:
        assert push["project"] == account["project_id"]
        assert push["message"]["notification"] == {"title": "hello", "body": "b"}
        assert push["message"]["data"] == {"article": "42"}
    rows = await _fcm_rows(app, tenant)
    assert [r.status for r in rows] == [str(Status.SENT)] * 3
    assert sorted(r.reference for r in rows) == sorted(r["name"] for r in received)


async def test_unregistered_tokens_are_retired_and_never_asked_for_again(
    app: bootstrap.Clarion, service: FcmEmulator
) -> None:
    tenant, _ = await _tenant_with_account(app, service)
    devices = await _android_users(app, tenant, 20)
    dead = set(list(devices.values())[::5])
    service.unregister_tokens(list(dead))
    await _send(app, tenant, devices, "first")
    await _deliver_all(app)
    rows = await _fcm_rows(app, tenant)
    assert sum(r.status == str(Status.SENT) for r in rows) == 16
    failed = [r for r in rows if r.status == str(Status.FAILED)]
    assert {r.error for r in failed} == {"UNREGISTERED: Requested entity was not found."}
    async with app.store.engine.connect() as conn:
        retired = await conn.execute(
            sa.select(tables.devices.c.token).where(
                tables.devices.c.tenant_id == tenant, tables.devices.c.status == "retired"
            )
        )
        assert {r.token for r in retired} == dead
    asked = len(_to(dead, service.attempts, "target"))
    assert asked == len(dead)
    await _send(app, tenant, devices, "second")
    await _deliver_all(app)
    assert len(_to(dead, service.attempts, "target")) == asked
    assert len(_to(devices.values(), service.received)) == 32


async def test_a_quota_window_with_retry_after_is_waited_out_and_ends_sent(
    app: bootstrap.Clarion, service: FcmEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retrying, "BASE_DELAY_SECONDS", 0.1)
    monkeypatch.setattr(retrying, "MAX_DELAY_SECONDS", 0.2)
    tenant, _ = await _tenant_with_account(app, service)
    devices = await _android_users(app, tenant, 10)
    service.script("QUOTA_EXCEEDED", retry_after=1, seconds=1.5)
    await _send(app, tenant, devices, "during a quota window")
    started = time.monotonic()
    rows: list[sa.Row[Any]] = []
    while time.monotonic() - started < 30:
        await _deliver_all(app)
        rows = await _fcm_rows(app, tenant)
        if all(r.status == str(Status.SENT) for r in rows):
            break
        await asyncio.sleep(0.1)
    assert [r.status for r in rows] == [str(Status.SENT)] * 10
    attempts = _to(devices.values(), service.attempts, "target")
    refused = [a for a in attempts if a["error_code"] == "QUOTA_EXCEEDED"]
    assert refused, "the window was never hit"
    # Retry-After was honoured: nothing refused was tried again within the second it asked for.
    first_refusal = min(a["time"] for a in refused)
    retried = [a for a in attempts if a["status"] == 200]
    assert min(a["time"] for a in retried) >= first_refusal + 1.0


async def test_a_401_mid_run_refreshes_the_access_token_once(
    app: bootstrap.Clarion, service: FcmEmulator
) -> None:
    tenant, account = await _tenant_with_account(app, service)
    devices = await _android_users(app, tenant, 10)
    await _send(app, tenant, devices, "before")
    await _deliver_all(app)
    service.revoke_access_tokens()
    await _send(app, tenant, devices, "after")
    await _deliver_all(app)
    rows = await _fcm_rows(app, tenant)
    assert [r.status for r in rows] == [str(Status.SENT)] * 20
    fetches = [t for t in service.token_requests if t["client_email"] == account["client_email"]]
    assert [t["status"] for t in fetches] == [200, 200]
    statuses = [a["status"] for a in _to(devices.values(), service.attempts, "target")]
    assert sorted(statuses) == [200] * 20 + [401] * 10


async def test_a_refused_account_names_its_credential_and_a_paused_one_sends_nothing(
    app: bootstrap.Clarion, service: FcmEmulator
) -> None:
    tenant, account = await _tenant_with_account(app, service)
    devices = await _android_users(app, tenant, 2)
    service.delete_account(account["client_email"])
    transport = app.transports[Channel.FCM]
    await _send(app, tenant, devices, "refused")
    seen: list[Any] = []
    send = transport.send

    async def recording(batch: Any) -> Any:
        outcomes = await send(batch)
        seen.extend(o for c, o in zip(batch, outcomes, strict=True) if c.tenant_id == tenant)
        return outcomes

    transport.send = recording  # type: ignore[method-assign]
    try:
        await _deliver_all(app)
        [info] = await app.credentials.list_credentials(tenant)
        assert len(seen) == 2
        assert all(isinstance(o, AuthFailed) and o.credential_id == info.id for o in seen)
        assert await app.credentials.pause(tenant, info.id, seen[0].reason)
        seen.clear()
        async with app.store.engine.begin() as conn:  # due again now
            await conn.execute(
                sa.update(tables.deliveries)
                .where(tables.deliveries.c.tenant_id == tenant)
                .values(next_attempt_at=None)
            )
        await _deliver_all(app)
        assert len(seen) == 2
        assert all(
            isinstance(o, RetryLater) and o.reason.startswith("the FCM credential is paused")
            for o in seen
        )
        assert _to(devices.values(), service.attempts, "target") == []
    finally:
        transport.send = send  # type: ignore[method-assign]
        await app.credentials.delete(tenant, "fcm", "main")
