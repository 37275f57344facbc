"""Bounce and complaint feeds over real sockets: the SES emulator publishes signed SNS
notifications and the SendGrid emulator signed event batches to a running Clarion, which
suppresses the addresses they name, and refuses whatever is unsigned, forged or foreign."""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from clarion import bootstrap
from clarion.adapters.storage.credentials import SqlCredentials
from clarion.adapters.vault import Vault
from clarion.emulators.sendgrid import SendGridEmulator
from clarion.emulators.ses import SesEmulator
from clarion.settings import Settings
from clarion.wire import email as wire
from tests.support import Running, Tenant, running, tenant_client

REGION = "eu-west-1"
TOPIC = "arn:aws:sns:eu-west-1:123456789012:ses-feedback"
KEY = wire.AwsCredentials("AKIDEMULATOR", "emulator-secret")
SENDGRID_KEY = "SG.emulator.key"


@dataclass
class World:
    srv: Running
    ses: SesEmulator
    sendgrid: SendGridEmulator
    ses_ca: ssl.SSLContext
    sendgrid_ca: ssl.SSLContext


def _context(pem: bytes | None, path: Path) -> ssl.SSLContext:
    assert pem is not None
    path.write_bytes(pem)
    return ssl.create_default_context(cafile=str(path))


@pytest.fixture
async def world(settings: Settings, tmp_path: Path) -> AsyncIterator[World]:
    ses = SesEmulator(region=REGION)
    ses.add_key(KEY.access_key_id, KEY.secret_access_key)
    sendgrid = SendGridEmulator()
    sendgrid.add_key(SENDGRID_KEY)
    await ses.start()
    await sendgrid.start()
    ses_ca = _context(ses.certificate_pem, tmp_path / "ses.pem")
    email = settings.email.model_copy(
        update={
            "sns_allowed_url_prefixes": [f"https://127.0.0.1:{ses.port}/"],
            "sns_ca_file": tmp_path / "ses.pem",
        }
    )
    try:
        async with running(settings.model_copy(update={"email": email})) as srv:
            yield World(
                srv,
                ses,
                sendgrid,
                ses_ca,
                _context(sendgrid.certificate_pem, tmp_path / "sendgrid.pem"),
            )
    finally:
        await ses.stop()
        await sendgrid.stop()


async def _credential(world: World, tenant: Tenant, name: str, metadata: dict[str, Any]) -> None:
    vault = SqlCredentials(
        world.srv.clarion.store.engine, Vault(bootstrap.sealer_for(world.srv.clarion.settings))
    )
    await vault.put_credential(
        tenant.id,
        "email",
        name,
        app_id=None,
        environment=None,
        metadata=metadata,
        secret="not used here",
        now=datetime.now(UTC),
    )


async def _status(world: World, tenant: Tenant, user: str) -> str:
    record = await world.srv.clarion.store.get_user(tenant.id, user)
    assert record is not None
    return record.email_status


def _email(to: str) -> wire.Email:
    return wire.Email(
        sender=wire.Mailbox.of("noreply@example.com"),
        to=wire.Mailbox.of(to),
        subject="Hello",
        text="plain",
        date=datetime.now(UTC),
        message_id="dlv-1",
        unsubscribe=wire.Unsubscribe("https://c.example/u/tok"),
    )


async def _send(client: httpx.AsyncClient, request: wire.HttpRequest) -> int:
    answer = await client.request(
        request.method, request.url, headers=list(request.headers), content=request.body
    )
    return answer.status_code


async def _ses_send(world: World, to: str) -> None:
    request = wire.ses_send_email_request(
        _email(to),
        region=REGION,
        credentials=KEY,
        now=datetime.now(UTC),
        endpoint=world.ses.endpoint,
    )
    async with httpx.AsyncClient(verify=world.ses_ca) as client:
        assert await _send(client, request) == 200
    await world.ses.settle()


async def _sendgrid_send(world: World, to: str) -> None:
    request = wire.sendgrid_request(_email(to), api_key=SENDGRID_KEY, url=world.sendgrid.url)
    async with httpx.AsyncClient(verify=world.sendgrid_ca) as client:
        assert await _send(client, request) == 202
    await world.sendgrid.settle()


def _ses_url(world: World, tenant: Tenant) -> str:
    return f"{world.srv.base_url}/v1/mail-events/ses/{tenant.id}"


def _sendgrid_url(world: World, tenant: Tenant) -> str:
    return f"{world.srv.base_url}/v1/mail-events/sendgrid/{tenant.id}"


