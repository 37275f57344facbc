"""The email issue's done-scenarios through a running Clarion (HTTP API, relay, router, delivery
worker, one-click unsubscribe and bounce webhooks) and the mail emulators, over real sockets:

- SMTP with STARTTLS required and AUTH: an event to 500 users in three locales gives each one
  exactly one well-formed multipart/alternative mail in its locale, with RFC 8058 one-click
  unsubscribe headers and the event's data escaped in the HTML; a one-click POST of a user's
  link suppresses the next mail of that category for them alone;
- SMTP bounces and retries: a ``550 5.1.1`` at RCPT fails the delivery and marks the address
  bounced, which suppresses later mail; a ``451`` once is retried after a second or two;
- the same through the SES and SendGrid emulators (locales, MIME or the JSON body, unsubscribe,
  a permanent bounce reported afterwards through signed SNS or the signed Event Webhook, a 429
  once retried);
- a primary credential the relay refuses (wrong password): mail goes through the fallback (a
  SendGrid credential), the primary is paused and skipped, and used again once replaced.

The 500-user SMTP scenario (about 35 s per database on a loaded two-core machine, most of it
the stdlib `email` package building and parsing 1,000 messages on both ends) and the
bounce/retry one run on both databases. The SES, SendGrid and fallback scenarios run on SQLite
only: what they add is the providers' wire and webhooks, which do not depend on the database
(suppression, bounce marking and retries are exercised on PostgreSQL by the SMTP scenarios),
and the file must stay within about two minutes.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from clarion.emulators.sendgrid import SendGridEmulator
from clarion.emulators.ses import SesEmulator
from clarion.emulators.smtp import SmtpEmulator
from clarion.settings import Settings
from tests.support import Running, Tenant, running, tenant_client

PUBLIC = "https://notify.example"
SMTP_USER, SMTP_PASSWORD = "clarion", "s3cret-password"
REGION = "eu-west-1"
SES_KEY_ID, SES_SECRET = "AKIAEMULATOR0000001", "emulator/secret+key0000000000000000000000"
TOPIC = "arn:aws:sns:eu-west-1:123456789012:ses-feedback"
SENDGRID_KEY = "SG.emulator-key-id.emulator-key-secret"

EVENT_TYPE = "news.digest"
CATEGORY = "news"
NOTE = "<script>alert(1)</script> & friends"
ESCAPED_NOTE = "&lt;script&gt;alert(1)&lt;/script&gt; &amp; friends"
LOCALES = ("en", "de", "fr")
GREETING = {"en": "News for", "de": "Neuigkeiten für", "fr": "Nouvelles pour"}
BODY = {"en": "Hello", "de": "Hallo", "fr": "Bonjour"}
TEMPLATES = {
    "channels": {
        "email": {
            locale: {
                "subject": GREETING[locale] + " {{ user.id }}: {{ event.title }}",
                "text": BODY[locale]
                + " {{ user.id }}, {{ event.data.note }}\nUnsubscribe: {{ unsubscribe_url }}",
                "html": "<p>"
                + BODY[locale]
                + " {{ user.id }}</p><p>{{ event.data.note }}</p>"
                + '<p><a href="{{ unsubscribe_url }}">unsubscribe</a></p>',
            }
            for locale in LOCALES
        }
    }
}
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


# --- emulators and the server ------------------------------------------------------------------


@pytest.fixture
async def relay() -> AsyncIterator[SmtpEmulator]:
    emulator = SmtpEmulator(require_tls=True, require_auth=True)
    emulator.add_user(SMTP_USER, SMTP_PASSWORD)
    await emulator.start()
    yield emulator
    await emulator.stop()


@pytest.fixture
async def ses() -> AsyncIterator[SesEmulator]:
    emulator = SesEmulator(region=REGION)
    emulator.add_key(SES_KEY_ID, SES_SECRET)
    await emulator.start()
    yield emulator
    await emulator.stop()


@pytest.fixture
async def sendgrid() -> AsyncIterator[SendGridEmulator]:
    emulator = SendGridEmulator()
    emulator.add_key(SENDGRID_KEY)
    await emulator.start()
    yield emulator
    await emulator.stop()


def with_email(
    settings: Settings,
    tmp_path: Path,
    *,
    relay: SmtpEmulator | None = None,
    ses: SesEmulator | None = None,
    sendgrid: SendGridEmulator | None = None,
) -> Settings:
    """Email on, pointing SES and SendGrid at their emulators, and trusting the emulators'
    certificates: one bundle, as the mailers share `email.ca_file`."""
    pems = [e.certificate_pem for e in (relay, ses, sendgrid) if e is not None]
    bundle = tmp_path / "mail-ca.pem"
    bundle.write_bytes(b"".join(p for p in pems if p is not None))
    update: dict[str, Any] = {
        "enabled": True,
        "public_url": PUBLIC,
        "ca_file": bundle,
        "smtp_allowed_networks": ["127.0.0.1/32"],
    }
    if ses is not None:
        update |= {
            "ses_endpoint_url": ses.endpoint,
            "sns_allowed_url_prefixes": [f"https://127.0.0.1:{ses.port}/"],
            "sns_ca_file": bundle,
        }
    if sendgrid is not None:
        update["sendgrid_base_url"] = f"https://127.0.0.1:{sendgrid.port}"
    return settings.model_copy(update={"email": settings.email.model_copy(update=update)})


def smtp_credential(relay: SmtpEmulator, password: str = SMTP_PASSWORD) -> dict[str, Any]:
    return {
        "kind": "smtp",
        "host": "127.0.0.1",
        "port": relay.port,
        "security": "starttls",
        "username": SMTP_USER,
        "password": password,
    }


SES_CREDENTIAL = {
    "kind": "ses",
    "region": REGION,
    "access_key_id": SES_KEY_ID,
    "secret_access_key": SES_SECRET,
    "sns_topic_arn": TOPIC,
}


def sendgrid_credential(sendgrid: SendGridEmulator) -> dict[str, Any]:
    return {
        "kind": "sendgrid",
        "api_key": SENDGRID_KEY,
        "event_webhook_public_key": sendgrid.event_public_key,
    }


# --- the tenant's side, over HTTP ----------------------------------------------------------------


async def put(tenant: Tenant, path: str, body: dict[str, Any]) -> dict[str, Any]:
    answer = await tenant.http.put(path, json=body)
    assert answer.status_code in (200, 201), (path, answer.text)
    found: dict[str, Any] = answer.json()
    return found


async def get(tenant: Tenant, path: str) -> dict[str, Any]:
    answer = await tenant.http.get(path)
    assert answer.status_code == 200, (path, answer.text)
    found: dict[str, Any] = answer.json()
    return found


async def set_up_sender(
    tenant: Tenant, credentials: dict[str, dict[str, Any]], *, fallback: str | None = None
) -> None:
    """The tenant's email credentials (the first is the provider), sender and templates."""
    for name, body in credentials.items():
        await put(tenant, f"/v1/credentials/email/{name}", body)
    sender = {
        "provider": next(iter(credentials)),
        "fallback": fallback,
        "sender": "news@example.com",
        "sender_name": "Example News",
        "reply_to": "help@example.com",
    }
    await put(tenant, "/v1/settings", {"default_locale": "en", "email": sender})
    await put(tenant, f"/v1/templates/{EVENT_TYPE}", TEMPLATES)


