"""The APNs emulator answers like Apple documents, over real sockets (TLS and h2c), driven by a raw
`h2` client and by a third-party client (aioapns)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from clarion.emulators.apns import ApnsEmulator, certificate_topics

TEAM = "TEAM123456"
KID = "KEY1234567"
TOPIC = "com.example.app"
DEVICE = "a1" * 32
START = 1_750_000_000.0


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def private_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def public_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def provider_token(
    key: ec.EllipticCurvePrivateKey, iat: float, *, team: str = TEAM, kid: str = KID
) -> str:
    return jwt.encode({"iss": team, "iat": int(iat)}, key, algorithm="ES256", headers={"kid": kid})


def payload_of(size: int) -> bytes:
    head, tail = b'{"aps":{"alert":"', b'"}}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def client_context(emulator: ApnsEmulator) -> ssl.SSLContext:
    assert emulator.certificate_pem is not None
    context = ssl.create_default_context(cadata=emulator.certificate_pem.decode())
    context.set_alpn_protocols(["h2"])
    return context


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes = b""

    @property
    def reason(self) -> str | None:
        return json.loads(self.body)["reason"] if self.body else None


@dataclass
class RawClient:
    """Just enough of an HTTP/2 client to see every SETTINGS and GOAWAY frame the server sends."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    conn: h2.connection.H2Connection = field(
        default_factory=lambda: h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
    )
    max_streams_seen: list[int] = field(default_factory=list)
    goaway: h2.events.ConnectionTerminated | None = None
    pending: dict[int, asyncio.Future[Answer]] = field(default_factory=dict)
    partial: dict[int, Answer] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(
        cls, emulator: ApnsEmulator, *, context: ssl.SSLContext | None = None
    ) -> RawClient:
        if context is None and emulator.tls:
            context = client_context(emulator)
        reader, writer = await asyncio.open_connection("127.0.0.1", emulator.port, ssl=context)
        if context is not None:
            assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
        client = cls(reader, writer)
        client.conn.initiate_connection()
        client.flush()
        client.task = asyncio.get_running_loop().create_task(client.read())
        return client

    def flush(self) -> None:
        self.writer.write(self.conn.data_to_send())

    async def read(self) -> None:
        try:
            while data := await self.reader.read(65536):
                for event in self.conn.receive_data(data):
                    self.on(event)
                self.flush()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("the connection closed"))

    def on(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RemoteSettingsChanged):
            changed = event.changed_settings.get(h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS)
            if changed is not None:
                self.max_streams_seen.append(changed.new_value)
        elif isinstance(event, h2.events.ResponseReceived):
            headers = dict(event.headers or [])
            self.partial[event.stream_id or 0] = Answer(int(headers[":status"]), headers)
        elif isinstance(event, h2.events.DataReceived):
            self.partial[event.stream_id or 0].body += event.data or b""
            self.conn.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self.pending.pop(event.stream_id or 0).set_result(
                self.partial.pop(event.stream_id or 0)
            )
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event

    async def request(
        self,
        headers: list[tuple[str, str]],
        body: bytes = b"",
        *,
        path: str = f"/3/device/{DEVICE}",
        method: str = "POST",
    ) -> Answer:
        stream_id = self.conn.get_next_available_stream_id()
        pseudo = [(":method", method), (":scheme", "https"), (":path", path)]
        pseudo.append((":authority", "api.sandbox.push.apple.com"))
        self.conn.send_headers(stream_id, pseudo + headers, end_stream=not body)
        if body:
            self.conn.send_data(stream_id, body, end_stream=True)
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self.pending[stream_id] = future
        self.flush()
        return await asyncio.wait_for(future, 5)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 2)
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def signing_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(params=["tls", "h2c"])
async def emulator(
    request: pytest.FixtureRequest, clock: FakeClock, signing_key: ec.EllipticCurvePrivateKey
) -> AsyncIterator[ApnsEmulator]:
    running = ApnsEmulator(tls=request.param == "tls", clock=clock)
    running.register_key(TEAM, KID, public_pem(signing_key))
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def control(emulator: ApnsEmulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{emulator.control_port}") as client:
        yield client


@pytest.fixture
async def client(emulator: ApnsEmulator) -> AsyncIterator[RawClient]:
    connected = await RawClient.connect(emulator)
    try:
        yield connected
    finally:
        await connected.close()


@pytest.fixture
def bearer(signing_key: ec.EllipticCurvePrivateKey, clock: FakeClock) -> str:
    return f"bearer {provider_token(signing_key, clock())}"


def push_headers(bearer: str | None, **overrides: str | None) -> list[tuple[str, str]]:
    headers: dict[str, str | None] = {
        "authorization": bearer,
        "apns-topic": TOPIC,
        "apns-push-type": "alert",
    }
    headers.update({name.replace("_", "-"): value for name, value in overrides.items()})
    return [(name, value) for name, value in headers.items() if value is not None]


ALERT = json.dumps({"aps": {"alert": "hello"}}).encode()


async def test_a_valid_push_is_accepted_and_listed(
    client: RawClient, control: httpx.AsyncClient, bearer: str
) -> None:
    apns_id = str(uuid.uuid4())
    answer = await client.request(
        push_headers(bearer, apns_id=apns_id, apns_priority="5", apns_collapse_id="c" * 64), ALERT
    )

    assert answer.status == 200
    assert answer.body == b""
    assert answer.headers["apns-id"] == apns_id
    assert uuid.UUID(answer.headers["apns-unique-id"])
    [received] = (await control.get("/control/received")).json()
    assert received["token"] == DEVICE
    assert received["topic"] == TOPIC
    assert received["push_type"] == "alert"
    assert received["priority"] == 5
    assert received["apns_id"] == apns_id
    assert received["payload"] == {"aps": {"alert": "hello"}}
    assert received["headers"]["apns-collapse-id"] == "c" * 64
    assert received["time"] == START
    assert (await control.delete("/control/received")).json() == {"cleared": 1}
    assert (await control.get("/control/received")).json() == []


async def test_a_push_without_an_apns_id_gets_a_generated_one(
    client: RawClient, bearer: str
) -> None:
    answer = await client.request(push_headers(bearer), ALERT)

    assert answer.status == 200
    assert str(uuid.UUID(answer.headers["apns-id"])) == answer.headers["apns-id"]


async def test_a_push_without_a_provider_token_is_refused_as_missing(client: RawClient) -> None:
    answer = await client.request(push_headers(None), ALERT)

    assert (answer.status, answer.reason) == (403, "MissingProviderToken")
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["apns-id"]


async def test_a_token_signed_by_another_key_is_refused_as_invalid(
    client: RawClient, clock: FakeClock
) -> None:
    impostor = ec.generate_private_key(ec.SECP256R1())
    forged = await client.request(push_headers(f"bearer {provider_token(impostor, clock())}"))
    unknown_kid = await client.request(
        push_headers(f"bearer {provider_token(impostor, clock(), kid='OTHERKEY00')}"), ALERT
    )

    assert (forged.status, forged.reason) == (403, "InvalidProviderToken")
    assert (unknown_kid.status, unknown_kid.reason) == (403, "InvalidProviderToken")


async def test_a_token_issued_two_hours_ago_is_refused_as_expired(
    client: RawClient, signing_key: ec.EllipticCurvePrivateKey, clock: FakeClock
) -> None:
    stale = provider_token(signing_key, clock() - 2 * 3600)

    answer = await client.request(push_headers(f"bearer {stale}"), ALERT)

    assert (answer.status, answer.reason) == (403, "ExpiredProviderToken")


async def test_an_accepted_token_expires_an_hour_after_it_was_issued(
    client: RawClient, bearer: str, clock: FakeClock
) -> None:
    assert (await client.request(push_headers(bearer), ALERT)).status == 200
    clock.advance(3601)

    answer = await client.request(push_headers(bearer), ALERT)

    assert (answer.status, answer.reason) == (403, "ExpiredProviderToken")


async def test_a_new_token_within_twenty_minutes_is_refused_and_spoils_the_connection(
    client: RawClient, signing_key: ec.EllipticCurvePrivateKey, clock: FakeClock, bearer: str
) -> None:
    assert (await client.request(push_headers(bearer), ALERT)).status == 200
    clock.advance(60)
    renewed = f"bearer {provider_token(signing_key, clock())}"

    refused = await client.request(push_headers(renewed), ALERT)
    again_with_the_old_token = await client.request(push_headers(bearer), ALERT)

    assert (refused.status, refused.reason) == (429, "TooManyProviderTokenUpdates")
    assert again_with_the_old_token.reason == "TooManyProviderTokenUpdates"


async def test_a_new_token_after_twenty_minutes_is_accepted_on_the_same_connection(
    client: RawClient, signing_key: ec.EllipticCurvePrivateKey, clock: FakeClock, bearer: str
) -> None:
    assert (await client.request(push_headers(bearer), ALERT)).status == 200
    clock.advance(20 * 60)
    renewed = f"bearer {provider_token(signing_key, clock())}"

    assert (await client.request(push_headers(renewed), ALERT)).status == 200


async def test_a_token_from_another_key_on_a_bound_connection_is_unrelated(
    client: RawClient, emulator: ApnsEmulator, clock: FakeClock, bearer: str
) -> None:
    second = ec.generate_private_key(ec.SECP256R1())
    emulator.register_key(TEAM, "KEY7654321", public_pem(second))
    assert (await client.request(push_headers(bearer), ALERT)).status == 200

    answer = await client.request(
        push_headers(f"bearer {provider_token(second, clock(), kid='KEY7654321')}"), ALERT
    )

    assert (answer.status, answer.reason) == (403, "UnrelatedKeyIdInToken")


async def test_the_stream_limit_is_one_until_a_valid_token_then_1000_and_one_after_a_rejection(
    client: RawClient, bearer: str
) -> None:
    assert (await client.request(push_headers(None), ALERT)).status == 403
    assert client.max_streams_seen == [1]

    assert (await client.request(push_headers(bearer), ALERT)).status == 200
    assert client.max_streams_seen == [1, 1000]

    assert (await client.request(push_headers("bearer not-a-jwt"), ALERT)).status == 403
    assert client.max_streams_seen == [1, 1000, 1]

    assert (await client.request(push_headers(bearer), ALERT)).status == 200
    assert client.max_streams_seen == [1, 1000, 1, 1000]
    assert client.conn.remote_settings.max_concurrent_streams == 1000


async def test_a_device_token_that_is_not_hex_is_a_bad_device_token(
    client: RawClient, bearer: str
) -> None:
    answer = await client.request(push_headers(bearer), ALERT, path="/3/device/not-a-hex-token")

    assert (answer.status, answer.reason) == (400, "BadDeviceToken")


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"apns_topic": None}, "MissingTopic"),
        ({"apns_topic": "com example app"}, "BadTopic"),
        ({"apns_push_type": "voip"}, "BadTopic"),
        ({"apns_push_type": "banner"}, "InvalidPushType"),
        ({"apns_priority": "7"}, "BadPriority"),
        ({"apns_push_type": "background", "apns_priority": "10"}, "BadPriority"),
        ({"apns_expiration": "tomorrow"}, "BadExpirationDate"),
        ({"apns_collapse_id": "c" * 65}, "BadCollapseId"),
        ({"apns_id": "not-a-uuid"}, "BadMessageId"),
        ({"apns_id": str(uuid.uuid4()).upper()}, "BadMessageId"),
    ],
)
async def test_each_bad_header_gets_its_documented_400_reason(
    client: RawClient, bearer: str, headers: dict[str, str | None], reason: str
) -> None:
    answer = await client.request(push_headers(bearer, **headers), ALERT)

    assert (answer.status, answer.reason) == (400, reason)


