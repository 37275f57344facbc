"""The WNS emulator answers like Microsoft documents, over real TLS: tokens for registered apps
only, channel URIs it hands out, X-WNS-Type against Content-Type and body, the X-WNS-* answer
headers, and scripted 404/410/406/dropped outcomes."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from clarion.emulators.wns import WnsEmulator

SID = "ms-app://s-1-15-2-1-2-3-4-5-6-7"
SECRET = "s3cret"
TOAST = (
    b'<toast><visual><binding template="ToastGeneric"><text>hi</text></binding></visual></toast>'
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_750_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def emulator(clock: FakeClock) -> AsyncIterator[WnsEmulator]:
    emu = WnsEmulator(clock=clock)
    await emu.start()
    yield emu
    await emu.stop()


@pytest.fixture
async def control(emulator: WnsEmulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{emulator.control_port}") as c:
        yield c


@pytest.fixture
async def client(emulator: WnsEmulator, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    assert emulator.certificate_pem is not None
    ca = tmp_path / "wns.pem"
    ca.write_bytes(emulator.certificate_pem)
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(ca))) as c:
        yield c


async def token(client: httpx.AsyncClient, emulator: WnsEmulator, **form: str) -> httpx.Response:
    body = {
        "grant_type": "client_credentials",
        "client_id": SID,
        "client_secret": SECRET,
        "scope": "notify.windows.com",
        **form,
    }
    return await client.post(emulator.token_url, data=body)


async def ready(
    client: httpx.AsyncClient, control: httpx.AsyncClient, emulator: WnsEmulator
) -> tuple[str, dict[str, Any]]:
    assert (
        await control.post("/control/apps", json={"client_id": SID, "client_secret": SECRET})
    ).status_code == 201
    channel = (await control.post("/control/channels", json={"client_id": SID})).json()
    answer = await token(client, emulator)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"]), channel


def notify_headers(access: str, kind: str = "wns/toast", **extra: str) -> dict[str, str]:
    content_type = "application/octet-stream" if kind == "wns/raw" else "text/xml"
    return {
        "Authorization": f"Bearer {access}",
        "X-WNS-Type": kind,
        "Content-Type": content_type,
        **extra,
    }


async def test_a_registered_app_gets_a_bearer_token_and_others_a_400(
    client: httpx.AsyncClient, control: httpx.AsyncClient, emulator: WnsEmulator
) -> None:
    await control.post("/control/apps", json={"client_id": SID, "client_secret": SECRET})
    good = await token(client, emulator)
    assert good.status_code == 200
    assert good.json()["token_type"] == "bearer"
    assert good.json()["expires_in"] == 86400
    bad = await token(client, emulator, client_secret="nope")
    assert (bad.status_code, bad.json()["error"]) == (400, "invalid_client")
    scope = await token(client, emulator, scope="https://wns.windows.com/.default")
    assert scope.status_code == 400
    entra = await client.post(
        f"{emulator.origin}/contoso.onmicrosoft.com/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": SID,
            "client_secret": SECRET,
            "scope": "https://wns.windows.com/.default",
        },
    )
    assert entra.status_code == 200


async def test_a_toast_is_received_with_a_message_id_and_the_device_status_when_asked(
    client: httpx.AsyncClient, control: httpx.AsyncClient, emulator: WnsEmulator
) -> None:
    access, channel = await ready(client, control, emulator)
    answer = await client.post(
        channel["channel_uri"],
        headers=notify_headers(access, **{"X-WNS-RequestForStatus": "true"}),
        content=TOAST,
    )
    assert answer.status_code == 200
    assert answer.headers["x-wns-status"] == "received"
    assert answer.headers["x-wns-deviceconnectionstatus"] == "connected"
    msg_id = answer.headers["x-wns-msg-id"]
    assert 0 < len(msg_id) <= 16
    received = (await control.get("/control/received")).json()
    assert [(r["type"], r["msg_id"], r["payload"]) for r in received] == [
        ("wns/toast", msg_id, TOAST.decode())
    ]
    quiet = await client.post(channel["channel_uri"], headers=notify_headers(access), content=TOAST)
    assert "x-wns-deviceconnectionstatus" not in quiet.headers


@pytest.mark.parametrize(
    ("kind", "content_type", "body", "status", "says"),
    [
        ("wns/toast", "application/octet-stream", TOAST, 400, "Content-Type"),
        ("wns/raw", "text/xml", b"raw", 400, "Content-Type"),
        ("wns/popup", "text/xml", TOAST, 400, "X-WNS-Type"),
        ("wns/toast", "text/xml", b"<toast><visual>", 400, "well-formed"),
        ("wns/badge", "text/xml", TOAST, 400, "<badge>"),
        ("wns/raw", "application/octet-stream", b"x" * 5001, 413, "5000"),
        ("wns/raw", "application/octet-stream", b"", 400, "payload"),
    ],
)
async def test_type_content_type_and_body_must_agree(
    client: httpx.AsyncClient,
    control: httpx.AsyncClient,
    emulator: WnsEmulator,
    kind: str,
    content_type: str,
    body: bytes,
    status: int,
    says: str,
) -> None:
    access, channel = await ready(client, control, emulator)
    headers = {**notify_headers(access, kind), "Content-Type": content_type}
    answer = await client.post(channel["channel_uri"], headers=headers, content=body)
    assert answer.status_code == status
    assert says in answer.headers["x-wns-error-description"]
    assert emulator.received == []


async def test_a_raw_notification_and_a_badge_are_received(
    client: httpx.AsyncClient, control: httpx.AsyncClient, emulator: WnsEmulator
) -> None:
    access, channel = await ready(client, control, emulator)
    raw = await client.post(
        channel["channel_uri"], headers=notify_headers(access, "wns/raw"), content=b"\x00\x01"
    )
    badge = await client.post(
        channel["channel_uri"],
        headers=notify_headers(access, "wns/badge"),
        content=b'<badge value="3"/>',
    )
    assert (raw.status_code, badge.status_code) == (200, 200)
    assert [r["type"] for r in emulator.received] == ["wns/raw", "wns/badge"]


async def test_tokens_channels_and_apps_are_checked(
    client: httpx.AsyncClient,
    control: httpx.AsyncClient,
    emulator: WnsEmulator,
    clock: FakeClock,
) -> None:
    access, channel = await ready(client, control, emulator)
    uri = channel["channel_uri"]
    bad = await client.post(uri, headers=notify_headers("nope"), content=TOAST)
    assert bad.status_code == 401
    unknown = await client.post(
        f"{emulator.origin}/?token=unknown", headers=notify_headers(access), content=TOAST
    )
    assert unknown.status_code == 404
    other = "ms-app://s-1-15-2-9-9-9-9-9-9-9"
    await control.post("/control/apps", json={"client_id": other, "client_secret": "x"})
    foreign = (await token(client, emulator, client_id=other, client_secret="x")).json()
    mismatch = await client.post(
        uri, headers=notify_headers(foreign["access_token"]), content=TOAST
    )
    assert mismatch.status_code == 403
    clock.now += 86_401
    expired = await client.post(uri, headers=notify_headers(access), content=TOAST)
    assert (expired.status_code, expired.headers["x-wns-error-description"]) == (
        401,
        "Token expired",
    )
    clock.now -= 86_401
    assert (await control.post("/control/tokens/expire")).json() == {"expired": 2}
    assert (
        await client.post(uri, headers=notify_headers(access), content=TOAST)
    ).status_code == 401


async def test_an_expired_channel_is_410_and_an_unknown_one_404(
    client: httpx.AsyncClient, control: httpx.AsyncClient, emulator: WnsEmulator
) -> None:
    access, first = await ready(client, control, emulator)
    second = (await control.post("/control/channels", json={"client_id": SID})).json()
    await control.request("DELETE", f"/control/channels/{first['id']}")
    await control.request("DELETE", f"/control/channels/{second['id']}", json={"status": 404})
    headers = notify_headers(access)
    assert (
        await client.post(first["channel_uri"], headers=headers, content=TOAST)
    ).status_code == 410
    assert (
        await client.post(second["channel_uri"], headers=headers, content=TOAST)
    ).status_code == 404


async def test_scripted_throttling_and_drops(
    client: httpx.AsyncClient, control: httpx.AsyncClient, emulator: WnsEmulator
) -> None:
    access, channel = await ready(client, control, emulator)
    uri = channel["channel_uri"]
    await control.post(
        "/control/outcomes",
        json={"status": 406, "continue_after": 30, "description": "throttled", "count": 1},
    )
    await control.post(
        "/control/outcomes",
        json={
            "status": 200,
            "wns_status": "dropped",
            "channel": channel["id"],
            "count": 1,
            "description": "the app is not running",
        },
    )
    dropped = await client.post(
        uri, headers=notify_headers(access, **{"X-WNS-RequestForStatus": "true"}), content=TOAST
    )
    assert (dropped.status_code, dropped.headers["x-wns-status"]) == (200, "dropped")
    assert dropped.headers["x-wns-error-description"] == "the app is not running"
    throttled = await client.post(uri, headers=notify_headers(access), content=TOAST)
    assert (throttled.status_code, throttled.headers["x-wns-continue-after"]) == (406, "30")
    ok = await client.post(uri, headers=notify_headers(access), content=TOAST)
    assert ok.headers["x-wns-status"] == "received"
    assert len(emulator.received) == 1
    attempts = (await control.get("/control/attempts")).json()
    assert [(a["status"], a["wns_status"]) for a in attempts] == [
        (200, "dropped"),
        (406, None),
        (200, "received"),
    ]


async def test_the_device_status_can_be_set_and_latency_injected(
    client: httpx.AsyncClient, control: httpx.AsyncClient, emulator: WnsEmulator
) -> None:
    access, channel = await ready(client, control, emulator)
    patched = await control.patch(
        f"/control/channels/{channel['id']}", json={"device": "disconnected"}
    )
    assert patched.json()["device"] == "disconnected"
    assert (await control.post("/control/latency", json={"ms": 5})).json() == {"ms": 5.0}
    answer = await client.post(
        channel["channel_uri"],
        headers=notify_headers(access, **{"X-WNS-RequestForStatus": "true"}),
        content=TOAST,
    )
    assert answer.headers["x-wns-deviceconnectionstatus"] == "disconnected"