def address_of(user: str) -> str:
    return f"{user}@example.com"


async def create_users(tenant: Tenant, count: int, prefix: str = "user") -> dict[str, str]:
    """`count` users with addresses, spread over the three locales: user → locale."""
    users = {f"{prefix}-{n:03d}": LOCALES[n % len(LOCALES)] for n in range(count)}
    slots = asyncio.Semaphore(8)

    async def one(user: str, locale: str) -> None:
        async with slots:
            await put(tenant, f"/v1/users/{user}", {"email": address_of(user), "locale": locale})

    await asyncio.gather(*(one(u, loc) for u, loc in users.items()))
    return users


async def post_event(tenant: Tenant, users: Iterable[str], title: str) -> str:
    answer = await tenant.http.post(
        "/v1/events",
        json={
            "type": EVENT_TYPE,
            "recipients": {"users": list(users)},
            "title": title,
            "body": "This week's news",
            "data": {"note": NOTE},
            "category": CATEGORY,
            "channels": ["email"],
        },
    )
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


async def until_settled(
    tenant: Tenant, event_id: str, *, deliveries: int, timeout: float
) -> dict[str, int]:
    """The event's email delivery counts (those not zero) once it is routed with `deliveries`
    email deliveries and none of them is pending."""
    deadline = time.monotonic() + timeout
    report: dict[str, Any] = {}
    while time.monotonic() < deadline:
        report = await get(tenant, f"/v1/events/{event_id}")
        mail = report["channels"].get("email")
        if report["routed_at"] and mail:
            counts = {k: v for k, v in mail["by_status"].items() if v}
            if sum(counts.values()) == deliveries and not counts.get("pending"):
                return counts
        await asyncio.sleep(0.25)
    raise AssertionError(f"event {event_id} did not settle in {timeout} s: {report}")