async def test_a_repeated_header_is_refused_as_duplicate(client: RawClient, bearer: str) -> None:
    headers = [*push_headers(bearer), ("apns-topic", TOPIC)]

    answer = await client.request(headers, ALERT)

    assert (answer.status, answer.reason) == (400, "DuplicateHeaders")


async def test_a_payload_of_4096_bytes_is_accepted_and_4097_is_too_large(
    client: RawClient, bearer: str
) -> None:
    at_limit = await client.request(push_headers(bearer), payload_of(4096))
    over = await client.request(push_headers(bearer), payload_of(4097))

    assert at_limit.status == 200
    assert (over.status, over.reason) == (413, "PayloadTooLarge")


async def test_a_voip_payload_may_be_5120_bytes_but_not_5121(
    client: RawClient, bearer: str
) -> None:
    voip = push_headers(bearer, apns_push_type="voip", apns_topic=f"{TOPIC}.voip")

    at_limit = await client.request(voip, payload_of(5120))
    over = await client.request(voip, payload_of(5121))

    assert at_limit.status == 200
    assert (over.status, over.reason) == (413, "PayloadTooLarge")


async def test_an_empty_or_non_json_body_is_refused_as_payload_empty(
    client: RawClient, bearer: str
) -> None:
    empty = await client.request(push_headers(bearer))
    garbage = await client.request(push_headers(bearer), b"{not json")

    assert (empty.status, empty.reason) == (400, "PayloadEmpty")
    assert (garbage.status, garbage.reason) == (400, "PayloadEmpty")