# --- SES via SNS -------------------------------------------------------------------------------


async def test_ses_bounces_and_complaints_arrive_through_sns(world: World) -> None:
    async with tenant_client(world.srv) as tenant, tenant_client(world.srv) as other:
        await _credential(world, tenant, "ses", {"kind": "ses", "sns_topic_arn": TOPIC})
        for t in (tenant, other):
            await t.http.put("/v1/users/ann", json={"email": "Ann@Example.com"})
            await t.http.put("/v1/users/bob", json={"email": "bob@example.com"})
            await t.http.put("/v1/users/cid", json={"email": "cid@example.com"})
        subscription = await world.ses.subscribe(TOPIC, _ses_url(world, tenant))
        assert subscription.confirmed, world.ses.published
        world.ses.script_feedback("ann@example.com", "Permanent")
        world.ses.script_feedback("bob@example.com", "Complaint")
        world.ses.script_feedback("cid@example.com", "Transient")
        for to in ("ann@example.com", "bob@example.com", "cid@example.com"):
            await _ses_send(world, to)
        assert [p["status"] for p in world.ses.published] == [200, 200, 200, 200]
        assert await _status(world, tenant, "ann") == "bounced"
        assert await _status(world, tenant, "bob") == "complained"
        assert await _status(world, tenant, "cid") == "subscribed"
        for user in ("ann", "bob", "cid"):
            assert await _status(world, other, user) == "subscribed"
        # A replayed notification changes nothing more, and is still answered 200.
        replay = world.ses.published[1]["message"]
        async with httpx.AsyncClient() as anon:
            answer = await anon.post(
                _ses_url(world, tenant),
                content=json.dumps(replay),
                headers={"x-amz-sns-message-type": "Notification", "content-type": "text/plain"},
            )
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"action": "suppressed", "bounced": 0, "complained": 0}


