"""Events with channel "apns" reach the APNs emulator over real TLS, and what it answers lands in
the registry: sent with the apns-id, dead tokens retired, outages retried without loss; sent with
a TLS client certificate as well as with a provider token; a refused credential named in the
outcome, a paused one never used."""

from __future__ import annotations

import asyncio
import datetime
import os
import secrets
import ssl
import stat
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from clarion import bootstrap
from clarion.adapters.providers import apns as apns_provider
from clarion.adapters.storage import tables
from clarion.domain import retrying
from clarion.domain.channels import Channel
from clarion.domain.notifications import EventSpec, InboxItem, Recipients
from clarion.domain.outcomes import AuthFailed, Outcome, RetryLater
from clarion.domain.records import Claimed, Credential, CredentialInfo
from clarion.domain.statuses import Status
from clarion.emulators.apns import ApnsEmulator
from clarion.services.ports import Transport
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


# -- certificate auth, refused and paused credentials -----------------------------------------
#
# On PostgreSQL every test of the session shares one database, so a delivery another test left
# waiting for a retry may be claimed here too: these tests use device tokens of their own, look
# only at their own tenant's outcomes, and forget their refused credentials when they end (the
# `forget` fixture), so what they leave behind fails at once without a request.

SANDBOX_OID = x509.ObjectIdentifier("1.2.840.113635.100.6.3.1")
PRODUCTION_OID = x509.ObjectIdentifier("1.2.840.113635.100.6.3.2")


def _pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


class Authority:
    """A certification authority standing in for Apple's WWDR CA."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test WWDR CA")])
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.certificate.public_bytes(serialization.Encoding.PEM).decode()

    def issue(
        self, uid: str = TOPIC, environments: Sequence[str] = ("sandbox",)
    ) -> tuple[str, str]:
        """A push certificate for `uid`, as (certificate PEM, private key PEM)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.USER_ID, uid),
                        x509.NameAttribute(NameOID.COMMON_NAME, f"Apple Push Services: {uid}"),
                    ]
                )
            )
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
        )
        for environment in environments:
            oid = SANDBOX_OID if environment == "sandbox" else PRODUCTION_OID
            builder = builder.add_extension(x509.UnrecognizedExtension(oid, b"\x05\x00"), False)
        certificate = builder.sign(self.key, hashes.SHA256())
        return certificate.public_bytes(serialization.Encoding.PEM).decode(), _pem(key)


@pytest.fixture
async def forget(app: bootstrap.Clarion) -> AsyncIterator[list[str]]:
    """Tenants whose APNs credential is deleted when the test ends."""
    tenants: list[str] = []
    yield tenants
    for tenant in tenants:
        for info in await app.credentials.list_credentials(tenant):
            await app.credentials.delete(tenant, info.provider, info.name)


async def _put_certificate(
    app: bootstrap.Clarion, tenant: str, authority: Authority, environments: Sequence[str]
) -> tuple[str, str]:
    certificate, key = authority.issue(environments=environments)
    saved = await app.credentials.put_apns(
        tenant,
        "main",
        auth="certificate",
        topic=TOPIC,
        environment="sandbox",
        certificate=certificate,
        private_key=key,
    )
    return saved.credential.id, certificate


async def _tenant_with_certificate(
    app: bootstrap.Clarion, authority: Authority, environments: Sequence[str] = ("sandbox",)
) -> tuple[str, str]:
    tenant = (await app.tenancy.create_tenant("t")).tenant_id
    credential_id, _ = await _put_certificate(app, tenant, authority, environments)
    return tenant, credential_id