async def test_a_token_scripted_as_unregistered_gets_410_with_a_millisecond_timestamp(
    client: RawClient, control: httpx.AsyncClient, bearer: str
) -> None:
    scripted = await control.post(
        f"/control/tokens/{DEVICE}", json={"status": 410, "reason": "Unregistered"}
    )
    assert scripted.status_code == 201

    first = await client.request(push_headers(bearer), ALERT)
    second = await client.request(push_headers(bearer), ALERT)
    assert (await control.delete(f"/control/tokens/{DEVICE}")).json() == {"cleared": 1}
    after_clearing = await client.request(push_headers(bearer), ALERT)

    assert (first.status, json.loads(first.body)) == (
        410,
        {"reason": "Unregistered", "timestamp": int(START * 1000)},
    )
    assert second.status == 410
    assert after_clearing.status == 200
    assert (await control.get("/control/received")).json()[0]["token"] == DEVICE


async def test_a_scripted_503_window_fails_every_push_until_it_ends(
    client: RawClient, control: httpx.AsyncClient, clock: FakeClock, bearer: str
) -> None:
    await control.post(
        "/control/outcomes", json={"status": 503, "reason": "ServiceUnavailable", "seconds": 60}
    )

    during = await client.request(push_headers(bearer), ALERT)
    clock.advance(59)
    near_the_end = await client.request(push_headers(bearer), ALERT, path="/3/device/ff00")
    clock.advance(1)
    after = await client.request(push_headers(bearer), ALERT)

    assert (during.status, during.reason) == (503, "ServiceUnavailable")
    assert near_the_end.status == 503
    assert after.status == 200
    attempts = (await control.get("/control/attempts")).json()
    assert [(a["status"], a["time"] - START) for a in attempts] == [(503, 0), (503, 59), (200, 60)]


