"""The three mailers against the SMTP, SES and SendGrid emulators over real sockets: TLS that is
required and never bypassed, AUTH, bounces, retries, refused credentials naming themselves,
pooled SMTP sessions, the SSRF guard on a tenant's relay, and each provider's own errors."""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from clarion.adapters.providers.sendgrid import SendGridMailer
from clarion.adapters.providers.ses import SesMailer
from clarion.adapters.providers.smtp import SmtpMailer
from clarion.domain.outcomes import AuthFailed, Delivered, Rejected, RetryLater
from clarion.domain.records import Credential, CredentialInfo
from clarion.emulators.sendgrid import SendGridEmulator
from clarion.emulators.ses import SesEmulator
from clarion.emulators.smtp import SmtpEmulator
from clarion.wire import email as wire

LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"),)
USER, PASSWORD = "clarion", "s3cret-password"
KEY_ID, SECRET = "AKIAEMULATOR0000001", "emulator/secret+key0000000000000000000000"
SG_KEY = "SG.emulator-key-id.emulator-key-secret"


def credential(
    kind: str,
    secret: str,
    *,
    id: str = "cred-1",
    updated_at: datetime | None = None,
    **metadata: Any,
) -> Credential:
    when = updated_at or datetime(2026, 5, 1, tzinfo=UTC)
    info = CredentialInfo(
        id=id,
        tenant_id="tenant-1",
        provider="email",
        name="main",
        app_id=None,
        environment=None,
        metadata={"kind": kind, **metadata},
        status="active",
        paused_reason=None,
        created_at=when,
        updated_at=when,
    )
    return Credential(info=info, secret=secret)


def an_email(to: str = "bob@example.com", number: int = 1) -> wire.Email:
    return wire.Email(
        sender=wire.Mailbox.of("noreply@example.com", "Clarion"),
        to=wire.Mailbox.of(to),
        subject=f"Hello {number}",
        text="plain body",
        html="<p>html body</p>",
        date=datetime.now(UTC),
        message_id=f"dlv-{number}",
        unsubscribe=wire.Unsubscribe("https://c.example/u/tok", "mailto:u@c.example"),
    )


def trusting(pem: bytes | None, tmp_path: Path, name: str) -> ssl.SSLContext:
    assert pem is not None
    path = tmp_path / f"{name}.pem"
    path.write_bytes(pem)
    return ssl.create_default_context(cafile=str(path))


# --- SMTP ----------------------------------------------------------------------------------------


class Relay:
    """An SMTP emulator that counts the sessions it serves."""

    def __init__(self, **options: Any) -> None:
        self.emulator = SmtpEmulator(**options)
        self.emulator.add_user(USER, PASSWORD)
        self.sessions = 0
        make: Callable[[], Any] = self.emulator._protocol

        def counting() -> Any:
            self.sessions += 1
            return make()

        self.emulator._protocol = counting  # type: ignore[method-assign]

    def smtp_credential(self, security: str, *, auth: bool = True, **changes: Any) -> Credential:
        metadata: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.emulator.port,
            "security": security,
            "username": USER if auth else None,
        }
        secret = changes.pop("secret", PASSWORD if auth else "")
        return credential("smtp", secret, **(metadata | changes))


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    found = Relay(require_tls=True, require_auth=True)
    await found.emulator.start()
    yield found
    await found.emulator.stop()


@pytest.fixture
async def mailer(relay: Relay, tmp_path: Path) -> AsyncIterator[SmtpMailer]:
    context = trusting(relay.emulator.certificate_pem, tmp_path, "smtp")
    found = SmtpMailer(
        ssl_context=context,
        allowed_networks=LOOPBACK,
        connections_per_host=2,
        connect_timeout=5,
        request_timeout=10,
        helo_name="clarion.test",
    )
    yield found
    await found.close()


