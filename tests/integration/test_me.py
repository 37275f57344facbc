"""The device side over real HTTP and sockets: what an app does with its user token."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from typing import Any

import httpx
import jwt
import pytest
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from clarion.adapters.storage import tables
from tests.support import Running, Tenant, tenant_client

APNS_TOKEN = "a1" * 32


async def _me(srv: Running, t: Tenant, user: str) -> httpx.AsyncClient:
    token = (await t.http.post(f"/v1/users/{user}/tokens")).json()["token"]
    return httpx.AsyncClient(
        base_url=srv.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )


async def _post(t: Tenant, **body: Any) -> str:
    response = await t.http.post("/v1/events", json={"type": "t", **body})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def _routed(t: Tenant, event_id: str) -> dict[str, Any]:
    for _ in range(300):
        report: dict[str, Any] = (await t.http.get(f"/v1/events/{event_id}")).json()
        if report["state"] == "routed":
            return report
        await asyncio.sleep(0.02)
    raise AssertionError("not routed")


async def _inbox(me: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    response = await me.get("/v1/me/notifications", params=params)
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


async def _team_stats(t: Tenant) -> dict[str, int]:
    stats = (await t.http.get("/v1/stats", params={"group": "team"})).json()
    counts: dict[str, int] = stats["recipients"]["by_status"]
    return {k: v for k, v in counts.items() if v}


async def test_a_scripted_device_session(server: Running, tenant: Tenant) -> None:
    t = tenant
    await t.http.put("/v1/groups/team", json={})
    for user in ("ann", "bob"):
        await t.http.put(f"/v1/groups/team/members/{user}")
    async with await _me(server, t, "ann") as me:
        device = await me.put(f"/v1/me/devices/{APNS_TOKEN}", json={"provider": "apns"})
        assert device.status_code == 201
        assert device.json()["token"] != APNS_TOKEN  # never echoed whole
        assert [d["provider"] for d in (await me.get("/v1/me/devices")).json()] == ["apns"]

        first = await _post(t, recipients={"groups": ["team"]}, category="billing", title="1")
        await _routed(t, first)
        [item] = await _inbox(me)
        assert (item["event_id"], item["group"], item["category"]) == (first, "team", "billing")
        assert await _team_stats(t) == {"pending": 2}
        assert (await me.get("/v1/me/unread-counts")).json() == {
            "total": 1,
            "groups": {"team": 1},
            "categories": {"billing": 1},
        }
        received = await me.post(f"/v1/me/notifications/{item['id']}/received")
        assert received.json() == {"id": item["id"], "status": "received"}
        assert await _team_stats(t) == {"pending": 1, "received": 1}
        read = await me.post(f"/v1/me/notifications/{item['id']}/read")
        assert read.json() == {"id": item["id"], "status": "read"}
        late = await me.post(f"/v1/me/notifications/{item['id']}/received")
        assert late.json()["status"] == "read"  # never backwards
        assert await _team_stats(t) == {"pending": 1, "read": 1}

        for n in range(3):
            await _routed(
                t, await _post(t, recipients={"users": ["ann"]}, category="billing", title=f"b{n}")
            )
        other = await _post(t, recipients={"users": ["ann"]}, category="news")
        await _routed(t, other)
        bulk = await me.post("/v1/me/notifications/read", json={"category": "billing"})
        assert bulk.json() == {"read": 3}
        assert [i["event_id"] for i in await _inbox(me, status="unread")] == [other]

        unsubscribed = await me.put(
            "/v1/me/preferences/groups/team", json={"channels": {"*": False}}
        )
        assert unsubscribed.json() == {"channels": {"*": False}}
        muted = await _post(t, recipients={"groups": ["team"]}, title="muted")
        report = await _routed(t, muted)
        assert report["recipients"]["by_status"]["suppressed"] == 1  # ann
        assert report["recipients"]["by_status"]["pending"] == 1  # bob
        assert muted not in [i["event_id"] for i in await _inbox(me)]
        assert await _team_stats(t) == {"pending": 2, "read": 1, "suppressed": 1}
        assert (await me.get("/v1/me/preferences")).json() == {
            "groups": {"team": {"*": False}},
            "categories": {},
        }
        await me.put("/v1/me/preferences/groups/team", json={"channels": {}})
        again = await _post(t, recipients={"groups": ["team"]}, title="back")
        assert (await _routed(t, again))["recipients"]["by_status"]["pending"] == 2


async def test_inbox_pages_and_filters(sqlite_server: Running) -> None:
    async with tenant_client(sqlite_server) as t:
        await t.http.put("/v1/groups/g1", json={})
        await t.http.put("/v1/groups/g1/members/ann")
        ids = []
        for n in range(5):
            body: dict[str, Any] = {"recipients": {"users": ["ann"]}, "title": f"n{n}"}
            if n % 2:
                body["group"] = "g1"
                body["category"] = "c1"
            ids.append(await _post(t, **body))
            # Routing runs concurrently; routing one at a time fixes the inbox order.
            await _routed(t, ids[-1])
        async with await _me(sqlite_server, t, "ann") as me:
            first = (await me.get("/v1/me/notifications", params={"limit": 2})).json()
            assert [i["event_id"] for i in first["items"]] == ids[::-1][:2]
            second = (
                await me.get(
                    "/v1/me/notifications", params={"limit": 2, "cursor": first["next_cursor"]}
                )
            ).json()
            assert [i["event_id"] for i in second["items"]] == ids[::-1][2:4]
            assert [i["event_id"] for i in await _inbox(me, group="g1")] == [ids[3], ids[1]]
            assert [i["event_id"] for i in await _inbox(me, category="c1")] == [ids[3], ids[1]]
            future = "2999-01-01T00:00:00Z"
            assert await _inbox(me, since=future) == []
            assert len(await _inbox(me, since="2000-01-01T00:00:00Z")) == 5
            item = (await _inbox(me))[0]
            one = await me.get(f"/v1/me/notifications/{item['id']}")
            assert one.json() == item
            bad = await me.get("/v1/me/notifications", params={"status": "maybe"})
            assert bad.status_code == 422
            naive = await me.get("/v1/me/notifications", params={"since": "2000-01-01T00:00:00"})
            assert naive.json()["error"]["code"] == "invalid_request"


async def test_another_users_items_and_devices_are_not_found(sqlite_server: Running) -> None:
    async with tenant_client(sqlite_server) as t, tenant_client(sqlite_server) as other:
        await _routed(t, await _post(t, recipients={"users": ["ann"]}))
        async with (
            await _me(sqlite_server, t, "ann") as ann,
            await _me(sqlite_server, t, "bob") as bob,
            await _me(sqlite_server, other, "ann") as stranger,
        ):
            [item] = await _inbox(ann)
            await ann.put(f"/v1/me/devices/{APNS_TOKEN}", json={"provider": "apns"})
            for client in (bob, stranger):
                for method, path in (
                    ("GET", f"/v1/me/notifications/{item['id']}"),
                    ("POST", f"/v1/me/notifications/{item['id']}/read"),
                    ("POST", f"/v1/me/notifications/{item['id']}/received"),
                    ("DELETE", f"/v1/me/devices/{APNS_TOKEN}"),
                ):
                    response = await client.request(method, path)
                    assert response.status_code == 404, (method, path)
                    assert response.json()["error"]["code"] == "not_found"
                assert await _inbox(client) == []
                assert (await client.get("/v1/me/unread-counts")).json()["total"] == 0
                assert (await client.post("/v1/me/notifications/read")).json() == {"read": 0}
            assert (await ann.get(f"/v1/me/notifications/{item['id']}")).json()[
                "status"
            ] == "pending"


async def test_reading_over_http_is_pushed_to_the_users_sockets(sqlite_server: Running) -> None:
    async with tenant_client(sqlite_server) as t:
        token = (await t.http.post("/v1/users/ann/tokens")).json()["token"]
        async with websockets.connect(sqlite_server.ws_url) as ws:
            await ws.send(json.dumps({"type": "auth", "token": token}))
            assert json.loads(await ws.recv())["type"] == "ready"
            for _ in range(2):
                await _post(t, recipients={"users": ["ann"]}, category="c")
            got = [json.loads(await asyncio.wait_for(ws.recv(), 2)) for _ in range(2)]
            ids = sorted(f["id"] for f in got)
            async with await _me(sqlite_server, t, "ann") as me:
                await me.post(f"/v1/me/notifications/{ids[0]}/read")
                frame = json.loads(await asyncio.wait_for(ws.recv(), 2))
                assert frame == {"type": "status", "id": ids[0], "status": "read"}
                await me.post("/v1/me/notifications/read", json={"category": "c"})
                frame = json.loads(await asyncio.wait_for(ws.recv(), 2))
                assert frame == {"type": "statuses", "ids": [ids[1]], "status": "read"}


async def test_opting_out_of_one_channel_suppresses_only_that_channel(server: Running) -> None:
    async with tenant_client(server) as t, await _me(server, t, "ann") as me:
        await me.put(
            "/v1/me/preferences/categories/promo",
            json={"channels": {"*": False, "websocket": True}},
        )
        kept = await _post(t, recipients={"users": ["ann"]}, category="promo")
        assert (await _routed(t, kept))["recipients"]["by_status"]["pending"] == 1
        await me.put("/v1/me/preferences/categories/promo", json={"channels": {"websocket": False}})
        dropped = await _post(t, recipients={"users": ["ann"]}, category="promo")
        report = await _routed(t, dropped)
        assert report["recipients"]["by_status"]["suppressed"] == 1
        assert report["channels"]["websocket"]["by_status"]["suppressed"] == 1
        bad = await me.put("/v1/me/preferences/categories/promo", json={"channels": {"fax": False}})
        assert bad.json()["error"]["code"] == "invalid_request"
        wrong_scope = await me.put("/v1/me/preferences/teams/x", json={"channels": {}})
        assert wrong_scope.status_code == 422


async def test_devices_move_between_users_and_come_back_from_retirement(server: Running) -> None:
    async with tenant_client(server) as t:
        async with await _me(server, t, "ann") as ann, await _me(server, t, "bob") as bob:
            assert (
                await ann.put(f"/v1/me/devices/{APNS_TOKEN}", json={"provider": "apns"})
            ).status_code == 201
            moved = await bob.put(f"/v1/me/devices/{APNS_TOKEN}", json={"provider": "apns"})
            assert moved.status_code == 200
            assert (await ann.get("/v1/me/devices")).json() == []
            [device] = (await bob.get("/v1/me/devices")).json()
            # The provider retires it (as an APNs 410 would)...
            async with server.clarion.store.engine.begin() as conn:
                await conn.execute(
                    tables.devices.update()
                    .where(tables.devices.c.id == device["id"])
                    .values(status="retired", retired_reason="Unregistered")
                )
            assert (await bob.get("/v1/me/devices")).json()[0]["status"] == "retired"
            # ...and the app registering it again revives it.
            revived = await bob.put(f"/v1/me/devices/{APNS_TOKEN}", json={"provider": "apns"})
            assert (revived.json()["status"], revived.json()["retired_reason"]) == ("active", None)
            assert (await bob.delete(f"/v1/me/devices/{APNS_TOKEN}")).status_code == 204
            assert (await bob.get("/v1/me/devices")).json() == []


async def test_device_tokens_are_checked_per_provider(sqlite_server: Running) -> None:
    async with tenant_client(sqlite_server) as t:
        endpoint = "https://push.example/send/abc%2Fdef"
        cases = [
            ({"provider": "apns"}, "not-hex", 422),
            ({"provider": "fcm"}, "short", 422),
            ({"provider": "webpush"}, endpoint, 422),  # keys missing
            ({"provider": "webpush", "keys": {"p256dh": "BPx_-1", "auth": "a2"}}, endpoint, 201),
            ({"provider": "wns"}, "http%3A%2F%2Fplain.example%2Fx", 422),
            ({"provider": "apns", "keys": {"p256dh": "x"}}, APNS_TOKEN, 422),
            ({"provider": "pigeon"}, APNS_TOKEN, 422),
        ]
        for body, token, status in cases:
            response = await t.http.put(f"/v1/users/ann/devices/{token}", json=body)
            assert response.status_code == status, (body, token, response.text)
        listed = (await t.http.get("/v1/users/ann/devices")).json()
        assert [d["provider"] for d in listed] == ["webpush"]
        assert (await t.http.delete("/v1/users/ann/devices/nope")).status_code == 404
        assert (await t.http.get("/v1/users/nobody/devices")).status_code == 404


async def test_users_control_their_email_but_not_a_bounce(sqlite_server: Running) -> None:
    async with tenant_client(sqlite_server) as t, await _me(sqlite_server, t, "ann") as me:
        assert (await me.put("/v1/me/email", json={"status": "unsubscribed"})).status_code == 404
        await t.http.put("/v1/users/ann", json={"email": "ann@example.org"})
        assert (await me.get("/v1/me/email")).json() == {
            "email": "ann@example.org",
            "status": "subscribed",
        }
        off = await me.put("/v1/me/email", json={"status": "unsubscribed"})
        assert off.json()["status"] == "unsubscribed"
        assert (await t.http.get("/v1/users/ann")).json()["email_status"] == "unsubscribed"
        assert (await me.put("/v1/me/email", json={"status": "bounced"})).status_code == 422
        # A new address starts subscribed again.
        await t.http.put("/v1/users/ann", json={"email": "ann@new.example"})
        assert (await me.get("/v1/me/email")).json()["status"] == "subscribed"


def _b64(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


async def test_the_jwt_attack_list_gets_401_every_time(sqlite_server: Running) -> None:
    async with tenant_client(sqlite_server) as t, tenant_client(sqlite_server) as other:
        ec_key = ec.generate_private_key(ec.SECP256R1())
        ec_public = (
            ec_key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        rsa_public = (
            rsa_key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        assert (
            await t.http.put(
                "/v1/token-keys/app", json={"algorithm": "ES256", "public_key": ec_public}
            )
        ).status_code == 201
        assert (
            await t.http.put(
                "/v1/token-keys/rsa", json={"algorithm": "RS256", "public_key": rsa_public}
            )
        ).status_code == 201
        mismatch = await t.http.put(
            "/v1/token-keys/bad", json={"algorithm": "RS256", "public_key": ec_public}
        )
        assert mismatch.json()["error"]["code"] == "invalid_request"
        secret = await sqlite_server.clarion.store.tenant_secret(t.id)
        other_secret = await sqlite_server.clarion.store.tenant_secret(other.id)
        now = int(time.time())
        claims = {
            "iss": "clarion",
            "aud": "clarion:user",
            "sub": "ann",
            "tid": t.id,
            "iat": now,
            "exp": now + 300,
        }

        def hs(c: dict[str, Any], key: Any = secret, kid: str = t.id) -> str:
            return jwt.encode(c, key, "HS256", headers={"kid": kid})

        good = {
            "issued by clarion": (await t.http.post("/v1/users/ann/tokens")).json()["token"],
            "tenant-signed HS256": hs(claims),
            "tenant-signed ES256": jwt.encode(
                claims, ec_key, "ES256", headers={"kid": f"{t.id}:app"}
            ),
            "tenant-signed RS256": jwt.encode(
                claims, rsa_key, "RS256", headers={"kid": f"{t.id}:rsa"}
            ),
        }
        hmac_with_public_key = (
            _b64({"alg": "HS256", "kid": f"{t.id}:rsa", "typ": "JWT"}) + "." + _b64(claims)
        )
        signature = hmac.new(
            rsa_public.encode(), hmac_with_public_key.encode(), hashlib.sha256
        ).digest()
        confused = (
            hmac_with_public_key + "." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()
        )
        bad = {
            "alg none": _b64({"alg": "none", "kid": t.id}) + "." + _b64(claims) + ".",
            "algorithm confusion (HS256 with the RSA public key)": confused,
            "ES256 key used with RS256": jwt.encode(
                claims, rsa_key, "RS256", headers={"kid": f"{t.id}:app"}
            ),
            "expired": hs({**claims, "exp": now - 120}),
            "not yet valid": hs({**claims, "nbf": now + 600}),
            "issued in the future beyond leeway": hs(
                {**claims, "iat": now + 600, "nbf": now + 600}
            ),
            "wrong audience": hs({**claims, "aud": "someone-else"}),
            "wrong issuer": hs({**claims, "iss": "someone-else"}),
            "no exp": hs({k: v for k, v in claims.items() if k != "exp"}),
            "another tenant's kid, claiming ours": hs(claims, other_secret, other.id),
            "another tenant's secret under our kid": hs(claims, other_secret),
            "tid swapped": hs({**claims, "tid": other.id}),
            "unknown key": jwt.encode(claims, ec_key, "ES256", headers={"kid": f"{t.id}:nope"}),
            "garbage": "a.b.c",
        }
        for name, token in {**good, **bad}.items():
            async with httpx.AsyncClient(
                base_url=sqlite_server.base_url, headers={"Authorization": f"Bearer {token}"}
            ) as me:
                response = await me.get("/v1/me/unread-counts")
            if name in good:
                assert response.status_code == 200, (name, response.text)
            else:
                assert response.status_code == 401, (name, response.text)
                assert response.json()["error"]["code"] == "invalid_user_token", name
        assert (await t.http.delete("/v1/token-keys/app")).status_code == 204
        async with httpx.AsyncClient(
            base_url=sqlite_server.base_url,
            headers={"Authorization": f"Bearer {good['tenant-signed ES256']}"},
        ) as me:
            assert (await me.get("/v1/me/unread-counts")).status_code == 401


@pytest.mark.parametrize("header", [None, "Bearer", "Basic abc", "Bearer clk_not_a_jwt"])
async def test_me_routes_need_a_user_token(sqlite_server: Running, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    async with httpx.AsyncClient(base_url=sqlite_server.base_url, headers=headers) as http:
        response = await http.get("/v1/me/notifications")
    assert response.status_code == 401
    assert response.json()["error"]["code"] in ("unauthorized", "invalid_user_token")


async def test_what_a_user_opted_out_of_never_reaches_their_socket(sqlite_server: Running) -> None:
    async with tenant_client(sqlite_server) as t:
        async with await _me(sqlite_server, t, "ann") as me:
            await me.put("/v1/me/preferences/categories/promo", json={"channels": {"*": False}})
            token = (await t.http.post("/v1/users/ann/tokens")).json()["token"]
            async with websockets.connect(sqlite_server.ws_url) as ws:
                await ws.send(json.dumps({"type": "auth", "token": token, "since": "0"}))
                assert json.loads(await ws.recv())["type"] == "ready"
                muted = await _post(t, recipients={"users": ["ann"]}, category="promo")
                wanted = await _post(t, recipients={"users": ["ann"]}, category="news")
                frame = json.loads(await asyncio.wait_for(ws.recv(), 2))
                assert frame["event_id"] == wanted
                await ws.send(json.dumps({"type": "resume", "since": "0"}))
                replay = json.loads(await asyncio.wait_for(ws.recv(), 2))
                assert replay["event_id"] == wanted
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(ws.recv(), 0.5)
            report = await _routed(t, muted)
            assert report["recipients"]["by_status"]["suppressed"] == 1
            hidden = (await t.http.get(f"/v1/events/{muted}/recipients/ann")).json()["item_id"]
            assert hidden not in [i["id"] for i in await _inbox(me)]
            for path in (f"/{hidden}/read", f"/{hidden}/received", f"/{hidden}"):
                method = "GET" if path == f"/{hidden}" else "POST"
                response = await me.request(method, f"/v1/me/notifications{path}")
                assert response.status_code == 404, path


async def test_a_token_for_an_impossible_user_id_is_refused(sqlite_server: Running) -> None:
    async with tenant_client(sqlite_server) as t:
        secret = await sqlite_server.clarion.store.tenant_secret(t.id)
        now = int(time.time())
        for sub in ("", " padded", "line\nbreak", "x" * 300):
            claims = {
                "iss": "clarion",
                "aud": "clarion:user",
                "sub": sub,
                "tid": t.id,
                "iat": now,
                "exp": now + 60,
            }
            token = jwt.encode(claims, secret, "HS256", headers={"kid": t.id})
            async with httpx.AsyncClient(
                base_url=sqlite_server.base_url, headers={"Authorization": f"Bearer {token}"}
            ) as me:
                response = await me.get("/v1/me/unread-counts")
            assert response.status_code == 401, sub