async def _post_sns(world: World, tenant: Tenant, message: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient() as anon:
        return await anon.post(
            _ses_url(world, tenant),
            content=json.dumps(message),
            headers={
                "x-amz-sns-message-type": message.get("Type", ""),
                "content-type": "text/plain",
            },
        )


async def test_forged_unsigned_and_foreign_sns_messages_are_refused(world: World) -> None:
    async with tenant_client(world.srv) as tenant, tenant_client(world.srv) as bare:
        await _credential(world, tenant, "ses", {"kind": "ses", "sns_topic_arn": TOPIC})
        await tenant.http.put("/v1/users/ann", json={"email": "ann@example.com"})
        assert (await world.ses.subscribe(TOPIC, _ses_url(world, tenant))).confirmed
        world.ses.script_feedback("ann@example.com", "Permanent")
        # A genuine notification, captured before it arrives: point the subscription elsewhere.
        world.ses.subscriptions[0].endpoint = f"{world.srv.base_url}/nowhere"
        await _ses_send(world, "ann@example.com")
        genuine = world.ses.published[-1]["message"]
        assert await _status(world, tenant, "ann") == "subscribed"

        bounce = json.loads(genuine["Message"])
        bounce["bounce"]["bouncedRecipients"] = [{"emailAddress": "bob@example.com"}]
        cases = {
            "altered": (genuine | {"Message": json.dumps(bounce)}, 401, "invalid_signature"),
            "unsigned": (
                {k: v for k, v in genuine.items() if k != "Signature"},
                422,
                "invalid_request",
            ),
            "bad signature": (
                genuine | {"Signature": base64.b64encode(b"x" * 256).decode()},
                401,
                "invalid_signature",
            ),
            "foreign certificate host": (
                genuine
                | {"SigningCertURL": "https://evil.example/SimpleNotificationService-x.pem"},
                401,
                "invalid_signature",
            ),
            "wrong topic": (
                genuine | {"TopicArn": "arn:aws:sns:eu-west-1:123456789012:other"},
                404,
                "unknown_topic",
            ),
        }
        for name, (message, status, code) in cases.items():
            answer = await _post_sns(world, tenant, message)
            assert answer.status_code == status, (name, answer.text)
            assert answer.json()["error"]["code"] == code, name
        # A tenant without an SES topic, and one that does not exist, look alike.
        for tenant_id in (bare.id, "00000000-0000-0000-0000-000000000000"):
            async with httpx.AsyncClient() as anon:
                answer = await anon.post(
                    f"{world.srv.base_url}/v1/mail-events/ses/{tenant_id}",
                    content=json.dumps(genuine),
                    headers={"x-amz-sns-message-type": "Notification"},
                )
            assert answer.status_code == 404
            assert answer.json()["error"]["code"] == "unknown_event_source"
        for garbage in (b"", b"{", b"[]", b'{"Type": "Notification"}', b"\xff" * 100):
            async with httpx.AsyncClient() as anon:
                answer = await anon.post(_ses_url(world, tenant), content=garbage)
            assert 400 <= answer.status_code < 500, (garbage, answer.text)
        assert await _status(world, tenant, "ann") == "subscribed"
        # The genuine one still works.
        assert (await _post_sns(world, tenant, genuine)).status_code == 200
        assert await _status(world, tenant, "ann") == "bounced"


# --- SendGrid Event Webhook --------------------------------------------------------------------


async def test_sendgrid_signed_events_bounce_and_complain(world: World) -> None:
    async with tenant_client(world.srv) as tenant:
        await _credential(
            world,
            tenant,
            "sendgrid",
            {"kind": "sendgrid", "event_webhook_public_key": world.sendgrid.event_public_key},
        )
        for user in ("ann", "bob", "cid", "dan"):
            await tenant.http.put(f"/v1/users/{user}", json={"email": f"{user}@example.com"})
        world.sendgrid.webhook_url = _sendgrid_url(world, tenant)
        world.sendgrid.script_event("ann@example.com", "bounce")
        world.sendgrid.script_event("bob@example.com", "spamreport")
        world.sendgrid.script_event("cid@example.com", "blocked")
        world.sendgrid.script_event("dan@example.com", "dropped", "Bounced Address")
        for user in ("ann", "bob", "cid", "dan"):
            await _sendgrid_send(world, f"{user}@example.com")
        assert [p["status"] for p in world.sendgrid.posted] == [200] * 4, world.sendgrid.posted
        assert await _status(world, tenant, "ann") == "bounced"
        assert await _status(world, tenant, "bob") == "complained"
        assert await _status(world, tenant, "cid") == "subscribed"
        assert await _status(world, tenant, "dan") == "bounced"


async def test_sendgrid_posts_unsigned_or_badly_signed_are_refused(world: World) -> None:
    async with tenant_client(world.srv) as tenant, tenant_client(world.srv) as keyless:
        await _credential(
            world,
            tenant,
            "sendgrid",
            {"kind": "sendgrid", "event_webhook_public_key": world.sendgrid.event_public_key},
        )
        await _credential(world, keyless, "sendgrid", {"kind": "sendgrid"})
        for t in (tenant, keyless):
            await t.http.put("/v1/users/ann", json={"email": "ann@example.com"})
        body = json.dumps([{"email": "ann@example.com", "event": "bounce", "type": "bounce"}])
        stamp = str(int(datetime.now(UTC).timestamp()))
        impostor = ec.generate_private_key(ec.SECP256R1())
        forged = base64.b64encode(
            impostor.sign(stamp.encode() + body.encode(), ec.ECDSA(hashes.SHA256()))
        ).decode()
        stale = str(int(stamp) - 3600)
        cases = [
            ({}, "invalid_signature"),
            (
                {
                    "X-Twilio-Email-Event-Webhook-Signature": forged,
                    "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
                },
                "invalid_signature",
            ),
            (
                {
                    "X-Twilio-Email-Event-Webhook-Signature": forged,
                    "X-Twilio-Email-Event-Webhook-Timestamp": stale,
                },
                "invalid_signature",
            ),
        ]
        async with httpx.AsyncClient() as anon:
            for headers, code in cases:
                answer = await anon.post(
                    _sendgrid_url(world, tenant),
                    content=body,
                    headers=headers | {"content-type": "application/json"},
                )
                assert answer.status_code == 401, answer.text
                assert answer.json()["error"]["code"] == code
            answer = await anon.post(
                _sendgrid_url(world, keyless),
                content=body,
                headers={"content-type": "application/json"},
            )
            assert answer.status_code == 401
            assert answer.json()["error"]["code"] == "signature_required"
            nobody = f"{world.srv.base_url}/v1/mail-events/sendgrid/no-such-tenant"
            answer = await anon.post(nobody, content=body)
            assert answer.status_code == 404
            assert answer.json()["error"]["code"] == "unknown_event_source"
        assert await _status(world, tenant, "ann") == "subscribed"
        assert await _status(world, keyless, "ann") == "subscribed"