async def test_smtp_with_required_starttls_and_auth_delivers_over_tls(
    relay: Relay, mailer: SmtpMailer
) -> None:
    (outcome,) = await mailer.send(relay.smtp_credential("starttls"), [an_email()])
    assert isinstance(outcome, Delivered), outcome
    assert outcome.reference is not None
    assert "queued as" in outcome.reference
    (message,) = relay.emulator.messages
    assert message["tls"] is True
    assert message["user"] == USER
    assert message["mail_from"] == "noreply@example.com"
    assert message["rcpt_to"] == ["bob@example.com"]
    assert ["List-Unsubscribe-Post", "List-Unsubscribe=One-Click"] in message["headers"]


async def test_smtp_with_implicit_tls_delivers(tmp_path: Path) -> None:
    relay = Relay(tls="implicit")
    await relay.emulator.start()
    mailer = SmtpMailer(
        ssl_context=trusting(relay.emulator.certificate_pem, tmp_path, "implicit"),
        allowed_networks=LOOPBACK,
    )
    try:
        # aiosmtpd offers AUTH only after its own STARTTLS, so this relay takes mail unsigned.
        (outcome,) = await mailer.send(relay.smtp_credential("tls", auth=False), [an_email()])
        assert isinstance(outcome, Delivered), outcome
        assert relay.emulator.messages[0]["tls"] is True
    finally:
        await mailer.close()
        await relay.emulator.stop()


async def test_smtp_never_falls_back_to_clear_text_when_starttls_is_missing(
    tmp_path: Path,
) -> None:
    relay = Relay(tls="none")
    await relay.emulator.start()
    mailer = SmtpMailer(allowed_networks=LOOPBACK)
    try:
        outcomes = await mailer.send(relay.smtp_credential("starttls"), [an_email(), an_email()])
        for outcome in outcomes:
            assert isinstance(outcome, AuthFailed), outcome
            assert outcome.credential_id == "cred-1"
            assert "STARTTLS" in outcome.reason
        assert relay.emulator.messages == []
        assert relay.emulator.attempts == []  # not even a MAIL FROM
    finally:
        await mailer.close()
        await relay.emulator.stop()


async def test_smtp_without_tls_sends_in_clear_only_when_chosen_and_never_auth(
    tmp_path: Path,
) -> None:
    relay = Relay(tls="none")
    await relay.emulator.start()
    mailer = SmtpMailer(allowed_networks=LOOPBACK)
    try:
        (sent,) = await mailer.send(relay.smtp_credential("none", auth=False), [an_email()])
        assert isinstance(sent, Delivered), sent
        assert relay.emulator.messages[0]["tls"] is False
        (refused,) = await mailer.send(relay.smtp_credential("none"), [an_email()])
        assert isinstance(refused, AuthFailed)
        assert "plain" in refused.reason
        assert len(relay.emulator.messages) == 1
    finally:
        await mailer.close()
        await relay.emulator.stop()


async def test_smtp_550_5_1_1_at_rcpt_is_a_bounce_and_the_others_go(
    relay: Relay, mailer: SmtpMailer
) -> None:
    relay.emulator.script(
        550, "5.1.1 <gone@example.com>: no such user", recipient="gone@example.com"
    )
    gone, bob = await mailer.send(
        relay.smtp_credential("starttls"), [an_email("gone@example.com", 1), an_email(number=2)]
    )
    assert wire.is_bounce(gone), gone
    assert "5.1.1" in gone.reason  # type: ignore[union-attr]
    assert isinstance(bob, Delivered), bob
    assert [m["rcpt_to"] for m in relay.emulator.messages] == [["bob@example.com"]]


async def test_smtp_451_is_retried_and_the_next_send_is_delivered(
    relay: Relay, mailer: SmtpMailer
) -> None:
    relay.emulator.script(451, count=1)
    creds = relay.smtp_credential("starttls")
    (first,) = await mailer.send(creds, [an_email()])
    assert isinstance(first, RetryLater), first
    assert "451" in first.reason
    (second,) = await mailer.send(creds, [an_email()])
    assert isinstance(second, Delivered), second
    assert relay.sessions == 1  # the refused transaction was reset, the session kept