async def until_email_status(tenant: Tenant, user: str, wanted: str, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        status = (await get(tenant, f"/v1/users/{user}"))["email_status"]
        if status == wanted:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{user}'s email_status is {status!r}, not {wanted!r}")


async def email_delivery(tenant: Tenant, event_id: str, user: str) -> dict[str, Any]:
    report = await get(tenant, f"/v1/events/{event_id}/recipients/{user}")
    found: list[dict[str, Any]] = [d for d in report["deliveries"] if d["channel"] == "email"]
    (delivery,) = found
    return delivery


async def unsubscribe(srv: Running, url: str) -> None:
    """What a mail client does with a List-Unsubscribe-Post header (RFC 8058): POST the form."""
    assert url.startswith(f"{PUBLIC}/v1/unsubscribe/"), url
    async with httpx.AsyncClient(base_url=srv.base_url, timeout=10) as anon:
        answer = await anon.post(urlsplit(url).path, data=ONE_CLICK)
    assert answer.status_code == 200, answer.text
    assert CATEGORY in answer.text


# --- what a message must look like --------------------------------------------------------------


def https_unsubscribe_url(list_unsubscribe: str) -> str:
    """The https target of a List-Unsubscribe header (RFC 2369: `<url>, <mailto:...>`)."""
    targets: list[str] = re.findall(r"<([^>]*)>", list_unsubscribe)
    (url,) = [t for t in targets if t.startswith("https://")]
    return url


def expected_subject(user: str, locale: str, title: str) -> str:
    return f"{GREETING[locale]} {user}: {title}"


def check_mime(raw: bytes, user: str, locale: str, title: str) -> str:
    """Check one raw message for `user` (parsed with the stdlib); its unsubscribe URL."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert message.get_content_type() == "multipart/alternative", message.get_content_type()
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert str(message["Subject"]) == expected_subject(user, locale, title)
    assert message["To"].addresses[0].addr_spec == address_of(user)
    assert message["From"].addresses[0].addr_spec == "news@example.com"
    assert message["From"].addresses[0].display_name == "Example News"
    assert message["Reply-To"].addresses[0].addr_spec == "help@example.com"
    assert message["Message-ID"]
    assert message["Date"]
    # On the wire lines end in CRLF, which the parser leaves in the parts' content.
    text = parts[0].get_content().replace("\r\n", "\n")
    html = parts[1].get_content().replace("\r\n", "\n")
    assert text.startswith(f"{BODY[locale]} {user}, {NOTE}\n"), text
    assert f"{BODY[locale]} {user}" in html
    assert ESCAPED_NOTE in html, html
    assert "<script" not in html.lower()
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = https_unsubscribe_url(str(message["List-Unsubscribe"]))
    assert f"Unsubscribe: {url}" in text
    return url


def check_sendgrid_body(body: dict[str, Any], user: str, locale: str, title: str) -> str:
    """Check one SendGrid v3 mail/send body for `user`; its unsubscribe URL."""
    (personalization,) = body["personalizations"]
    assert [r["email"] for r in personalization["to"]] == [address_of(user)]
    assert body["from"]["email"] == "news@example.com"
    assert body["reply_to"]["email"] == "help@example.com"
    assert body["subject"] == expected_subject(user, locale, title)
    assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
    text, html = (c["value"] for c in body["content"])
    assert text.startswith(f"{BODY[locale]} {user}, {NOTE}\n"), text
    assert ESCAPED_NOTE in html, html
    assert "<script" not in html.lower()
    headers = body["headers"]
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = https_unsubscribe_url(headers["List-Unsubscribe"])
    assert f"Unsubscribe: {url}" in text
    return url


def smtp_received(relay: SmtpEmulator) -> Counter[str]:
    return Counter(r for m in relay.messages for r in m["rcpt_to"])


def rcpt_attempts(relay: SmtpEmulator, address: str) -> list[dict[str, Any]]:
    return [a for a in relay.attempts if a["stage"] == "rcpt" and a["recipient"] == address]


# --- SMTP ----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_five_hundred_users_in_three_locales_each_get_one_safe_mail_over_smtp(
    settings: Settings, relay: SmtpEmulator, tmp_path: Path
) -> None:
    async with (
        running(with_email(settings, tmp_path, relay=relay)) as srv,
        tenant_client(srv) as t,
    ):
        await set_up_sender(t, {"relay": smtp_credential(relay)})
        users = await create_users(t, 500)

        first = await post_event(t, users, "Week 1")
        assert await until_settled(t, first, deliveries=500, timeout=90) == {"sent": 500}
        assert smtp_received(relay) == Counter({address_of(u): 1 for u in users})
        links: dict[str, str] = {}
        for message in relay.messages:
            assert message["tls"] is True
            assert message["user"] == SMTP_USER
            assert message["mail_from"] == "news@example.com"
            (to,) = message["rcpt_to"]
            user = to.split("@")[0]
            links[user] = check_mime(message["raw"].encode(), user, users[user], "Week 1")
        assert len(set(links.values())) == 500  # one signed link per user

        quitter = "user-007"
        await unsubscribe(srv, links[quitter])
        relay.reset()
        second = await post_event(t, users, "Week 2")
        counts = await until_settled(t, second, deliveries=500, timeout=90)
        assert counts == {"sent": 499, "suppressed": 1}
        assert (await email_delivery(t, second, quitter))["status"] == "suppressed"
        assert (await email_delivery(t, second, "user-008"))["status"] == "sent"
        assert smtp_received(relay) == Counter({address_of(u): 1 for u in users if u != quitter})
        assert rcpt_attempts(relay, address_of(quitter)) == []
        for message in relay.messages[:30]:
            user = message["rcpt_to"][0].split("@")[0]
            check_mime(message["raw"].encode(), user, users[user], "Week 2")
        # Unsubscribed from the category's email only: the address itself stays subscribed.
        assert (await get(t, f"/v1/users/{quitter}"))["email_status"] == "subscribed"


async def test_an_smtp_hard_bounce_suppresses_the_address_and_a_451_is_retried(
    settings: Settings, relay: SmtpEmulator, tmp_path: Path
) -> None:
    async with (
        running(with_email(settings, tmp_path, relay=relay)) as srv,
        tenant_client(srv) as t,
    ):
        await set_up_sender(t, {"relay": smtp_credential(relay)})
        users = await create_users(t, 12)
        gone, slow = "user-003", "user-004"
        relay.script(550, "5.1.1 <user-003@example.com>: no such user", recipient=address_of(gone))
        relay.script(451, "4.3.0 try again later", recipient=address_of(slow), count=1)

        first = await post_event(t, users, "Week 1")
        counts = await until_settled(t, first, deliveries=12, timeout=60)
        assert counts == {"sent": 11, "failed": 1}
        bounced = await email_delivery(t, first, gone)
        assert bounced["status"] == "failed"
        assert "5.1.1" in bounced["error"]
        assert (await get(t, f"/v1/users/{gone}"))["email_status"] == "bounced"
        assert gone not in {m["rcpt_to"][0].split("@")[0] for m in relay.messages}

        retried = await email_delivery(t, first, slow)
        assert retried["status"] == "sent"
        assert retried["attempts"] == 2
        tries = rcpt_attempts(relay, address_of(slow))
        assert [a["reply"][:3] for a in tries] == ["451", "250"]
        waited = tries[1]["time"] - tries[0]["time"]
        assert 0.9 <= waited < 15, waited  # the first retry waits 1-2 s (with jitter)
        assert smtp_received(relay) == Counter({address_of(u): 1 for u in users if u != gone})

        relay.reset()
        second = await post_event(t, users, "Week 2")
        assert await until_settled(t, second, deliveries=12, timeout=60) == {
            "sent": 11,
            "suppressed": 1,
        }
        assert (await email_delivery(t, second, gone))["status"] == "suppressed"
        assert rcpt_attempts(relay, address_of(gone)) == []
        assert smtp_received(relay) == Counter({address_of(u): 1 for u in users if u != gone})


# --- SES and SendGrid ---------------------------------------------------------------------------

AUDIENCE = 60


@pytest.mark.slow
async def test_the_scenario_through_ses_with_sns_bounces(
    sqlite_settings: Settings, ses: SesEmulator, tmp_path: Path
) -> None:
    async with (
        running(with_email(sqlite_settings, tmp_path, ses=ses)) as srv,
        tenant_client(srv) as t,
    ):
        await set_up_sender(t, {"ses": SES_CREDENTIAL})
        subscription = await ses.subscribe(TOPIC, f"{srv.base_url}/v1/mail-events/ses/{t.id}")
        assert subscription.confirmed, ses.published
        users = await create_users(t, AUDIENCE)
        gone, slow, quitter = "user-010", "user-011", "user-012"
        ses.script_feedback(address_of(gone), "Permanent")
        ses.script(
            429,
            "TooManyRequestsException",
            "Maximum sending rate exceeded.",
            recipient=address_of(slow),
            count=1,
        )

        first = await post_event(t, users, "Week 1")
        # SES accepts the mail to `gone`: its bounce comes afterwards, through SNS.
        counts = await until_settled(t, first, deliveries=AUDIENCE, timeout=60)
        assert counts == {"sent": AUDIENCE}
        received = Counter(a for s in ses.sent for a in s["destination"]["ToAddresses"])
        assert received == Counter({address_of(u): 1 for u in users})
        assert [a["error"] for a in ses.attempts if a["status"] != 200] == [
            "TooManyRequestsException"
        ]
        retried = await email_delivery(t, first, slow)
        assert (retried["status"], retried["attempts"]) == ("sent", 2)
        links: dict[str, str] = {}
        for sent in ses.sent:
            assert sent["content"]["kind"] == "Raw"
            assert sent["access_key_id"] == SES_KEY_ID
            (to,) = sent["destination"]["ToAddresses"]
            user = to.split("@")[0]
            raw = sent["content"]["raw"].encode()
            links[user] = check_mime(raw, user, users[user], "Week 1")

        await ses.settle()
        notified = [p for p in ses.published if p["message"]["Type"] == "Notification"]
        assert [p["status"] for p in notified] == [200]
        await until_email_status(t, gone, "bounced", timeout=10)
        assert (await get(t, f"/v1/users/{slow}"))["email_status"] == "subscribed"
        await unsubscribe(srv, links[quitter])

        ses.reset()
        second = await post_event(t, users, "Week 2")
        counts = await until_settled(t, second, deliveries=AUDIENCE, timeout=60)
        assert counts == {"sent": AUDIENCE - 2, "suppressed": 2}
        for user in (gone, quitter):
            assert (await email_delivery(t, second, user))["status"] == "suppressed"
        received = Counter(a for s in ses.sent for a in s["destination"]["ToAddresses"])
        assert received == Counter({address_of(u): 1 for u in users if u not in (gone, quitter)})


@pytest.mark.slow
async def test_the_scenario_through_sendgrid_with_its_event_webhook(
    sqlite_settings: Settings, sendgrid: SendGridEmulator, tmp_path: Path
) -> None:
    async with (
        running(with_email(sqlite_settings, tmp_path, sendgrid=sendgrid)) as srv,
        tenant_client(srv) as t,
    ):
        await set_up_sender(t, {"sendgrid": sendgrid_credential(sendgrid)})
        sendgrid.webhook_url = f"{srv.base_url}/v1/mail-events/sendgrid/{t.id}"
        users = await create_users(t, AUDIENCE)
        gone, slow, quitter = "user-020", "user-021", "user-022"
        sendgrid.script_event(address_of(gone), "bounce")
        sendgrid.script(429, "too many requests", recipient=address_of(slow), count=1)

        first = await post_event(t, users, "Week 1")
        counts = await until_settled(t, first, deliveries=AUDIENCE, timeout=60)
        assert counts == {"sent": AUDIENCE}
        received = Counter(
            r["email"] for s in sendgrid.sent for r in s["body"]["personalizations"][0]["to"]
        )
        assert received == Counter({address_of(u): 1 for u in users})
        assert [a["status"] for a in sendgrid.attempts].count(429) == 1
        assert len(sendgrid.attempts) == AUDIENCE + 1
        retried = await email_delivery(t, first, slow)
        assert (retried["status"], retried["attempts"]) == ("sent", 2)
        links: dict[str, str] = {}
        for sent in sendgrid.sent:
            user = sent["body"]["personalizations"][0]["to"][0]["email"].split("@")[0]
            links[user] = check_sendgrid_body(sent["body"], user, users[user], "Week 1")

        await sendgrid.settle()
        assert {p["status"] for p in sendgrid.posted} == {200}, sendgrid.posted
        await until_email_status(t, gone, "bounced", timeout=10)
        assert (await get(t, f"/v1/users/{slow}"))["email_status"] == "subscribed"
        await unsubscribe(srv, links[quitter])

        sendgrid.reset()
        second = await post_event(t, users, "Week 2")
        counts = await until_settled(t, second, deliveries=AUDIENCE, timeout=60)
        assert counts == {"sent": AUDIENCE - 2, "suppressed": 2}
        for user in (gone, quitter):
            assert (await email_delivery(t, second, user))["status"] == "suppressed"
        received = Counter(
            r["email"] for s in sendgrid.sent for r in s["body"]["personalizations"][0]["to"]
        )
        assert received == Counter({address_of(u): 1 for u in users if u not in (gone, quitter)})


# --- the fallback -------------------------------------------------------------------------------


async def test_a_refused_relay_hands_its_mail_to_the_fallback_and_is_paused(
    sqlite_settings: Settings,
    relay: SmtpEmulator,
    sendgrid: SendGridEmulator,
    tmp_path: Path,
) -> None:
    settings = with_email(sqlite_settings, tmp_path, relay=relay, sendgrid=sendgrid)
    async with running(settings) as srv, tenant_client(srv) as t:
        await set_up_sender(
            t,
            {
                "relay": smtp_credential(relay, password="not-the-password"),
                "backup": sendgrid_credential(sendgrid),
            },
            fallback="backup",
        )
        users = await create_users(t, 9)

        first = await post_event(t, users, "Week 1")
        assert await until_settled(t, first, deliveries=9, timeout=60) == {"sent": 9}
        assert relay.messages == []
        assert relay.attempts == []  # refused at AUTH, before any RCPT
        received = Counter(
            r["email"] for s in sendgrid.sent for r in s["body"]["personalizations"][0]["to"]
        )
        assert received == Counter({address_of(u): 1 for u in users})
        for sent in sendgrid.sent:
            user = sent["body"]["personalizations"][0]["to"][0]["email"].split("@")[0]
            check_sendgrid_body(sent["body"], user, users[user], "Week 1")
        described = await get(t, "/v1/credentials/email/relay")
        assert described["status"] == "paused", described
        assert "535" in (described["paused_reason"] or "")
        assert (await get(t, "/v1/credentials/email/backup"))["status"] == "active"

        # Paused, the relay is skipped; a replaced credential is used again.
        sendgrid.reset()
        second = await post_event(t, users, "Week 2")
        assert await until_settled(t, second, deliveries=9, timeout=60) == {"sent": 9}
        assert len(sendgrid.sent) == 9
        await put(t, "/v1/credentials/email/relay", smtp_credential(relay))
        assert (await get(t, "/v1/credentials/email/relay"))["status"] == "active"
        sendgrid.reset()
        third = await post_event(t, users, "Week 3")
        assert await until_settled(t, third, deliveries=9, timeout=60) == {"sent": 9}
        assert sendgrid.sent == []
        assert smtp_received(relay) == Counter({address_of(u): 1 for u in users})