async def test_a_status_scripted_for_the_next_two_requests_then_lapses(
    client: RawClient, control: httpx.AsyncClient, bearer: str
) -> None:
    await control.post(
        f"/control/tokens/{DEVICE}", json={"status": 429, "reason": "TooManyRequests", "count": 2}
    )

    statuses = [(await client.request(push_headers(bearer), ALERT)).status for _ in range(3)]

    assert statuses == [429, 429, 200]
    assert (await control.get("/control/outcomes")).json() == []


async def test_goaway_carries_the_json_reason(
    client: RawClient, control: httpx.AsyncClient, bearer: str
) -> None:
    assert (await client.request(push_headers(bearer), ALERT)).status == 200

    told = await control.post("/control/goaway", json={"reason": "Shutdown"})
    assert client.task is not None
    await asyncio.wait_for(client.task, 5)

    assert told.json() == {"connections": 1}
    assert client.goaway is not None
    assert client.goaway.error_code == 0
    assert client.goaway.last_stream_id == 1
    assert json.loads(client.goaway.additional_data or b"") == {"reason": "Shutdown"}


async def test_another_path_is_bad_path_and_another_method_is_not_allowed(
    client: RawClient, bearer: str
) -> None:
    wrong_path = await client.request(push_headers(bearer), ALERT, path="/3/devices/ff00")
    wrong_method = await client.request(push_headers(bearer), method="GET")

    assert (wrong_path.status, wrong_path.reason) == (404, "BadPath")
    assert (wrong_method.status, wrong_method.reason) == (405, "MethodNotAllowed")


