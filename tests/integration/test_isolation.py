"""Isolation, route by route: every path of the OpenAPI document is called with another
tenant's API key and with a foreign user's token, aimed at one tenant's objects. Nothing may
answer 403 or 5xx, object routes answer 404, and no answer mentions the victim's data."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx

from tests.support import Running, tenant_client

APNS_TOKEN = "b2" * 32
SELF_AUTHENTICATED = ("/v1/unsubscribe/", "/v1/mail-events/")
"""Routes that take no API key or user token by design: a signed token in the path, or a
provider's signature over the body, is their credential."""


async def _routed(http: httpx.AsyncClient, event_id: str) -> None:
    for _ in range(300):
        if (await http.get(f"/v1/events/{event_id}")).json()["state"] == "routed":
            return
        await asyncio.sleep(0.02)
    raise AssertionError("not routed")


async def _snapshot(victim: httpx.AsyncClient, me: httpx.AsyncClient, event_id: str) -> Any:
    return (
        (await victim.get("/v1/users/ann")).json(),
        (await victim.get("/v1/groups/team")).json()["members"],
        (await victim.get(f"/v1/events/{event_id}")).json()["recipients"],
        (await victim.get("/v1/users/ann/devices")).json(),
        (await me.get("/v1/me/notifications")).json(),
        (await me.get("/v1/me/preferences")).json(),
    )


async def test_no_route_reaches_another_tenants_or_users_objects(sqlite_server: Running) -> None:
    srv = sqlite_server
    async with tenant_client(srv) as victim, tenant_client(srv) as attacker:
        await victim.http.put("/v1/users/ann", json={"email": "ann@victim.example"})
        await victim.http.put("/v1/groups/team", json={})
        await victim.http.put("/v1/groups/team/members/ann")
        await victim.http.put(f"/v1/users/ann/devices/{APNS_TOKEN}", json={"provider": "apns"})
        event_id = (
            await victim.http.post(
                "/v1/events",
                json={"type": "secret.thing", "recipients": {"groups": ["team"]}, "title": "T0P"},
            )
        ).json()["id"]
        await _routed(victim.http, event_id)
        ann_token = (await victim.http.post("/v1/users/ann/tokens")).json()["token"]
        bob_token = (await victim.http.post("/v1/users/bob/tokens")).json()["token"]
        eve_token = (await attacker.http.post("/v1/users/eve/tokens")).json()["token"]
        base = srv.base_url
        async with (
            httpx.AsyncClient(
                base_url=base, headers={"Authorization": f"Bearer {ann_token}"}
            ) as ann,
            httpx.AsyncClient(
                base_url=base, headers={"Authorization": f"Bearer {bob_token}"}
            ) as bob,
            httpx.AsyncClient(
                base_url=base, headers={"Authorization": f"Bearer {eve_token}"}
            ) as eve,
        ):
            await ann.put("/v1/me/preferences/groups/team", json={"channels": {"email": False}})
            [item] = (await ann.get("/v1/me/notifications")).json()["items"]
            before = await _snapshot(victim.http, ann, event_id)
            values = {
                "user": "ann",
                "group": "team",
                "event_id": event_id,
                "item_id": str(item["id"]),
                "token": APNS_TOKEN,
                "name": "victim-key",
                "scope": "groups",
                "key": "team",
                "tenant_id": victim.id,
            }
            bodies = {
                "/v1/events": {"type": "t", "recipients": {"users": ["ann"]}},
                "/v1/users/{user}": {},
                "/v1/groups/{group}": {},
                "/v1/users/{user}/devices/{token}": {"provider": "apns"},
                "/v1/me/devices/{token}": {"provider": "apns"},
                "/v1/me/preferences/{scope}/{key}": {"channels": {"*": False}},
                "/v1/me/email": {"status": "unsubscribed"},
            }
            secrets = [
                event_id,
                item["notification_id"],
                "T0P",
                "secret.thing",
                "victim.example",
                APNS_TOKEN[:12],
            ]
            spec = (await attacker.http.get("/openapi.json")).json()
            called = 0
            # Reads and deletes first: the writes that follow create the attacker's own
            # namesakes ("ann" in the attacker's tenant), which are theirs to read.
            phases = [("get", "delete"), ("post", "put", "patch")]
            routes = [
                (path, method, phase)
                for phase, methods in enumerate(phases)
                for path, operations in spec["paths"].items()
                for method in operations
                if path.startswith("/v1/") and method in methods
            ]
            for path, method, phase in routes:
                concrete = re.sub(r"\{(\w+)(?::path)?\}", lambda m: values[m.group(1)], path)
                clients = [bob, eve] if path.startswith("/v1/me") else [attacker.http]
                if phase == 1 and path == "/v1/me/devices/{token}":
                    # A device registered by another user of the same tenant moves to them by
                    # design (one phone, a new login); only the foreign tenant is an attacker.
                    clients = [eve]
                for client in clients:
                    body = bodies.get(path)
                    response = await client.request(
                        method.upper(),
                        concrete,
                        json=body if method in ("post", "put") else None,
                    )
                    called += 1
                    where = (method, path, response.status_code, response.text[:200])
                    assert response.status_code != 403, where
                    assert response.status_code < 500, where
                    for secret in secrets:
                        assert secret not in response.text, where
                    if "{" in path and phase == 0:
                        assert response.status_code == 404, where
                    if method == "post" and "{item_id}" in path:
                        assert response.status_code == 404, where
                # The other kind of credential is refused outright.
                wrong = [attacker.http] if path.startswith("/v1/me") else [eve]
                if path.startswith(SELF_AUTHENTICATED):
                    wrong = []
                for client in wrong:
                    response = await client.request(method.upper(), concrete, json=bodies.get(path))
                    assert response.status_code == 401, (method, path, response.text[:200])
            assert called > 30
            after = await _snapshot(victim.http, ann, event_id)
            assert after == before