async def test_smtp_554_after_data_is_rejected(relay: Relay, mailer: SmtpMailer) -> None:
    relay.emulator.script(554, "5.7.1 Message content rejected", stage="data")
    (outcome,) = await mailer.send(relay.smtp_credential("starttls"), [an_email()])
    assert isinstance(outcome, Rejected), outcome
    assert relay.emulator.messages == []


async def test_smtp_wrong_password_is_auth_failed_naming_the_credential(
    relay: Relay, mailer: SmtpMailer
) -> None:
    outcomes = await mailer.send(
        relay.smtp_credential("starttls", secret="wrong", id="cred-9"),
        [an_email(number=i) for i in range(8)],
    )
    for outcome in outcomes:
        assert isinstance(outcome, AuthFailed), outcome
        assert outcome.credential_id == "cred-9"
        assert "535" in outcome.reason
    assert relay.emulator.messages == []
    # One failed login per pooled connection, not one per message (relays lock accounts).
    assert relay.sessions <= 2


async def test_smtp_missing_auth_is_auth_failed(relay: Relay, mailer: SmtpMailer) -> None:
    (outcome,) = await mailer.send(relay.smtp_credential("starttls", auth=False), [an_email()])
    assert isinstance(outcome, AuthFailed), outcome
    assert "530" in outcome.reason


async def test_smtp_sessions_are_pooled_and_reused_for_many_messages(
    relay: Relay, mailer: SmtpMailer
) -> None:
    creds = relay.smtp_credential("starttls")
    first = await mailer.send(creds, [an_email(f"user{i}@example.com", i) for i in range(10)])
    second = await mailer.send(creds, [an_email(f"more{i}@example.com", i) for i in range(5)])
    assert all(isinstance(o, Delivered) for o in [*first, *second]), [*first, *second]
    assert len(relay.emulator.messages) == 15
    assert 1 <= relay.sessions <= 2  # connections_per_host
    assert mailer.sessions_opened == relay.sessions
    references = {o.reference for o in first if isinstance(o, Delivered)}
    assert len(references) == 10


async def test_smtp_sessions_belong_to_the_credential_that_authenticated_them(
    relay: Relay, mailer: SmtpMailer
) -> None:
    good = relay.smtp_credential("starttls")
    assert isinstance((await mailer.send(good, [an_email()]))[0], Delivered)
    # Same relay and user, another tenant's credential with a wrong password: no free ride.
    thief = relay.smtp_credential("starttls", secret="guess", id="cred-other")
    (stolen,) = await mailer.send(thief, [an_email()])
    assert isinstance(stolen, AuthFailed)
    assert stolen.credential_id == "cred-other"
    # The same credential replaced with a wrong password: its old session is not used either.
    later = good.info.updated_at + timedelta(minutes=1)
    replaced = relay.smtp_credential("starttls", secret="new-but-wrong", updated_at=later)
    (outcome,) = await mailer.send(replaced, [an_email()])
    assert isinstance(outcome, AuthFailed), outcome
    assert len(relay.emulator.messages) == 1


async def test_smtp_host_on_loopback_is_refused_unless_the_operator_allows_it(
    relay: Relay, tmp_path: Path
) -> None:
    guarded = SmtpMailer(ssl_context=trusting(relay.emulator.certificate_pem, tmp_path, "g"))
    try:
        for host in ("127.0.0.1", "localhost"):
            creds = relay.smtp_credential("starttls", host=host)
            (outcome,) = await guarded.send(creds, [an_email()])
            assert isinstance(outcome, AuthFailed), outcome
            assert "not allowed" in outcome.reason
            assert outcome.credential_id == "cred-1"
        assert relay.sessions == 0
    finally:
        await guarded.close()