async def test_injected_latency_delays_the_answer(
    client: RawClient, control: httpx.AsyncClient, bearer: str
) -> None:
    assert (await control.post("/control/latency", json={"ms": 150})).json() == {"ms": 150}
    started = time.monotonic()

    answer = await client.request(push_headers(bearer), ALERT)

    assert answer.status == 200
    assert time.monotonic() - started >= 0.15


async def test_keys_registered_through_the_control_api_sign_valid_tokens(
    client: RawClient, control: httpx.AsyncClient, clock: FakeClock
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    registered = await control.post(
        "/control/keys",
        json={"team_id": "TEAM999999", "key_id": "KEY9999999", "public_key": public_pem(key)},
    )
    token = provider_token(key, clock(), team="TEAM999999", kid="KEY9999999")

    answer = await client.request(push_headers(f"bearer {token}"), ALERT)

    assert registered.status_code == 201
    assert answer.status == 200


# -- a third-party client ----------------------------------------------------------------------


@pytest.fixture
async def live_emulator(signing_key: ec.EllipticCurvePrivateKey) -> AsyncIterator[ApnsEmulator]:
    """TLS, on the system clock: aioapns mints its tokens from the real time."""
    running = ApnsEmulator(tls=True)
    running.register_key(TEAM, KID, public_pem(signing_key))
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


async def test_aioapns_delivers_through_the_emulator_and_reads_its_410(
    live_emulator: ApnsEmulator, signing_key: ec.EllipticCurvePrivateKey
) -> None:
    from aioapns import APNs, NotificationRequest
    from aioapns.connection import APNsDevelopmentClientProtocol

    # aioapns hard-codes host and port as class constants; a subclass points it here.
    protocol: Any = type(
        "EmulatedApnsProtocol",
        (APNsDevelopmentClientProtocol,),
        {"APNS_SERVER": "127.0.0.1", "APNS_PORT": live_emulator.port},
    )
    apns = APNs(
        key=private_pem(signing_key),
        key_id=KID,
        team_id=TEAM,
        topic=TOPIC,
        use_sandbox=True,
        ssl_context=client_context(live_emulator),
    )
    apns.pool.protocol_class = protocol
    live_emulator.script(410, "Unregistered", token="ff" * 32, timestamp_ms=1_700_000_000_000)
    try:
        # aioapns waits forever for an answer it cannot match; a bounded wait makes that a failure.
        delivered = await asyncio.wait_for(
            apns.send_notification(
                NotificationRequest(device_token=DEVICE, message={"aps": {"alert": "hi"}})
            ),
            5,
        )
        gone = await asyncio.wait_for(
            apns.send_notification(
                NotificationRequest(device_token="ff" * 32, message={"aps": {"alert": "hi"}})
            ),
            5,
        )
    finally:
        apns.pool.close()
        await asyncio.sleep(0.05)

    assert delivered.is_successful
    assert (gone.status, gone.description, gone.timestamp) == (
        "410",
        "Unregistered",
        1_700_000_000_000,
    )
    [received] = live_emulator.received
    assert received["payload"] == {"aps": {"alert": "hi"}}
    assert received["apns_id"] == delivered.notification_id


# -- certificate-based authentication --------------------------------------------------------

SANDBOX_OID = x509.ObjectIdentifier("1.2.840.113635.100.6.3.1")
PRODUCTION_OID = x509.ObjectIdentifier("1.2.840.113635.100.6.3.2")
TOPICS_OID = x509.ObjectIdentifier("1.2.840.113635.100.6.3.6")
ASN1_NULL = b"\x05\x00"


def der(tag: int, content: bytes) -> bytes:
    size = len(content)
    length = bytes([size]) if size < 0x80 else bytes([0x81, size])
    return bytes([tag]) + length + content


def topics_extension(topics: Sequence[tuple[str, str]]) -> bytes:
    """Apple's layout: each topic (UTF8String) followed by a SEQUENCE naming its kind."""
    items = b"".join(
        der(0x0C, topic.encode()) + der(0x30, der(0x0C, kind.encode())) for topic, kind in topics
    )
    return der(0x30, items)


def at(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


@dataclass
class Authority:
    """A stand-in for Apple's WWDR certification authority."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, name: str = "Test WWDR CA") -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(at(START - 10 * 86400))
            .not_valid_after(at(START + 3650 * 86400))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(certificate, key)

    @property
    def pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()

    def issue(
        self,
        uid: str | None = TOPIC,
        *,
        environments: Sequence[str] = ("sandbox",),
        topics: Sequence[tuple[str, str]] | None = None,
        not_before: float = START - 86400,
        not_after: float = START + 365 * 86400,
    ) -> str:
        """A push certificate and its key, as one PEM (what `load_cert_chain` reads)."""
        key = ec.generate_private_key(ec.SECP256R1())
        names = [x509.NameAttribute(NameOID.COMMON_NAME, f"Apple Push Services: {uid}")]
        if uid is not None:
            names.append(x509.NameAttribute(NameOID.USER_ID, uid))
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(names))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(at(not_before))
            .not_valid_after(at(not_after))
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
        )
        for environment in environments:
            oid = SANDBOX_OID if environment == "sandbox" else PRODUCTION_OID
            builder = builder.add_extension(x509.UnrecognizedExtension(oid, ASN1_NULL), False)
        if topics is not None:
            value = topics_extension(topics)
            builder = builder.add_extension(x509.UnrecognizedExtension(TOPICS_OID, value), False)
        certificate = builder.sign(self.key, hashes.SHA256())
        return certificate.public_bytes(serialization.Encoding.PEM).decode() + private_pem(key)


@pytest.fixture
def authority() -> Authority:
    return Authority.create()


@pytest.fixture
async def tls_emulator(
    clock: FakeClock, signing_key: ec.EllipticCurvePrivateKey, authority: Authority
) -> AsyncIterator[ApnsEmulator]:
    """TLS (certificates need it), sandbox, trusting `authority`."""
    running = ApnsEmulator(tls=True, clock=clock)
    running.register_key(TEAM, KID, public_pem(signing_key))
    running.trust_certificate_authority(authority.pem)
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


Connector = Callable[[ApnsEmulator, str], Awaitable[RawClient]]


@pytest.fixture
async def connect_with(tmp_path: Path) -> AsyncIterator[Connector]:
    """Connect to an emulator presenting a client certificate (a PEM of certificate and key)."""
    clients: list[RawClient] = []

    async def connect(emulator: ApnsEmulator, chain: str) -> RawClient:
        path = tmp_path / f"client-{len(clients)}.pem"
        path.write_text(chain)
        context = client_context(emulator)
        context.load_cert_chain(path)
        client = await RawClient.connect(emulator, context=context)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        await client.close()


def cert_headers(**overrides: str | None) -> list[tuple[str, str]]:
    return push_headers(None, **overrides)


async def test_a_certificate_from_a_trusted_authority_authenticates_the_connection(
    tls_emulator: ApnsEmulator, authority: Authority, connect_with: Connector
) -> None:
    client = await connect_with(tls_emulator, authority.issue())

    answer = await client.request(cert_headers(), ALERT)

    assert answer.status == 200
    # No one-stream probation: that is for connections waiting for a valid provider token.
    assert client.max_streams_seen[0] == 1000
    [received] = tls_emulator.received
    assert (received["auth"], received["topic"]) == ("certificate", TOPIC)
    [connection] = tls_emulator.connections()
    assert connection["auth"] == "certificate"
    assert connection["topics"] == [TOPIC]
    assert f"UID={TOPIC}" in connection["certificate_subject"]


async def test_apns_topic_may_be_omitted_on_a_single_topic_certificate(
    tls_emulator: ApnsEmulator, authority: Authority, connect_with: Connector
) -> None:
    client = await connect_with(tls_emulator, authority.issue())

    answer = await client.request(cert_headers(apns_topic=None), ALERT)

    assert answer.status == 200
    assert tls_emulator.received[0]["topic"] == TOPIC


async def test_an_authorization_header_is_ignored_on_a_certificate_connection(
    tls_emulator: ApnsEmulator, authority: Authority, connect_with: Connector
) -> None:
    client = await connect_with(tls_emulator, authority.issue())

    answer = await client.request(push_headers("bearer not-a-jwt"), ALERT)

    assert answer.status == 200
    assert tls_emulator.received[0]["auth"] == "certificate"


async def test_a_certificate_pushes_only_to_its_own_topic(
    tls_emulator: ApnsEmulator, authority: Authority, connect_with: Connector
) -> None:
    client = await connect_with(tls_emulator, authority.issue())

    answer = await client.request(cert_headers(apns_topic="com.example.other"), ALERT)

    assert (answer.status, answer.reason) == (400, "TopicDisallowed")


async def test_a_multi_topic_certificate_pushes_to_its_listed_topics_and_needs_apns_topic(
    tls_emulator: ApnsEmulator, authority: Authority, connect_with: Connector
) -> None:
    topics = [(TOPIC, "app"), (f"{TOPIC}.voip", "voip"), (f"{TOPIC}.complication", "complication")]
    client = await connect_with(tls_emulator, authority.issue(topics=topics))

    voip = await client.request(
        cert_headers(apns_topic=f"{TOPIC}.voip", apns_push_type="voip"), ALERT
    )
    app = await client.request(cert_headers(), ALERT)
    unlisted = await client.request(
        cert_headers(apns_topic=f"{TOPIC}.push-type.widgets", apns_push_type="widgets"), ALERT
    )
    omitted = await client.request(cert_headers(apns_topic=None), ALERT)

    assert (voip.status, app.status) == (200, 200)
    assert (unlisted.status, unlisted.reason) == (400, "TopicDisallowed")
    # Apple: apns-topic "is mandatory when the client is connected using a certificate that
    # supports multiple topics".
    assert (omitted.status, omitted.reason) == (400, "MissingTopic")
    assert tls_emulator.connections()[0]["topics"] == [t for t, _ in topics]


@pytest.mark.parametrize(
    ("environment", "marked_for", "status", "reason"),
    [
        ("sandbox", ("production",), 403, "BadCertificateEnvironment"),
        ("production", ("sandbox",), 403, "BadCertificateEnvironment"),
        ("sandbox", ("sandbox", "production"), 200, None),
        ("production", ("sandbox", "production"), 200, None),
        ("production", ("production",), 200, None),
    ],
)
async def test_a_certificate_for_the_other_environment_is_refused(
    clock: FakeClock,
    authority: Authority,
    connect_with: Connector,
    environment: str,
    marked_for: tuple[str, ...],
    status: int,
    reason: str | None,
) -> None:
    emulator = ApnsEmulator(tls=True, clock=clock, environment=environment)
    emulator.trust_certificate_authority(authority.pem)
    await emulator.start()
    try:
        client = await connect_with(emulator, authority.issue(environments=marked_for))
        answer = await client.request(cert_headers(), ALERT)
    finally:
        await emulator.stop()

    assert (answer.status, answer.reason) == (status, reason)


async def test_a_multi_topic_certificate_without_environment_marks_serves_both(
    clock: FakeClock, authority: Authority, connect_with: Connector
) -> None:
    chain = authority.issue(environments=(), topics=[(TOPIC, "app")])
    answers = []
    for environment in ("sandbox", "production"):
        emulator = ApnsEmulator(tls=True, clock=clock, environment=environment)
        emulator.trust_certificate_authority(authority.pem)
        await emulator.start()
        try:
            client = await connect_with(emulator, chain)
            answers.append((await client.request(cert_headers(), ALERT)).status)
        finally:
            await emulator.stop()

    assert answers == [200, 200]


async def test_an_expired_certificate_is_a_bad_certificate(
    tls_emulator: ApnsEmulator, authority: Authority, connect_with: Connector, clock: FakeClock
) -> None:
    client = await connect_with(tls_emulator, authority.issue(not_after=START + 60))

    before = await client.request(cert_headers(), ALERT)
    clock.advance(61)
    after = await client.request(cert_headers(), ALERT)

    assert before.status == 200
    assert (after.status, after.reason) == (403, "BadCertificate")
    assert [a["reason"] for a in tls_emulator.attempts] == [None, "BadCertificate"]


async def test_a_certificate_not_yet_valid_is_a_bad_certificate(
    tls_emulator: ApnsEmulator, authority: Authority, connect_with: Connector
) -> None:
    client = await connect_with(tls_emulator, authority.issue(not_before=START + 3600))

    answer = await client.request(cert_headers(), ALERT)

    assert (answer.status, answer.reason) == (403, "BadCertificate")
    assert client.max_streams_seen == [1]


@pytest.mark.parametrize(
    "chain",
    [
        pytest.param(lambda a: a.issue(uid=None, topics=[(TOPIC, "app")]), id="no UID"),
        pytest.param(lambda a: a.issue(environments=()), id="no environment"),
    ],
)
async def test_a_certificate_that_is_no_push_certificate_is_a_bad_certificate(
    tls_emulator: ApnsEmulator, authority: Authority, connect_with: Connector, chain: Any
) -> None:
    client = await connect_with(tls_emulator, chain(authority))

    answer = await client.request(cert_headers(), ALERT)

    assert (answer.status, answer.reason) == (403, "BadCertificate")


async def test_a_certificate_from_an_untrusted_authority_fails_the_tls_handshake(
    tls_emulator: ApnsEmulator, connect_with: Connector
) -> None:
    stranger = Authority.create("Someone else")

    # TLS 1.3 ends the client's side of the handshake before the server judged its
    # certificate, so the refusal may come at connect or at the first read.
    async def push() -> Answer:
        client = await connect_with(tls_emulator, stranger.issue())
        return await client.request(cert_headers(), ALERT)

    with pytest.raises((ConnectionError, ssl.SSLError)):
        await push()

    assert tls_emulator.attempts == []
    assert tls_emulator.connections() == []


async def test_without_certificate_or_token_the_provider_token_is_missing(
    tls_emulator: ApnsEmulator,
) -> None:
    client = await RawClient.connect(tls_emulator)
    try:
        answer = await client.request(cert_headers(), ALERT)
    finally:
        await client.close()

    assert (answer.status, answer.reason) == (403, "MissingProviderToken")
    assert tls_emulator.attempts[0]["auth"] is None


async def test_token_clients_are_served_beside_certificate_clients(
    tls_emulator: ApnsEmulator, authority: Authority, connect_with: Connector, bearer: str
) -> None:
    with_certificate = await connect_with(tls_emulator, authority.issue())
    with_token = await RawClient.connect(tls_emulator)
    try:
        by_certificate = await with_certificate.request(cert_headers(), ALERT)
        by_token = await with_token.request(push_headers(bearer), ALERT)
    finally:
        await with_token.close()

    assert (by_certificate.status, by_token.status) == (200, 200)
    assert sorted(r["auth"] for r in tls_emulator.received) == ["certificate", "token"]


async def test_certificate_authorities_are_trusted_through_the_control_api(
    clock: FakeClock, authority: Authority, connect_with: Connector
) -> None:
    emulator = ApnsEmulator(tls=True, clock=clock)
    await emulator.start()
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{emulator.control_port}"
        ) as control:
            trusted = await control.post(
                "/control/certificate-authorities", json={"certificate": authority.pem}
            )
            listed = await control.get("/control/certificate-authorities")
            refused = await control.post(
                "/control/certificate-authorities", json={"certificate": "not a PEM"}
            )
        client = await connect_with(emulator, authority.issue())
        answer = await client.request(cert_headers(), ALERT)
    finally:
        await emulator.stop()

    assert trusted.status_code == 201
    [described] = trusted.json()
    assert described["subject"] == "CN=Test WWDR CA"
    assert listed.json() == [described]
    assert refused.status_code == 400
    assert answer.status == 200


def test_the_topics_extension_is_read_as_apple_writes_it() -> None:
    value = topics_extension([(TOPIC, "app"), (f"{TOPIC}.voip", "voip")])

    assert certificate_topics(value) == [TOPIC, f"{TOPIC}.voip"]
    # Some tools wrap the value in one more OCTET STRING; it reads the same.
    assert certificate_topics(der(0x04, value)) == [TOPIC, f"{TOPIC}.voip"]
    with pytest.raises(ValueError, match="DER"):
        certificate_topics(b"\x30\x05\x0c")
