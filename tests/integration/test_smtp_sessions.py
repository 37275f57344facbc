"""SmtpMailer's pooled sessions against the SMTP emulator: no RSET after a transaction that
ended cleanly, RSET after one a refusal cut short, and a reused session the relay closed is
replaced without losing the message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from clarion.adapters.providers.smtp import SmtpMailer
from clarion.domain.outcomes import Delivered, RetryLater
from tests.integration.test_mail_providers import (
    LOOPBACK,
    Relay,
    an_email,
    mailer,
    relay,
    trusting,
)

__all__ = ["mailer", "relay"]  # the fixtures, shared with test_mail_providers


@pytest.fixture
def resets(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the RSETs aiosmtplib sends."""
    sent: list[int] = []
    real = aiosmtplib.SMTP.rset

    async def counting(self: aiosmtplib.SMTP, *args: Any, **kwargs: Any) -> Any:
        sent.append(1)
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(aiosmtplib.SMTP, "rset", counting)
    return sent


async def test_smtp_clean_transactions_are_not_followed_by_rset(
    relay: Relay, mailer: SmtpMailer, resets: list[int]
) -> None:
    creds = relay.smtp_credential("starttls")
    first = await mailer.send(creds, [an_email(f"a{i}@example.com", i) for i in range(6)])
    second = await mailer.send(creds, [an_email(f"b{i}@example.com", i) for i in range(6)])
    assert all(isinstance(o, Delivered) for o in [*first, *second]), [*first, *second]
    assert len(relay.emulator.messages) == 12
    assert relay.sessions <= 2
    assert resets == []


async def test_smtp_a_refused_transaction_is_reset_before_the_next(
    relay: Relay, mailer: SmtpMailer, resets: list[int]
) -> None:
    relay.emulator.script(451, count=1)
    creds = relay.smtp_credential("starttls")
    (refused,) = await mailer.send(creds, [an_email()])
    assert isinstance(refused, RetryLater), refused
    (delivered,) = await mailer.send(creds, [an_email(number=2)])
    assert isinstance(delivered, Delivered), delivered
    assert resets == [1]
    assert relay.sessions == 1


async def test_smtp_a_reused_session_the_relay_dropped_is_replaced_and_nothing_lost(
    tmp_path: Path, resets: list[int]
) -> None:
    dropping = Relay(require_tls=True, require_auth=True)
    servers: list[Any] = []
    make = dropping.emulator._protocol

    def keeping() -> Any:
        server = make()
        servers.append(server)
        return server

    dropping.emulator._protocol = keeping  # type: ignore[method-assign]
    await dropping.emulator.start()
    sender = SmtpMailer(
        ssl_context=trusting(dropping.emulator.certificate_pem, tmp_path, "smtp"),
        allowed_networks=LOOPBACK,
        connections_per_host=1,
        helo_name="clarion.test",
    )
    try:
        creds = dropping.smtp_credential("starttls")
        (first,) = await sender.send(creds, [an_email(number=1)])
        assert isinstance(first, Delivered), first
        (server,) = servers
        # The relay drops the idle session; the client learns it only when it next speaks.
        server.transport.abort()
        (second,) = await sender.send(creds, [an_email(number=2)])
        assert isinstance(second, Delivered), second
        assert len(dropping.emulator.messages) == 2
        assert sender.sessions_opened == 2
        assert resets == []
    finally:
        await sender.close()
        await dropping.emulator.stop()