async def test_smtp_untrusted_certificate_gets_nothing(relay: Relay) -> None:
    strict = SmtpMailer(allowed_networks=LOOPBACK)  # the system CAs only
    try:
        (outcome,) = await strict.send(relay.smtp_credential("starttls"), [an_email()])
        assert isinstance(outcome, AuthFailed), outcome
        assert "certificate" in outcome.reason
        assert relay.emulator.messages == []
    finally:
        await strict.close()


async def test_smtp_unreachable_relay_is_retried(relay: Relay, mailer: SmtpMailer) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    creds = relay.smtp_credential("starttls", port=closed_port)
    (outcome,) = await mailer.send(creds, [an_email()])
    assert isinstance(outcome, RetryLater), outcome


# --- SES -----------------------------------------------------------------------------------------


@pytest.fixture
async def ses() -> AsyncIterator[SesEmulator]:
    emulator = SesEmulator(region="eu-west-1")
    emulator.add_key(KEY_ID, SECRET)
    await emulator.start()
    yield emulator
    await emulator.stop()


@pytest.fixture
async def ses_mailer(ses: SesEmulator, tmp_path: Path) -> AsyncIterator[SesMailer]:
    found = SesMailer(
        ssl_context=trusting(ses.certificate_pem, tmp_path, "ses"), endpoint_url=ses.endpoint
    )
    yield found
    await found.close()


def ses_credential(secret: str = SECRET, **changes: Any) -> Credential:
    metadata: dict[str, Any] = {
        "region": "eu-west-1",
        "access_key_id": KEY_ID,
        "configuration_set": "clarion-events",
        "sns_topic_arn": None,
    }
    return credential("ses", secret, **(metadata | changes))


async def test_ses_delivers_raw_mime_referenced_by_message_id(
    ses: SesEmulator, ses_mailer: SesMailer
) -> None:
    (outcome,) = await ses_mailer.send(ses_credential(), [an_email()])
    assert isinstance(outcome, Delivered), outcome
    (sent,) = ses.sent
    assert outcome.reference == sent["message_id"]
    assert sent["content"]["kind"] == "Raw"
    assert sent["configuration_set"] == "clarion-events"
    assert {"Name": "clarion_delivery", "Value": "dlv-1"} in sent["tags"]
    assert ["List-Unsubscribe-Post", "List-Unsubscribe=One-Click"] in sent["content"]["headers"]


async def test_ses_wrong_secret_is_auth_failed_naming_the_credential(
    ses: SesEmulator, ses_mailer: SesMailer
) -> None:
    bad = ses_credential(secret="wrong/secret+key0000000000000000000000000")
    (outcome,) = await ses_mailer.send(bad, [an_email()])
    assert isinstance(outcome, AuthFailed), outcome
    assert outcome.credential_id == "cred-1"
    assert ses.sent == []


async def test_ses_throttling_is_retried_with_a_hint(
    ses: SesEmulator, ses_mailer: SesMailer
) -> None:
    ses.max_send_rate = 1
    outcomes = await ses_mailer.send(ses_credential(), [an_email(number=i) for i in range(3)])
    retried = [o for o in outcomes if isinstance(o, RetryLater)]
    assert sum(isinstance(o, Delivered) for o in outcomes) == 1, outcomes
    assert len(retried) == 2
    for outcome in retried:
        assert "TooManyRequestsException" in outcome.reason
        assert outcome.after_seconds is not None
        assert outcome.after_seconds > 0


async def test_ses_per_recipient_error_fails_that_message_only(
    ses: SesEmulator, ses_mailer: SesMailer
) -> None:
    ses.script(400, "MessageRejected", "Email address is not verified.", recipient="x@example.com")
    bad, good = await ses_mailer.send(
        ses_credential(), [an_email("x@example.com", 1), an_email(number=2)]
    )
    assert isinstance(bad, Rejected), bad
    assert "MessageRejected" in bad.reason
    assert isinstance(good, Delivered), good


