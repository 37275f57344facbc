"""The Web Push emulator plays a browser's push service over real TLS: it decrypts what an
independent RFC 8291 sender (pywebpush, http_ece) encrypted, checks VAPID like a push service,
and refuses a wrong encryption, a bad token or missing headers with the status a real service
would send."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import http_ece
import httpx
import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid
from pywebpush import WebPushException, webpush

from clarion.emulators.webpush import WebPushEmulator
from clarion.wire import webpush as wire

SUBJECT = "mailto:ops@example.com"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def point(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


@pytest.fixture
async def emulator() -> AsyncIterator[WebPushEmulator]:
    emu = WebPushEmulator()
    await emu.start()
    yield emu
    await emu.stop()


@pytest.fixture
def ca_file(emulator: WebPushEmulator, tmp_path: Path) -> Path:
    assert emulator.certificate_pem is not None
    path = tmp_path / "webpush-emulator.pem"
    path.write_bytes(emulator.certificate_pem)
    return path


@pytest.fixture
async def control(emulator: WebPushEmulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{emulator.control_port}") as c:
        yield c


@pytest.fixture
async def push(ca_file: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(ca_file))) as c:
        yield c


@pytest.fixture
def vapid_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


async def subscribe(control: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    answer = await control.post("/control/subscriptions", json=body)
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def vapid(
    key: ec.EllipticCurvePrivateKey,
    aud: str,
    *,
    exp: float | None = None,
    sub: str | None = SUBJECT,
    k: bytes | None = None,
) -> str:
    claims: dict[str, Any] = {"aud": aud, "exp": int(exp or time.time() + 3600)}
    if sub is not None:
        claims["sub"] = sub
    token = jwt.encode(claims, key, algorithm="ES256", headers={"typ": "JWT"})
    return f"vapid t={token}, k={b64(k or point(key))}"


def encrypt(subscription: dict[str, Any], plaintext: bytes, **options: Any) -> bytes:
    """An independent RFC 8291 encryption (http_ece, the library pywebpush uses)."""
    return bytes(
        http_ece.encrypt(
            plaintext,
            private_key=ec.generate_private_key(ec.SECP256R1()),
            dh=unb64(subscription["keys"]["p256dh"]),
            auth_secret=unb64(subscription["keys"]["auth"]),
            version="aes128gcm",
            **options,
        )
    )


def headers_for(authorization: str, **extra: str) -> dict[str, str]:
    return {
        "TTL": "60",
        "Content-Encoding": "aes128gcm",
        "Content-Type": "application/octet-stream",
        "Authorization": authorization,
        **extra,
    }


async def test_a_message_sent_by_pywebpush_is_decrypted_and_listed(
    emulator: WebPushEmulator, control: httpx.AsyncClient, ca_file: Path, tmp_path: Path
) -> None:
    subscription = await subscribe(control)
    assert set(subscription) == {"endpoint", "expirationTime", "keys"}
    assert set(subscription["keys"]) == {"p256dh", "auth"}
    key_file = tmp_path / "vapid.pem"
    key_file.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    session = requests.Session()
    session.verify = str(ca_file)
    session.trust_env = False  # REQUESTS_CA_BUNDLE would replace the emulator's certificate

    def send() -> requests.Response:
        response = webpush(
            subscription,
            data=json.dumps({"title": "héllo"}),
            vapid_private_key=str(key_file),
            vapid_claims={"sub": SUBJECT},
            ttl=120,
            requests_session=session,
            headers={"Urgency": "high", "Topic": "news"},
        )
        assert isinstance(response, requests.Response)
        return response

    response = await asyncio.to_thread(send)
    assert response.status_code == 201
    assert response.headers["Location"].startswith(emulator.origin)
    messages = (await control.get("/control/messages")).json()
    assert len(messages) == 1
    message = messages[0]
    assert message["json"] == {"title": "héllo"}
    assert message["endpoint"] == subscription["endpoint"]
    assert (message["ttl"], message["urgency"], message["topic"]) == (120, "high", "news")
    assert message["vapid"]["sub"] == SUBJECT
    assert message["vapid"]["aud"] == emulator.origin


async def test_a_message_built_by_clarions_wire_module_is_accepted(
    emulator: WebPushEmulator, control: httpx.AsyncClient, push: httpx.AsyncClient
) -> None:
    subscription = await subscribe(control)
    key = ec.generate_private_key(ec.SECP256R1())
    sub = wire.Subscription.parse(
        subscription["endpoint"], subscription["keys"]["p256dh"], subscription["keys"]["auth"]
    )
    from datetime import UTC, datetime

    token = wire.sign_vapid(key, sub.endpoint, subject=SUBJECT, now=datetime.now(UTC))
    request = wire.build_request(
        wire.Message(sub, payload=b"x" * wire.MAX_PLAINTEXT_BYTES, padding=0),
        authorization=wire.vapid_authorization(token, key),
    )
    answer = await push.post(request.url, headers=list(request.headers), content=request.body)
    assert answer.status_code == 201, answer.text
    assert emulator.messages[-1]["payload"] == "x" * wire.MAX_PLAINTEXT_BYTES


async def test_a_wrong_encryption_is_refused_with_400(
    emulator: WebPushEmulator,
    control: httpx.AsyncClient,
    push: httpx.AsyncClient,
    vapid_key: ec.EllipticCurvePrivateKey,
) -> None:
    target = await subscribe(control)
    other = await subscribe(control)
    wrong_secret = {**target, "keys": {**target["keys"], "auth": b64(os.urandom(16))}}
    for body in (
        encrypt(other, b"for someone else"),  # the other subscription's keys
        encrypt(wrong_secret, b"wrong auth secret"),
        encrypt(target, b"two records", rs=18),  # more than one record
        b"\x00" * 100,
    ):
        answer = await push.post(
            target["endpoint"],
            headers=headers_for(vapid(vapid_key, emulator.origin)),
            content=body,
        )
        assert answer.status_code == 400
        assert "decrypt" in answer.text
    good = await push.post(
        target["endpoint"],
        headers=headers_for(vapid(vapid_key, emulator.origin)),
        content=encrypt(target, b"right"),
    )
    assert good.status_code == 201
    assert [m["payload"] for m in emulator.messages] == ["right"]


@pytest.mark.parametrize(
    ("case", "status", "says"),
    [
        ("missing", 401, "missing"),
        ("bearer", 401, "vapid"),
        ("other key", 403, "invalid JWT"),
        ("wrong aud", 403, "aud"),
        ("expired", 403, "expired"),
        ("beyond 24 h", 403, "24 hours"),
        ("no sub", 403, "sub"),
        ("short k", 403, "65 bytes"),
    ],
)
async def test_a_bad_vapid_token_is_refused(
    emulator: WebPushEmulator,
    control: httpx.AsyncClient,
    push: httpx.AsyncClient,
    vapid_key: ec.EllipticCurvePrivateKey,
    case: str,
    status: int,
    says: str,
) -> None:
    subscription = await subscribe(control)
    origin = emulator.origin
    authorization = {
        "missing": "",
        "bearer": "Bearer abc",
        "other key": vapid(ec.generate_private_key(ec.SECP256R1()), origin, k=point(vapid_key)),
        "wrong aud": vapid(vapid_key, "https://push.example.net"),
        "expired": vapid(vapid_key, origin, exp=time.time() - 10),
        "beyond 24 h": vapid(vapid_key, origin, exp=time.time() + 25 * 3600),
        "no sub": vapid(vapid_key, origin, sub=None),
        "short k": vapid(vapid_key, origin, k=b"\x04" * 33),
    }[case]
    headers = headers_for(authorization)
    if not authorization:
        del headers["Authorization"]
    answer = await push.post(
        subscription["endpoint"], headers=headers, content=encrypt(subscription, b"m")
    )
    assert answer.status_code == status
    assert says in answer.text
    assert emulator.messages == []


async def test_a_key_other_than_the_subscriptions_application_server_key_is_a_mismatch(
    emulator: WebPushEmulator,
    control: httpx.AsyncClient,
    push: httpx.AsyncClient,
    vapid_key: ec.EllipticCurvePrivateKey,
) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    subscription = await subscribe(control, applicationServerKey=b64(point(other)))
    answer = await push.post(
        subscription["endpoint"],
        headers=headers_for(vapid(vapid_key, emulator.origin)),
        content=encrypt(subscription, b"m"),
    )
    assert answer.status_code == 403
    assert "does not correspond" in answer.text
    ok = await push.post(
        subscription["endpoint"],
        headers=headers_for(vapid(other, emulator.origin)),
        content=encrypt(subscription, b"m"),
    )
    assert ok.status_code == 201


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"TTL": None}, "TTL"),
        ({"TTL": "-1"}, "TTL"),
        ({"Urgency": "urgent"}, "Urgency"),
        ({"Topic": "has spaces"}, "Topic"),
        ({"Topic": "t" * 33}, "Topic"),
        ({"Content-Encoding": "aesgcm"}, "aes128gcm"),
    ],
)
async def test_malformed_headers_are_refused_with_400(
    emulator: WebPushEmulator,
    control: httpx.AsyncClient,
    push: httpx.AsyncClient,
    vapid_key: ec.EllipticCurvePrivateKey,
    change: dict[str, str | None],
    says: str,
) -> None:
    subscription = await subscribe(control)
    headers: dict[str, str] = headers_for(vapid(vapid_key, emulator.origin))
    for name, value in change.items():
        if value is None:
            del headers[name]
        else:
            headers[name] = value
    answer = await push.post(
        subscription["endpoint"], headers=headers, content=encrypt(subscription, b"m")
    )
    assert answer.status_code == 400
    assert says in answer.text


async def test_over_4096_bytes_is_413_and_a_push_without_data_is_taken(
    emulator: WebPushEmulator,
    control: httpx.AsyncClient,
    push: httpx.AsyncClient,
    vapid_key: ec.EllipticCurvePrivateKey,
) -> None:
    subscription = await subscribe(control)
    auth = vapid(vapid_key, emulator.origin)
    big = await push.post(
        subscription["endpoint"],
        headers=headers_for(auth),
        content=encrypt(subscription, b"x" * 4000, rs=8192),
    )
    assert big.status_code == 413
    empty = await push.post(subscription["endpoint"], headers={"TTL": "0", "Authorization": auth})
    assert empty.status_code == 201
    assert emulator.messages[-1]["payload"] is None


async def test_unknown_expired_and_unsubscribed_subscriptions(
    emulator: WebPushEmulator,
    control: httpx.AsyncClient,
    push: httpx.AsyncClient,
    vapid_key: ec.EllipticCurvePrivateKey,
) -> None:
    gone = await subscribe(control)
    expired = await subscribe(control)
    gone_id = gone["endpoint"].rsplit("/", 1)[1]
    expired_id = expired["endpoint"].rsplit("/", 1)[1]
    assert (await control.request("DELETE", f"/control/subscriptions/{gone_id}")).status_code == 200
    assert (
        await control.request(
            "DELETE", f"/control/subscriptions/{expired_id}", json={"status": 404}
        )
    ).status_code == 200
    auth = headers_for(vapid(vapid_key, emulator.origin))
    assert (await push.post(gone["endpoint"], headers=auth, content=b"")).status_code == 410
    assert (await push.post(expired["endpoint"], headers=auth, content=b"")).status_code == 404
    unknown = f"{emulator.origin}/push/nobody"
    assert (await push.post(unknown, headers=auth, content=b"")).status_code == 404


async def test_scripted_429_with_retry_after_then_an_outage_window(
    emulator: WebPushEmulator,
    control: httpx.AsyncClient,
    push: httpx.AsyncClient,
    vapid_key: ec.EllipticCurvePrivateKey,
) -> None:
    subscription = await subscribe(control)
    sub_id = subscription["endpoint"].rsplit("/", 1)[1]
    scripted = await control.post(
        "/control/outcomes",
        json={
            "status": 429,
            "reason": "slow down",
            "subscription": sub_id,
            "retry_after": 30,
            "count": 1,
        },
    )
    assert scripted.status_code == 201
    auth = headers_for(vapid(vapid_key, emulator.origin))
    first = await push.post(subscription["endpoint"], headers=auth, content=b"")
    assert (first.status_code, first.headers["retry-after"]) == (429, "30")
    assert (await push.post(subscription["endpoint"], headers=auth, content=b"")).status_code == 201
    await control.post("/control/outcomes", json={"status": 503, "seconds": 60})
    assert (await push.post(subscription["endpoint"], headers=auth, content=b"")).status_code == 503
    assert (await control.request("DELETE", "/control/outcomes")).json() == {"cleared": 1}
    assert (await push.post(subscription["endpoint"], headers=auth, content=b"")).status_code == 201
    attempts = (await control.get("/control/attempts")).json()
    assert [a["status"] for a in attempts] == [429, 201, 503, 201]


async def test_pywebpush_sees_a_410_for_an_unsubscribed_subscription(
    control: httpx.AsyncClient, ca_file: Path, tmp_path: Path
) -> None:
    subscription = await subscribe(control)
    sub_id = subscription["endpoint"].rsplit("/", 1)[1]
    await control.request("DELETE", f"/control/subscriptions/{sub_id}")
    vapid_key = Vapid()
    vapid_key.generate_keys()
    session = requests.Session()
    session.verify = str(ca_file)
    session.trust_env = False  # REQUESTS_CA_BUNDLE would replace the emulator's certificate

    def send() -> int | None:
        try:
            webpush(
                subscription,
                data="x",
                vapid_private_key=vapid_key,
                vapid_claims={"sub": SUBJECT},
                ttl=60,
                requests_session=session,
            )
        except WebPushException as exc:
            return exc.status_code
        return None

    assert await asyncio.to_thread(send) == 410