async def _put_token_key(
    app: bootstrap.Clarion, tenant: str, key_id: str, emulator: ApnsEmulator | None
) -> str:
    """A token credential; its key registered on `emulator` (None: APNs never heard of it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    if emulator is not None:
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        emulator.register_key(TEAM, key_id, public.decode())
    saved = await app.credentials.put_apns(
        tenant,
        "main",
        auth="token",
        topic=TOPIC,
        environment="sandbox",
        private_key=_pem(key),
        key_id=key_id,
        team_id=TEAM,
    )
    return saved.credential.id


async def _own_devices(app: bootstrap.Clarion, tenant: str, count: int) -> dict[str, str]:
    """`count` users with a device each, with tokens no other test uses: user → token."""
    devices = {f"u{n}": secrets.token_hex(32) for n in range(count)}
    for user, token in devices.items():
        await app.devices.register(tenant, user, provider="apns", token=token, app_id=None, keys={})
    return devices


def _to(tokens: Iterable[str], log: list[dict[str, object]]) -> list[dict[str, object]]:
    """The entries of an emulator log (received, attempts) for these device tokens."""
    wanted = set(tokens)
    return [entry for entry in log if entry["token"] in wanted]


def _apns_transport(app: bootstrap.Clarion) -> apns_provider.ApnsTransport:
    transport: Transport = app.transports[Channel.APNS]
    transport = getattr(transport, "inner", transport)  # under a pausing wrapper, if any
    assert isinstance(transport, apns_provider.ApnsTransport)
    return transport


def _record_outcomes(
    app: bootstrap.Clarion, monkeypatch: pytest.MonkeyPatch
) -> list[tuple[str, Outcome]]:
    """Every outcome the APNs transport answers the pipeline, with its tenant, in order."""
    transport = _apns_transport(app)
    send = transport.send
    seen: list[tuple[str, Outcome]] = []

    async def recording(batch: Sequence[Claimed]) -> list[Outcome]:
        outcomes = await send(batch)
        seen.extend((c.tenant_id, o) for c, o in zip(batch, outcomes, strict=True))
        return outcomes

    monkeypatch.setattr(transport, "send", recording)
    return seen


def _of(tenant: str, seen: list[tuple[str, Outcome]]) -> list[Outcome]:
    return [outcome for owner, outcome in seen if owner == tenant]


async def test_a_certificate_credential_sends_on_a_certificate_authenticated_connection(
    app: bootstrap.Clarion, emulator: ApnsEmulator
) -> None:
    authority = Authority()
    emulator.trust_certificate_authority(authority.pem)
    tenant, _ = await _tenant_with_certificate(app, authority)
    devices = await _own_devices(app, tenant, 3)
    await _send(app, tenant, list(devices), "hello")
    await _deliver_all(app)
    received = _to(devices.values(), emulator.received)
    assert sorted(str(r["token"]) for r in received) == sorted(devices.values())
    for push in received:
        assert (push["auth"], push["topic"]) == ("certificate", TOPIC)
        headers = push["headers"]
        assert isinstance(headers, dict)
        assert "authorization" not in headers
        assert headers["apns-topic"] == TOPIC
    [connection] = [c for c in emulator.connections() if c["id"] == received[0]["connection"]]
    assert connection["auth"] == "certificate"
    assert f"UID={TOPIC}" in connection["certificate_subject"]
    rows = await _apns_deliveries(app, tenant)
    assert [r.status for r in rows] == [str(Status.SENT)] * 3


async def test_a_replaced_certificate_gets_a_new_connection(
    app: bootstrap.Clarion, emulator: ApnsEmulator
) -> None:
    authority = Authority()
    emulator.trust_certificate_authority(authority.pem)
    tenant, _ = await _tenant_with_certificate(app, authority)
    devices = await _own_devices(app, tenant, 1)
    await _send(app, tenant, list(devices), "first")
    await _deliver_all(app)
    _, certificate = await _put_certificate(app, tenant, authority, ("sandbox",))
    await _send(app, tenant, list(devices), "second")
    await _deliver_all(app)
    first, second = _to(devices.values(), emulator.received)
    assert first["connection"] != second["connection"]
    for _ in range(200):  # the old connection is closed in the background
        if first["connection"] not in {c["id"] for c in emulator.connections()}:
            break
        await asyncio.sleep(0.01)
    open_now = {c["id"]: c for c in emulator.connections()}
    assert first["connection"] not in open_now
    expected = x509.load_pem_x509_certificate(certificate.encode()).subject.rfc4514_string()
    assert open_now[second["connection"]]["certificate_subject"] == expected


async def test_a_key_apns_does_not_know_fails_auth_naming_the_credential(
    app: bootstrap.Clarion,
    emulator: ApnsEmulator,
    monkeypatch: pytest.MonkeyPatch,
    forget: list[str],
) -> None:
    seen = _record_outcomes(app, monkeypatch)
    tenant = (await app.tenancy.create_tenant("t")).tenant_id
    forget.append(tenant)
    credential_id = await _put_token_key(app, tenant, "UNKNOWN123", None)
    devices = await _own_devices(app, tenant, 2)
    await _send(app, tenant, list(devices), "hello")
    await _deliver_all(app)
    outcomes = _of(tenant, seen)
    assert len(outcomes) == 2
    for outcome in outcomes:
        assert isinstance(outcome, AuthFailed)
        assert outcome.reason.startswith("InvalidProviderToken")
        assert outcome.credential_id == credential_id
    attempts = _to(devices.values(), emulator.attempts)
    assert {a["reason"] for a in attempts} == {"InvalidProviderToken"}
    assert _to(devices.values(), emulator.received) == []


async def test_a_certificate_for_the_other_environment_fails_auth_naming_the_credential(
    app: bootstrap.Clarion,
    emulator: ApnsEmulator,
    monkeypatch: pytest.MonkeyPatch,
    forget: list[str],
) -> None:
    seen = _record_outcomes(app, monkeypatch)
    authority = Authority()
    emulator.trust_certificate_authority(authority.pem)
    # The emulator plays the sandbox; this certificate is for production only.
    tenant, credential_id = await _tenant_with_certificate(
        app, authority, environments=("production",)
    )
    forget.append(tenant)
    devices = await _own_devices(app, tenant, 1)
    await _send(app, tenant, list(devices), "hello")
    await _deliver_all(app)
    [outcome] = _of(tenant, seen)
    assert isinstance(outcome, AuthFailed)
    assert outcome.reason.startswith("BadCertificateEnvironment")
    assert outcome.credential_id == credential_id
    [attempt] = _to(devices.values(), emulator.attempts)
    assert (attempt["status"], attempt["auth"]) == (403, "certificate")


async def test_an_expired_certificate_fails_auth_without_connecting(
    app: bootstrap.Clarion,
    emulator: ApnsEmulator,
    monkeypatch: pytest.MonkeyPatch,
    forget: list[str],
) -> None:
    seen = _record_outcomes(app, monkeypatch)
    authority = Authority()
    emulator.trust_certificate_authority(authority.pem)
    tenant, credential_id = await _tenant_with_certificate(app, authority)
    forget.append(tenant)
    devices = await _own_devices(app, tenant, 1)
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=31)
    monkeypatch.setattr(apns_provider, "_utcnow", lambda: later)
    await _send(app, tenant, list(devices), "hello")
    await _deliver_all(app)
    [outcome] = _of(tenant, seen)
    assert isinstance(outcome, AuthFailed)
    assert outcome.reason.startswith("BadCertificate: the certificate expired at")
    assert outcome.credential_id == credential_id
    assert _to(devices.values(), emulator.attempts) == []


async def test_a_paused_credential_sends_nothing_and_waits_until_replaced(
    app: bootstrap.Clarion,
    emulator: ApnsEmulator,
    monkeypatch: pytest.MonkeyPatch,
    forget: list[str],
) -> None:
    seen = _record_outcomes(app, monkeypatch)
    tenant = (await app.tenancy.create_tenant("t")).tenant_id
    forget.append(tenant)
    credential_id = await _put_token_key(app, tenant, KID, emulator)
    assert await app.credentials.pause(tenant, credential_id, "InvalidProviderToken")
    devices = await _own_devices(app, tenant, 3)
    await _send(app, tenant, list(devices), "held")
    await _deliver_all(app)
    assert (
        _of(tenant, seen)
        == [
            RetryLater(
                "the APNs credential is paused: InvalidProviderToken",
                apns_provider.PAUSED_RETRY_SECONDS,
            )
        ]
        * 3
    )
    assert _to(devices.values(), emulator.attempts) == []
    rows = await _apns_deliveries(app, tenant)
    assert str(Status.SENT) not in {r.status for r in rows}
    # Replacing the credential un-pauses it: new pushes go out at once.
    await _put_token_key(app, tenant, "KEY7654321", emulator)
    await _send(app, tenant, ["u0"], "after the fix")
    await _deliver_all(app)
    [received] = _to([devices["u0"]], emulator.received)
    payload = received["payload"]
    assert isinstance(payload, dict)
    assert payload["aps"]["alert"]["title"] == "after the fix"


def _claimed(n: int) -> Claimed:
    now = datetime.datetime.now(datetime.UTC)
    item = InboxItem(
        id=n,
        notification_id=f"n{n}",
        event_id="e",
        user=f"u{n}",
        status=Status.PENDING,
        type="news",
        title="t",
        body="b",
        data={},
        category=None,
        group=None,
        created_at=now,
    )
    return Claimed(
        id=n,
        fence=1,
        tenant_id="t",
        channel="apns",
        endpoint=str(n),
        attempts=1,
        item=item,
        address=token_of(n),
    )


async def test_a_stored_certificate_that_no_longer_loads_fails_auth_without_connecting(
    emulator: ApnsEmulator,
) -> None:
    certificate, _ = Authority().issue()
    _, other_key = Authority().issue()
    now = datetime.datetime.now(datetime.UTC)
    credential = Credential(
        info=CredentialInfo(
            id="cred-1",
            tenant_id="t",
            provider="apns",
            name="main",
            app_id=None,
            environment="sandbox",
            metadata={"auth": "certificate", "topic": TOPIC},
            status="active",
            paused_reason=None,
            created_at=now,
            updated_at=now,
        ),
        secret=certificate + other_key,  # the key of another certificate
    )

    async def load(tenant: str, provider: str, app_id: str | None) -> Credential:
        return credential

    transport = apns_provider.ApnsTransport(load, host="127.0.0.1", port=emulator.port)
    try:
        [outcome] = await transport.send([_claimed(1)])
    finally:
        await transport.close()

    assert isinstance(outcome, AuthFailed)
    assert outcome.reason.startswith("the APNs certificate does not load")
    assert outcome.credential_id == "cred-1"
    assert emulator.attempts == []


def test_a_certificate_touches_the_disk_only_in_a_private_file_deleted_after_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    certificate, key = Authority().issue()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen: list[tuple[int, int]] = []
    load_cert_chain = ssl.SSLContext.load_cert_chain

    def spying(context: ssl.SSLContext, certfile: str, *args: object, **kwargs: object) -> None:
        seen.append(
            (
                stat.S_IMODE(os.stat(os.path.dirname(certfile)).st_mode),
                stat.S_IMODE(os.stat(certfile).st_mode),
            )
        )
        load_cert_chain(context, certfile)

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", spying)
    base = ssl.create_default_context()

    context = apns_provider.certificate_context(base, certificate + key)

    assert seen == [(0o700, 0o600)]
    assert list(tmp_path.iterdir()) == []
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
