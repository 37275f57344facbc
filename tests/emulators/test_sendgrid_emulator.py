"""The SendGrid emulator over real TLS, driven by httpx with requests wire/email builds:
bearer keys, body validation, 202 + X-Message-Id, the errors shape, 429 with X-RateLimit-*."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from clarion.domain import outcomes
from clarion.emulators.sendgrid import SendGridEmulator
from clarion.wire import email as wire

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
API_KEY = "SG.emulator-key"


class FakeClock:
    def __init__(self) -> None:
        self.now = NOW.timestamp()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def emulator(clock: FakeClock) -> AsyncIterator[SendGridEmulator]:
    emu = SendGridEmulator(clock=clock)
    emu.add_key(API_KEY)
    await emu.start()
    yield emu
    await emu.stop()


@pytest.fixture
async def client(emulator: SendGridEmulator, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    assert emulator.certificate_pem is not None
    ca = tmp_path / "sg.pem"
    ca.write_bytes(emulator.certificate_pem)
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(ca))) as c:
        yield c


def build(emulator: SendGridEmulator, api_key: str = API_KEY) -> wire.HttpRequest:
    email = wire.Email(
        sender=wire.Mailbox.of("noreply@example.com", "Clarion"),
        to=wire.Mailbox.of("bob@example.com", "Bob"),
        subject="Hello",
        text="plain",
        html="<p>html</p>",
        date=NOW,
        message_id="dlv-1",
        unsubscribe=wire.Unsubscribe("https://c.example/u/tok", "mailto:u@c.example"),
    )
    return wire.sendgrid_request(
        email, api_key=api_key, custom_args={"delivery": "dlv-1"}, url=emulator.url
    )


async def post(client: httpx.AsyncClient, request: wire.HttpRequest) -> httpx.Response:
    return await client.request(
        request.method, request.url, headers=list(request.headers), content=request.body
    )


def classify(answer: httpx.Response) -> outcomes.Outcome:
    return wire.classify_sendgrid_response(
        answer.status_code, answer.headers.items(), answer.content, now=NOW
    )


async def test_a_send_is_202_with_a_message_id(
    emulator: SendGridEmulator, client: httpx.AsyncClient
) -> None:
    answer = await post(client, build(emulator))
    assert answer.status_code == 202
    assert answer.content == b""
    outcome = classify(answer)
    assert isinstance(outcome, outcomes.Delivered)
    assert outcome.reference
    (sent,) = emulator.sent
    assert sent["body"]["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert sent["body"]["custom_args"] == {"delivery": "dlv-1"}


async def test_a_wrong_key_is_401(emulator: SendGridEmulator, client: httpx.AsyncClient) -> None:
    answer = await post(client, build(emulator, api_key="SG.wrong"))
    assert answer.status_code == 401
    assert set(answer.json()["errors"][0]) == {"message", "field", "help"}
    assert isinstance(classify(answer), outcomes.AuthFailed)


async def test_an_unverified_sender_is_403(
    emulator: SendGridEmulator, client: httpx.AsyncClient
) -> None:
    emulator.verify_sender("someone@else.example")
    answer = await post(client, build(emulator))
    assert answer.status_code == 403
    assert isinstance(classify(answer), outcomes.AuthFailed)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda b: b.pop("personalizations"), "personalizations"),
        (
            lambda b: b["personalizations"][0]["to"].append({"email": "bob@example.com"}),
            "personalizations.0.to",
        ),
        (lambda b: b.update({"from": {"email": "not an address"}}), "from.email"),
        (lambda b: b.pop("subject"), "subject"),
        (lambda b: b["content"].reverse(), "content"),
        (lambda b: b["headers"].update({"X-Evil": "a\r\nBcc: x"}), "headers"),
        (lambda b: b.update({"custom_args": {"n": 1}}), "custom_args"),
    ],
)
async def test_invalid_bodies_are_400_with_the_field(
    emulator: SendGridEmulator, client: httpx.AsyncClient, change: object, field: str
) -> None:
    request = build(emulator)
    body = json.loads(request.body)
    change(body)  # type: ignore[operator]
    answer = await post(client, replace(request, body=json.dumps(body).encode()))
    assert answer.status_code == 400
    assert answer.json()["errors"][0]["field"] == field
    assert isinstance(classify(answer), outcomes.Rejected)


async def test_above_the_rate_is_429_until_the_reset(
    emulator: SendGridEmulator, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    emulator.rate_limit, emulator.rate_window = 2, 10.0
    answers = [await post(client, build(emulator)) for _ in range(3)]
    assert [a.status_code for a in answers] == [202, 202, 429]
    assert answers[1].headers["x-ratelimit-remaining"] == "0"
    outcome = classify(answers[2])
    assert isinstance(outcome, outcomes.RetryLater)
    assert outcome.after_seconds == 10.0
    clock.now += 10
    assert (await post(client, build(emulator))).status_code == 202


async def test_scripted_errors(emulator: SendGridEmulator, client: httpx.AsyncClient) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{emulator.control_port}") as c:
        assert (
            await c.post("/control/errors", json={"status": 503, "message": "down", "count": 1})
        ).status_code == 201
    assert isinstance(classify(await post(client, build(emulator))), outcomes.RetryLater)
    assert (await post(client, build(emulator))).status_code == 202
