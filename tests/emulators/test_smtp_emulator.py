"""The SMTP emulator, driven by aiosmtplib over real sockets: STARTTLS and implicit TLS, AUTH
required and refused, scripted 451-once and 550-always per recipient, parsed messages."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiosmtplib
import httpx
import pytest

from clarion.emulators.smtp import SmtpEmulator
from clarion.wire import email as wire

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def message(to: str = "bob@example.com") -> bytes:
    return wire.render_message(
        wire.Email(
            sender=wire.Mailbox.of("noreply@example.com", "Clarion"),
            to=wire.Mailbox.of(to),
            subject="Héllo",
            text="plain body",
            html="<p>html body</p>",
            date=NOW,
            message_id="dlv-1",
            unsubscribe=wire.Unsubscribe("https://c.example/u/tok", "mailto:u@c.example"),
        )
    )


def trust(emulator: SmtpEmulator, tmp_path: Path) -> ssl.SSLContext:
    assert emulator.certificate_pem is not None
    ca = tmp_path / "smtp.pem"
    ca.write_bytes(emulator.certificate_pem)
    return ssl.create_default_context(cafile=str(ca))


@pytest.fixture
async def emulator() -> AsyncIterator[SmtpEmulator]:
    emu = SmtpEmulator(require_tls=True, require_auth=True)
    emu.add_user("clarion", "s3cret")
    await emu.start()
    yield emu
    await emu.stop()


async def send(
    emulator: SmtpEmulator, tmp_path: Path, to: str = "bob@example.com", **options: object
) -> tuple[dict[str, aiosmtplib.SMTPResponse], str]:
    settings: dict[str, object] = {
        "hostname": "127.0.0.1",
        "port": emulator.port,
        "start_tls": True,
        "tls_context": trust(emulator, tmp_path),
        "username": "clarion",
        "password": "s3cret",
        "timeout": 10,
    } | options
    return await aiosmtplib.send(  # type: ignore[call-overload,no-any-return]
        message(to), sender="noreply@example.com", recipients=[to], **settings
    )


async def test_a_message_over_starttls_with_auth_is_recorded_parsed(
    emulator: SmtpEmulator, tmp_path: Path
) -> None:
    refused, reply = await send(emulator, tmp_path)
    assert refused == {}
    assert reply.startswith("2.0.0 OK: queued as")
    (recorded,) = emulator.messages
    assert recorded["rcpt_to"] == ["bob@example.com"]
    assert recorded["tls"] is True
    assert recorded["user"] == "clarion"
    assert recorded["subject"] == "Héllo"
    assert recorded["text"].strip() == "plain body"
    assert recorded["html"].strip() == "<p>html body</p>"
    headers = dict(recorded["headers"])
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    outcome = wire.classify_smtp_reply(250, reply, stage=wire.SmtpStage.DATA)
    assert outcome is not None
    assert type(outcome).__name__ == "Delivered"


async def test_mail_before_starttls_is_refused(emulator: SmtpEmulator, tmp_path: Path) -> None:
    with pytest.raises(aiosmtplib.SMTPResponseException) as caught:
        await send(emulator, tmp_path, start_tls=False, username=None, password=None)
    assert caught.value.code == 530
    assert emulator.messages == []


async def test_a_wrong_password_is_535(emulator: SmtpEmulator, tmp_path: Path) -> None:
    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as caught:
        await send(emulator, tmp_path, password="wrong")
    assert caught.value.code == 535
    outcome = wire.classify_smtp_reply(535, caught.value.message, stage=wire.SmtpStage.AUTH)
    assert type(outcome).__name__ == "AuthFailed"


async def test_mail_without_auth_is_refused(emulator: SmtpEmulator, tmp_path: Path) -> None:
    with pytest.raises(aiosmtplib.SMTPResponseException) as caught:
        await send(emulator, tmp_path, username=None, password=None)
    assert caught.value.code == 530


async def test_a_451_once_then_success(emulator: SmtpEmulator, tmp_path: Path) -> None:
    emulator.script(451, recipient="bob@example.com", count=1)
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as caught:
        await send(emulator, tmp_path)
    (refusal,) = caught.value.recipients
    assert refusal.code == 451
    outcome = wire.classify_smtp_reply(refusal.code, refusal.message, stage=wire.SmtpStage.RCPT)
    assert type(outcome).__name__ == "RetryLater"
    refused, _ = await send(emulator, tmp_path)
    assert refused == {}
    assert len(emulator.messages) == 1


async def test_a_550_always_is_a_bounce(emulator: SmtpEmulator, tmp_path: Path) -> None:
    emulator.script(550, "5.1.1 <gone@example.com>: user unknown", recipient="gone@example.com")
    for _ in range(2):
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as caught:
            await send(emulator, tmp_path, to="gone@example.com")
        (refusal,) = caught.value.recipients
        outcome = wire.classify_smtp_reply(refusal.code, refusal.message, stage=wire.SmtpStage.RCPT)
        assert wire.is_bounce(outcome)  # type: ignore[arg-type]
    refused, _ = await send(emulator, tmp_path, to="bob@example.com")
    assert refused == {}


async def test_a_scripted_reply_after_data(emulator: SmtpEmulator, tmp_path: Path) -> None:
    emulator.script(554, "5.6.0 content rejected", stage="data", count=1)
    with pytest.raises(aiosmtplib.SMTPDataError) as caught:
        await send(emulator, tmp_path)
    assert caught.value.code == 554
    assert emulator.messages == []


async def test_implicit_tls(tmp_path: Path) -> None:
    emu = SmtpEmulator(tls="implicit")
    await emu.start()
    try:
        refused, _ = await aiosmtplib.send(
            message(),
            sender="noreply@example.com",
            recipients=["bob@example.com"],
            hostname="127.0.0.1",
            port=emu.port,
            use_tls=True,
            tls_context=trust(emu, tmp_path),
            timeout=10,
        )
        assert refused == {}
        assert emu.messages[0]["tls"] is True
    finally:
        await emu.stop()


async def test_the_control_api_scripts_and_lists(emulator: SmtpEmulator, tmp_path: Path) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{emulator.control_port}") as c:
        answer = await c.post(
            "/control/replies", json={"code": 451, "recipient": "bob@example.com", "count": 1}
        )
        assert answer.status_code == 201
        assert (await c.post("/control/replies", json={"code": 250})).status_code == 400
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
            await send(emulator, tmp_path)
        await send(emulator, tmp_path)
        listed = (await c.get("/control/messages")).json()
        assert [m["rcpt_to"] for m in listed] == [["bob@example.com"]]
        attempts = (await c.get("/control/attempts")).json()
        assert attempts[0]["reply"].startswith("451")
        assert (await c.post("/control/reset")).json() == {"reset": True}
        assert (await c.get("/control/messages")).json() == []


async def test_without_bodies_only_the_envelope_is_kept_and_connections_are_counted(
    tmp_path: Path,
) -> None:
    emu = SmtpEmulator(store_bodies=False)
    await emu.start()
    try:
        for _ in range(2):
            await send(emu, tmp_path, username=None, password=None)
        first, _ = emu.messages
        assert first["rcpt_to"] == ["bob@example.com"]
        assert first["size"] > 0
        assert "raw" not in first
        assert "headers" not in first
        async with httpx.AsyncClient() as client:
            answer = await client.get(f"http://127.0.0.1:{emu.control_port}/control/stats")
        assert answer.json() == {"messages": 2, "attempts": 4, "connections": 2}
    finally:
        await emu.stop()