async def test_ses_unreachable_is_retried(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mailer = SesMailer(endpoint_url=f"https://127.0.0.1:{port}", connect_timeout=2)
    try:
        (outcome,) = await mailer.send(ses_credential(), [an_email()])
        assert isinstance(outcome, RetryLater), outcome
    finally:
        await mailer.close()


# --- SendGrid ------------------------------------------------------------------------------------


@pytest.fixture
async def sendgrid() -> AsyncIterator[SendGridEmulator]:
    emulator = SendGridEmulator()
    emulator.add_key(SG_KEY)
    await emulator.start()
    yield emulator
    await emulator.stop()


@pytest.fixture
async def sg_mailer(sendgrid: SendGridEmulator, tmp_path: Path) -> AsyncIterator[SendGridMailer]:
    found = SendGridMailer(
        ssl_context=trusting(sendgrid.certificate_pem, tmp_path, "sendgrid"),
        base_url=sendgrid.url.removesuffix("/v3/mail/send"),
    )
    yield found
    await found.close()


def sg_credential(api_key: str = SG_KEY) -> Credential:
    return credential("sendgrid", api_key, region="global", event_webhook_public_key=None)


async def test_sendgrid_delivers_referenced_by_x_message_id(
    sendgrid: SendGridEmulator, sg_mailer: SendGridMailer
) -> None:
    (outcome,) = await sg_mailer.send(sg_credential(), [an_email()])
    assert isinstance(outcome, Delivered), outcome
    (sent,) = sendgrid.sent
    assert outcome.reference == sent["message_id"]
    body = sent["body"]
    assert body["personalizations"][0]["to"] == [{"email": "bob@example.com"}]
    assert body["custom_args"] == {"clarion_delivery": "dlv-1"}
    assert body["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


async def test_sendgrid_wrong_key_is_auth_failed_naming_the_credential(
    sendgrid: SendGridEmulator, sg_mailer: SendGridMailer
) -> None:
    (outcome,) = await sg_mailer.send(sg_credential("SG.wrong.key"), [an_email()])
    assert isinstance(outcome, AuthFailed), outcome
    assert outcome.credential_id == "cred-1"
    assert sendgrid.sent == []


async def test_sendgrid_rate_limit_is_retried_at_the_reset(
    sendgrid: SendGridEmulator, sg_mailer: SendGridMailer
) -> None:
    sendgrid.rate_limit = 1
    sendgrid.rate_window = 60.0
    outcomes = await sg_mailer.send(sg_credential(), [an_email(number=i) for i in range(3)])
    retried = [o for o in outcomes if isinstance(o, RetryLater)]
    assert sum(isinstance(o, Delivered) for o in outcomes) == 1, outcomes
    assert len(retried) == 2
    for outcome in retried:
        assert "429" in outcome.reason
        assert outcome.after_seconds is not None
        assert 0 < outcome.after_seconds <= 61


async def test_sendgrid_per_recipient_error_fails_that_message_only(
    sendgrid: SendGridEmulator, sg_mailer: SendGridMailer
) -> None:
    sendgrid.script(
        400,
        "Does not contain a valid address.",
        field="personalizations.0.to",
        recipient="x@example.com",
    )
    bad, good = await sg_mailer.send(sg_credential(), [an_email("x@example.com"), an_email()])
    assert isinstance(bad, Rejected), bad
    assert "valid address" in bad.reason
    assert isinstance(good, Delivered), good


async def test_mailers_answer_for_a_credential_of_another_kind(
    ses_mailer: SesMailer, sg_mailer: SendGridMailer, mailer: SmtpMailer
) -> None:
    wrong = credential("smtp", "x", host="a.example", port=25, security="none", username=None)
    for one in (ses_mailer, sg_mailer):
        (outcome,) = await one.send(wrong, [an_email()])
        assert isinstance(outcome, AuthFailed)
        assert outcome.credential_id == "cred-1"
    (outcome,) = await mailer.send(sg_credential(), [an_email()])
    assert isinstance(outcome, AuthFailed)
    assert outcome.credential_id == "cred-1"
