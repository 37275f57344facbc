"""The WebSocket gateway over real sockets: auth, live delivery, receipts, resume, limits."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from clarion.settings import GatewaySettings, Settings
from tests.conftest import SECRET_KEY
from tests.support import Running, Tenant, running, tenant_client


async def _token(t: Tenant, user: str) -> str:
    response = await t.http.post(f"/v1/users/{user}/tokens")
    assert response.status_code == 201
    return str(response.json()["token"])


async def _recv(ws: ClientConnection, timeout: float = 2.0) -> dict[str, Any]:
    return dict(json.loads(await asyncio.wait_for(ws.recv(), timeout)))


async def _recv_type(ws: ClientConnection, kind: str, timeout: float = 2.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        frame = await _recv(ws, max(deadline - time.monotonic(), 0.01))
        if frame["type"] == kind:
            return frame


async def _connect(srv: Running, token: str, since: str | None = None) -> ClientConnection:
    ws = await websockets.connect(srv.ws_url)
    auth: dict[str, Any] = {"type": "auth", "token": token}
    if since is not None:
        auth["since"] = since
    await ws.send(json.dumps(auth))
    ready = await _recv(ws)
    assert ready["type"] == "ready", ready
    return ws


async def _post(t: Tenant, **body: Any) -> str:
    response = await t.http.post("/v1/events", json={"type": "t", **body})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def _report(t: Tenant, event_id: str, want: dict[str, int]) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for _ in range(200):
        report = (await t.http.get(f"/v1/events/{event_id}")).json()
        counts = report["recipients"]["by_status"]
        if all(counts[k] == v for k, v in want.items()):
            return report
        await asyncio.sleep(0.02)
    raise AssertionError(f"counts never reached {want}: {report}")


async def _drain(ws: ClientConnection, timeout: float) -> None:
    while True:
        await asyncio.wait_for(ws.recv(), timeout)


async def _closed_with(ws: ClientConnection, code: int, timeout: float = 3.0) -> None:
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await _drain(ws, timeout)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == code


async def test_a_connected_member_receives_the_event_and_reads_it(
    server: Running, tenant: Tenant
) -> None:
    assert (await tenant.http.put("/v1/groups/team", json={})).status_code == 201
    for user in ("ann", "bob", "cid"):
        assert (await tenant.http.put(f"/v1/groups/team/members/{user}")).status_code == 201
    ws = await _connect(server, await _token(tenant, "ann"))
    started = time.monotonic()
    event_id = await _post(tenant, recipients={"groups": ["team"]}, title="Hello", data={"n": 1})
    frame = await _recv_type(ws, "notification", timeout=1.0)
    assert time.monotonic() - started < 1.0
    assert (frame["event_id"], frame["title"], frame["data"]) == (event_id, "Hello", {"n": 1})
    assert frame["cursor"] == str(frame["id"])
    await _report(tenant, event_id, {"sent": 1, "pending": 2})
    await ws.send(json.dumps({"type": "read", "id": frame["id"]}))
    assert await _recv_type(ws, "ack") == {"type": "ack", "id": frame["id"], "status": "read"}
    report = await _report(tenant, event_id, {"read": 1, "pending": 2})
    assert report["recipients"]["total"] == 3
    trail = (await tenant.http.get(f"/v1/events/{event_id}/recipients/ann")).json()
    assert [(t["from"], t["to"]) for t in trail["trail"]] == [
        (None, "pending"),
        ("pending", "sent"),
        ("sent", "read"),
    ]
    await ws.close()


async def test_the_token_may_come_in_the_subprotocol_header(sqlite_server: Running) -> None:
    async with tenant_client(sqlite_server) as t:
        token = await _token(t, "ann")
        async with websockets.connect(
            sqlite_server.ws_url,
            subprotocols=["clarion.v1", f"clarion.token.{token}"],  # type: ignore[list-item]
        ) as ws:
            assert ws.subprotocol == "clarion.v1"
            assert (await _recv(ws))["type"] == "ready"


async def test_bad_tokens_are_refused_with_4401(sqlite_server: Running) -> None:
    async with tenant_client(sqlite_server) as t, tenant_client(sqlite_server) as other:
        good = await _token(t, "ann")
        claims = jwt.decode(good, options={"verify_signature": False})
        header = jwt.get_unverified_header(good)
        secret = await sqlite_server.clarion.store.tenant_secret(t.id)
        assert secret is not None
        now = int(time.time())
        forged = {
            "expired": jwt.encode({**claims, "exp": now - 120}, secret, "HS256", headers=header),
            "not yet valid": jwt.encode(
                {**claims, "nbf": now + 600}, secret, "HS256", headers=header
            ),
            "wrong audience": jwt.encode(
                {**claims, "aud": "other"}, secret, "HS256", headers=header
            ),
            "wrong issuer": jwt.encode({**claims, "iss": "other"}, secret, "HS256", headers=header),
            "no expiry": jwt.encode(
                {k: v for k, v in claims.items() if k != "exp"}, secret, "HS256", headers=header
            ),
            "alg none": _unsigned({**header, "alg": "none"}, claims),
            "other tenant's secret": jwt.encode(
                claims,
                await sqlite_server.clarion.store.tenant_secret(other.id),
                "HS256",
                headers=header,
            ),
            "tenant swapped in claims": jwt.encode(
                {**claims, "tid": other.id}, secret, "HS256", headers=header
            ),
            "garbage": "not-a-jwt",
        }
        for name, token in forged.items():
            async with websockets.connect(sqlite_server.ws_url) as ws:
                await ws.send(json.dumps({"type": "auth", "token": token}))
                error = await _recv(ws)
                assert error["type"] == "error", name
                assert error["error"]["code"] == "invalid_user_token", name
                await _closed_with(ws, 4401)


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part(header)}.{part(claims)}."


async def test_a_token_in_the_url_is_not_accepted(sqlite_server: Running) -> None:
    async with tenant_client(sqlite_server) as t:
        token = await _token(t, "ann")
        async with websockets.connect(f"{sqlite_server.ws_url}?token={token}") as ws:
            await ws.send(json.dumps({"type": "pong"}))
            error = await _recv(ws)
            assert error["type"] == "error"
            await _closed_with(ws, 4401)


@pytest.fixture
async def brisk_server(tmp_path: Path) -> AsyncIterator[Running]:
    """A server with very short gateway timers."""
    settings = Settings(
        data_dir=tmp_path / "var",
        secret_key=SECRET_KEY,
        port=0,
        gateway=GatewaySettings(
            heartbeat_seconds=0.2,
            idle_timeout_seconds=0.8,
            auth_timeout_seconds=0.3,
            max_frame_bytes=1024,
        ),
    )
    async with running(settings) as srv:
        yield srv


async def test_a_client_that_never_authenticates_is_closed(brisk_server: Running) -> None:
    async with websockets.connect(brisk_server.ws_url) as ws:
        await _closed_with(ws, 4408)


async def test_heartbeats_arrive_and_a_silent_client_is_dropped(brisk_server: Running) -> None:
    async with tenant_client(brisk_server) as t:
        ws = await _connect(brisk_server, await _token(t, "ann"))
        assert (await _recv_type(ws, "ping", timeout=1.0))["type"] == "ping"
        await _closed_with(ws, 4408)


async def test_a_client_answering_pings_stays_connected(brisk_server: Running) -> None:
    async with tenant_client(brisk_server) as t:
        ws = await _connect(brisk_server, await _token(t, "ann"))
        deadline = time.monotonic() + 2.0  # well past the 0.8 s idle timeout
        while time.monotonic() < deadline:
            await _recv_type(ws, "ping", timeout=1.0)
            await ws.send(json.dumps({"type": "pong"}))
        event_id = await _post(t, recipients={"users": ["ann"]})
        assert (await _recv_type(ws, "notification"))["event_id"] == event_id
        await ws.close()


async def test_an_oversized_frame_closes_the_connection(brisk_server: Running) -> None:
    async with tenant_client(brisk_server) as t:
        ws = await _connect(brisk_server, await _token(t, "ann"))
        await ws.send(json.dumps({"type": "read", "id": 1, "pad": "x" * 4096}))
        await _closed_with(ws, 1009)


async def test_invalid_frames_get_an_error_and_the_connection_stays(sqlite_server: Running) -> None:
    async with tenant_client(sqlite_server) as t:
        ws = await _connect(sqlite_server, await _token(t, "ann"))
        for bad in (
            "{",
            "[]",
            '{"type": "dance"}',
            '{"type": "read", "id": "x"}',
            '{"type": "read"}',
        ):
            await ws.send(bad)
            assert (await _recv_type(ws, "error"))["error"]["code"] == "invalid_frame"
        await ws.send(json.dumps({"type": "read", "id": 999_999}))
        assert (await _recv_type(ws, "error"))["error"]["code"] == "not_found"
        event_id = await _post(t, recipients={"users": ["ann"]})
        assert (await _recv_type(ws, "notification"))["event_id"] == event_id
        await ws.close()


async def test_reconnecting_with_a_cursor_delivers_what_was_missed(server: Running) -> None:
    async with tenant_client(server) as t:
        token = await _token(t, "ann")
        ws = await _connect(server, token)
        first = await _post(t, recipients={"users": ["ann"]}, title="one")
        seen = await _recv_type(ws, "notification")
        assert seen["event_id"] == first
        await _report(t, first, {"sent": 1})
        await ws.close()
        missed = []
        for n in range(3):
            # One at a time: routing runs concurrently, and the order under test is routing order.
            missed.append(await _post(t, recipients={"users": ["ann"]}, title=f"m{n}"))
            await _report(t, missed[-1], {"pending": 1})
        # Without a cursor only what never went out is sent again...
        fresh = await _connect(server, token)
        got = [(await _recv_type(fresh, "notification"))["event_id"] for _ in missed]
        assert got == missed
        await fresh.close()
        # ...with the cursor of the first notification, everything after it comes back.
        resumed = await _connect(server, token, since=seen["cursor"])
        again = [(await _recv_type(resumed, "notification"))["event_id"] for _ in missed]
        assert again == missed
        await resumed.send(json.dumps({"type": "resume", "since": "0"}))
        replay = [(await _recv_type(resumed, "notification"))["event_id"] for _ in range(4)]
        assert replay == [first, *missed]
        await resumed.close()


async def test_reading_on_one_session_tells_the_users_other_sessions(
    sqlite_server: Running,
) -> None:
    async with tenant_client(sqlite_server) as t:
        token = await _token(t, "ann")
        phone = await _connect(sqlite_server, token)
        laptop = await _connect(sqlite_server, token)
        await _post(t, recipients={"users": ["ann"]})
        on_phone = await _recv_type(phone, "notification")
        on_laptop = await _recv_type(laptop, "notification")
        assert on_phone["id"] == on_laptop["id"]
        await phone.send(json.dumps({"type": "read", "id": on_phone["id"]}))
        assert await _recv_type(laptop, "status") == {
            "type": "status",
            "id": on_phone["id"],
            "status": "read",
        }
        await phone.close()
        await laptop.close()


async def test_users_only_receive_their_own_tenants_notifications(sqlite_server: Running) -> None:
    async with tenant_client(sqlite_server) as one, tenant_client(sqlite_server) as two:
        ws_one = await _connect(sqlite_server, await _token(one, "ann"))
        ws_two = await _connect(sqlite_server, await _token(two, "ann"))
        event_id = await _post(two, recipients={"users": ["ann"]})
        assert (await _recv_type(ws_two, "notification"))["event_id"] == event_id
        with pytest.raises(TimeoutError):
            await _recv_type(ws_one, "notification", timeout=0.5)
        await ws_one.close()
        await ws_two.close()


async def test_a_socket_closes_when_its_token_expires(sqlite_server: Running) -> None:
    async with tenant_client(sqlite_server) as t:
        response = await t.http.post("/v1/users/ann/tokens", json={"ttl": 1})
        ws = await _connect(sqlite_server, response.json()["token"])
        error = await _recv_type(ws, "error", timeout=3.0)
        assert error["error"]["code"] == "invalid_user_token"
        await _closed_with(ws, 4401)


async def test_a_token_the_tenant_signed_itself_opens_a_socket(sqlite_server: Running) -> None:
    async with tenant_client(sqlite_server) as t:
        secret = await sqlite_server.clarion.store.tenant_secret(t.id)
        assert secret is not None
        now = int(time.time())
        claims = {
            "iss": "clarion",
            "aud": "clarion:user",
            "sub": "first-seen-here",
            "tid": t.id,
            "iat": now,
            "exp": now + 60,
        }
        token = jwt.encode(claims, secret, "HS256", headers={"kid": t.id})
        ws = await _connect(sqlite_server, token)
        event_id = await _post(t, recipients={"users": ["first-seen-here"]})
        assert (await _recv_type(ws, "notification"))["event_id"] == event_id
        await ws.close()


async def test_origins_outside_the_allowed_list_are_closed_with_1008(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "var",
        secret_key=SECRET_KEY,
        port=0,
        gateway=GatewaySettings(allowed_origins=["https://app.example"]),
    )
    async with running(settings) as srv:
        async with websockets.connect(srv.ws_url, origin="https://evil.example") as ws:  # type: ignore[arg-type]
            await _closed_with(ws, 1008)
        async with websockets.connect(srv.ws_url, origin="https://app.example") as ws:  # type: ignore[arg-type]
            await ws.send(json.dumps({"type": "pong"}))
            assert (await _recv(ws))["type"] == "error"
