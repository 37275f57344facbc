"""The SES emulator over real TLS, driven by httpx with requests that wire/email builds and
signs: SigV4 checked against registered keys, bodies validated, throttling by rate, and the
error shapes wire/email classifies."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from clarion.domain import outcomes
from clarion.emulators.ses import SesEmulator
from clarion.wire import email as wire

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
KEY = wire.AwsCredentials("AKIDEMULATOR", "emulator-secret")


class FakeClock:
    def __init__(self) -> None:
        self.now = NOW.timestamp()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def emulator(clock: FakeClock) -> AsyncIterator[SesEmulator]:
    emu = SesEmulator(region="eu-west-1", clock=clock)
    emu.add_key(KEY.access_key_id, KEY.secret_access_key)
    await emu.start()
    yield emu
    await emu.stop()


@pytest.fixture
async def client(emulator: SesEmulator, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    assert emulator.certificate_pem is not None
    ca = tmp_path / "ses.pem"
    ca.write_bytes(emulator.certificate_pem)
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(ca))) as c:
        yield c


def an_email(to: str = "bob@example.com") -> wire.Email:
    return wire.Email(
        sender=wire.Mailbox.of("noreply@example.com", "Clarion"),
        to=wire.Mailbox.of(to),
        subject="Hello",
        text="plain",
        html="<p>html</p>",
        date=NOW,
        message_id="dlv-1",
        unsubscribe=wire.Unsubscribe("https://c.example/u/tok"),
    )


def build(emulator: SesEmulator, **options: object) -> wire.HttpRequest:
    settings: dict[str, object] = {
        "region": "eu-west-1",
        "credentials": KEY,
        "now": NOW,
        "endpoint": emulator.endpoint,
    } | options
    return wire.ses_send_email_request(an_email(), **settings)  # type: ignore[arg-type]


async def post(client: httpx.AsyncClient, request: wire.HttpRequest) -> outcomes.Outcome:
    answer = await client.request(
        request.method, request.url, headers=list(request.headers), content=request.body
    )
    return wire.classify_ses_response(answer.status_code, answer.headers.items(), answer.content)


async def test_a_signed_raw_send_is_accepted(
    emulator: SesEmulator, client: httpx.AsyncClient
) -> None:
    outcome = await post(client, build(emulator))
    assert isinstance(outcome, outcomes.Delivered)
    assert outcome.reference
    (sent,) = emulator.sent
    assert sent["content"]["kind"] == "Raw"
    assert sent["content"]["subject"] == "Hello"
    assert ["List-Unsubscribe-Post", "List-Unsubscribe=One-Click"] in sent["content"]["headers"]


async def test_a_simple_send_is_accepted(emulator: SesEmulator, client: httpx.AsyncClient) -> None:
    assert isinstance(await post(client, build(emulator, raw=False)), outcomes.Delivered)


async def test_temporary_credentials_are_checked_too(
    emulator: SesEmulator, client: httpx.AsyncClient
) -> None:
    creds = wire.AwsCredentials(KEY.access_key_id, KEY.secret_access_key, "sts-token")
    assert isinstance(await post(client, build(emulator, credentials=creds)), outcomes.Delivered)


async def test_a_wrong_secret_is_refused(emulator: SesEmulator, client: httpx.AsyncClient) -> None:
    bad = wire.AwsCredentials(KEY.access_key_id, "wrong")
    outcome = await post(client, build(emulator, credentials=bad))
    assert isinstance(outcome, outcomes.AuthFailed)
    assert "does not match" in outcome.reason
    assert emulator.sent == []


async def test_an_unknown_key_is_refused(emulator: SesEmulator, client: httpx.AsyncClient) -> None:
    outcome = await post(client, build(emulator, credentials=wire.AwsCredentials("AKIDX", "s")))
    assert isinstance(outcome, outcomes.AuthFailed)
    assert "UnrecognizedClientException" in outcome.reason


async def test_a_tampered_body_is_refused(emulator: SesEmulator, client: httpx.AsyncClient) -> None:
    request = build(emulator)
    tampered = replace(request, body=request.body.replace(b"bob@", b"eve@"))
    assert isinstance(await post(client, tampered), outcomes.AuthFailed)


async def test_a_stale_signature_is_refused(
    emulator: SesEmulator, client: httpx.AsyncClient
) -> None:
    outcome = await post(client, build(emulator, now=NOW - timedelta(minutes=20)))
    assert isinstance(outcome, outcomes.AuthFailed)
    assert "expired" in outcome.reason


async def test_another_region_is_refused(emulator: SesEmulator, client: httpx.AsyncClient) -> None:
    assert isinstance(await post(client, build(emulator, region="us-east-1")), outcomes.AuthFailed)


async def test_invalid_bodies_are_bad_requests(
    emulator: SesEmulator, client: httpx.AsyncClient
) -> None:
    for body in (
        {"FromEmailAddress": "a@example.com", "Destination": {"ToAddresses": ["b@example.com"]}},
        {
            "FromEmailAddress": "a@example.com",
            "Destination": {"ToAddresses": []},
            "Content": {"Raw": {"Data": "aGk="}},
        },
        {
            "FromEmailAddress": "a@example.com",
            "Destination": {"ToAddresses": ["b@example.com"]},
            "Content": {"Raw": {"Data": "not base64!"}},
        },
    ):
        request = wire.sigv4_sign(
            wire.HttpRequest(
                "POST",
                emulator.endpoint + wire.SES_PATH,
                (("Content-Type", "application/json"),),
                json.dumps(body).encode(),
            ),
            KEY,
            region="eu-west-1",
            service="ses",
            now=NOW,
        )
        outcome = await post(client, request)
        assert isinstance(outcome, outcomes.Rejected), outcome
        assert "BadRequestException" in outcome.reason


async def test_an_unverified_sender_is_message_rejected(
    emulator: SesEmulator, client: httpx.AsyncClient
) -> None:
    emulator.verify_identity("other.example")
    outcome = await post(client, build(emulator))
    assert isinstance(outcome, outcomes.Rejected)
    assert "MessageRejected" in outcome.reason
    emulator.verify_identity("example.com")
    assert isinstance(await post(client, build(emulator)), outcomes.Delivered)


async def test_sending_above_the_rate_is_throttled(
    emulator: SesEmulator, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    emulator.max_send_rate = 2
    results = [await post(client, build(emulator)) for _ in range(3)]
    assert [type(r).__name__ for r in results] == ["Delivered", "Delivered", "RetryLater"]
    assert "TooManyRequestsException" in str(results[2])
    clock.now += 1.5
    assert isinstance(await post(client, build(emulator)), outcomes.Delivered)


async def test_scripted_errors_come_back_in_aws_shape(
    emulator: SesEmulator, client: httpx.AsyncClient
) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{emulator.control_port}") as c:
        answer = await c.post(
            "/control/errors",
            json={"status": 400, "code": "AccountSuspendedException", "count": 1},
        )
        assert answer.status_code == 201
    request = build(emulator)
    raw = await client.post(request.url, headers=list(request.headers), content=request.body)
    assert raw.status_code == 400
    assert raw.headers["x-amzn-errortype"].startswith("AccountSuspendedException:")
    assert set(raw.json()) == {"message"}
    assert isinstance(await post(client, build(emulator)), outcomes.Delivered)
