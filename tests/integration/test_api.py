"""The producer API over real HTTP: what it accepts, what it refuses, and how."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tests.support import Running, Tenant, tenant_client


async def _error(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert body["error"]["docs"] == f"docs/api.md#{code}"
    return body["error"]


async def _wait_routed(http: httpx.AsyncClient, event_id: str) -> dict[str, object]:
    for _ in range(200):
        report = (await http.get(f"/v1/events/{event_id}")).json()
        if report["state"] == "routed":
            return report
        await asyncio.sleep(0.02)
    raise AssertionError("event was not routed")


async def test_an_event_to_a_group_is_accepted_then_routed_to_every_member(tenant: Tenant) -> None:
    http = tenant.http
    assert (await http.put("/v1/groups/team", json={"name": "Team"})).status_code == 201
    for user in ("ann", "bob", "cid"):
        assert (await http.put(f"/v1/groups/team/members/{user}")).status_code == 201
    accepted = await http.post(
        "/v1/events",
        json={"type": "task.assigned", "recipients": {"groups": ["team"]}, "title": "T"},
    )
    assert accepted.status_code == 202
    report = await _wait_routed(http, accepted.json()["id"])
    assert report["recipients"]["total"] == 3
    assert report["recipients"]["by_status"]["pending"] == 3
    assert report["channels"]["websocket"]["total"] == 3
    assert report["notification"]["title"] == "T"


async def test_the_same_idempotency_key_and_body_answer_the_same_event(tenant: Tenant) -> None:
    body = {"type": "t", "recipients": {"users": ["a"]}, "data": {"x": 1, "y": [1, 2]}}
    first = await tenant.http.post("/v1/events", json=body, headers={"Idempotency-Key": "k"})
    # Same meaning, other key order and spacing: still the same request.
    reordered = json.dumps(
        {"data": {"y": [1, 2], "x": 1}, "recipients": {"users": ["a"]}, "type": "t"}
    )
    again = await tenant.http.post(
        "/v1/events",
        content=reordered,
        headers={"Idempotency-Key": "k", "Content-Type": "application/json"},
    )
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    other = await tenant.http.post(
        "/v1/events", json={**body, "title": "changed"}, headers={"Idempotency-Key": "k"}
    )
    await _error(other, 422, "idempotency_key_reused")


async def test_requests_without_a_valid_api_key_are_refused(sqlite_server: Running) -> None:
    async with httpx.AsyncClient(base_url=sqlite_server.base_url) as http:
        body = {"type": "t", "recipients": {"users": ["a"]}}
        missing = await http.post("/v1/events", json=body)
        await _error(missing, 401, "unauthorized")
        assert missing.headers["WWW-Authenticate"] == "Bearer"
        forged = "clk_0123456789abcdef_" + "A" * 43 + "AAAAAA"
        await _error(
            await http.post("/v1/events", json=body, headers={"Authorization": f"Bearer {forged}"}),
            401,
            "invalid_api_key",
        )
        await _error(
            await http.get("/v1/users/a", headers={"Authorization": "Basic abc"}),
            401,
            "unauthorized",
        )


async def test_a_revoked_key_is_refused_on_the_next_request(sqlite_server: Running) -> None:
    async with tenant_client(sqlite_server) as t:
        key = await sqlite_server.clarion.tenancy.create_key(t.id, "temp")
        headers = {"Authorization": f"Bearer {key.api_key}"}
        assert (await t.http.put("/v1/users/u", json={}, headers=headers)).status_code == 201
        await sqlite_server.clarion.tenancy.revoke_key(key.id)
        await _error(await t.http.get("/v1/users/u", headers=headers), 401, "invalid_api_key")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"recipients": {"users": ["a"]}}, "body.type"),
        ({"type": "t", "recipients": {"users": [1]}}, "body.recipients.users.0"),
        ({"type": "t", "recipients": {"users": ["a"]}, "unknown": 1}, "body.unknown"),
        ({"type": "t", "recipients": {"users": ["a"], "teams": ["x"]}}, "body.recipients.teams"),
        ({"type": "t", "recipients": {"users": ["a"]}, "channels": ["pigeon"]}, "body.channels.0"),
        ({"type": "t", "recipients": {"users": ["a"]}, "data": []}, "body.data"),
        ({"type": "has space", "recipients": {"users": ["a"]}}, "body.type"),
        ({"type": "t", "recipients": {"users": ["bad\nkey"]}}, "body.recipients.users.0"),
        ({"type": "t", "recipients": {"users": ["a"]}, "title": 5}, "body.title"),
    ],
)
async def test_invalid_events_get_422_naming_the_field(
    sqlite_server: Running, body: dict[str, object], field: str
) -> None:
    async with tenant_client(sqlite_server) as t:
        error = await _error(await t.http.post("/v1/events", json=body), 422, "invalid_request")
        fields = [f["field"] for f in error["details"]["fields"]]  # type: ignore[index]
        assert field in fields


async def test_malformed_bodies_are_refused_before_anything_is_stored(
    sqlite_server: Running,
) -> None:
    async with tenant_client(sqlite_server) as t:
        json_header = {"Content-Type": "application/json"}
        await _error(
            await t.http.post("/v1/events", content=b'{"type": "t",', headers=json_header),
            400,
            "malformed_json",
        )
        await _error(
            await t.http.post("/v1/events", content=b"\xff\xfe", headers=json_header),
            400,
            "malformed_json",
        )
        await _error(
            await t.http.post(
                "/v1/events", content=b"type=t", headers={"Content-Type": "text/plain"}
            ),
            415,
            "unsupported_media_type",
        )
        huge = {"type": "t", "recipients": {"users": ["a"]}, "body": "x" * 2_000_000}
        await _error(await t.http.post("/v1/events", json=huge), 413, "body_too_large")
        await _error(
            await t.http.post("/v1/events", json={"type": "t", "recipients": {}}),
            422,
            "no_recipients",
        )
        too_many = {"type": "t", "recipients": {"users": [f"u{i}" for i in range(10_001)]}}
        await _error(await t.http.post("/v1/events", json=too_many), 422, "too_many_recipients")
        await _error(
            await t.http.post(
                "/v1/events",
                json={"type": "t", "recipients": {"users": ["a"]}, "channels": ["apns"]},
            ),
            422,
            "unknown_channel",
        )
        await _error(
            await t.http.post("/v1/events", json={"type": "t", "recipients": {"groups": ["nope"]}}),
            422,
            "unknown_group",
        )
        state = sqlite_server.clarion.store
        assert (
            await state.unrouted_events(accepted_before=sqlite_server.clarion.clock.now(), limit=10)
            == []
        )


@pytest.mark.parametrize(
    "raw",
    [
        b'{"type":"t","recipients":{"users":["a"]},"data":{"x":NaN}}',
        b'{"type":"t","recipients":{"users":["a"]},"data":{"x":-Infinity}}',
        b'{"type":"t","recipients":{"users":["a"]},"data":{"x":1e999}}',
        b'{"type":"t","recipients":{"users":["a"]},"title":"a\\u0000b"}',
        b'{"type":"t","recipients":{"users":["a"]},"data":{"k\\u0000":1}}',
        b'{"type":"t","recipients":{"users":["a"]},"body":"\\ud800"}',
        b'{"type":"t","recipients":{"users":["a"]},"data":{"x":' + b"[" * 40 + b"]" * 40 + b"}}",
    ],
)
async def test_values_no_database_could_store_are_refused_up_front(
    sqlite_server: Running, raw: bytes
) -> None:
    async with tenant_client(sqlite_server) as t:
        response = await t.http.post(
            "/v1/events", content=raw, headers={"Content-Type": "application/json"}
        )
        await _error(response, 422, "invalid_request")


async def test_a_deeply_nested_body_is_malformed_not_a_crash(sqlite_server: Running) -> None:
    async with tenant_client(sqlite_server) as t:
        raw = (
            b'{"type":"t","recipients":{"users":["a"]},"data":{"x":'
            + b"[" * 5000
            + b"]" * 5000
            + b"}}"
        )
        response = await t.http.post(
            "/v1/events", content=raw, headers={"Content-Type": "application/json"}
        )
        assert response.status_code in (400, 422)
        assert response.json()["error"]["code"] in ("malformed_json", "invalid_request")


async def test_unknown_routes_and_methods_answer_from_the_catalogue(sqlite_server: Running) -> None:
    async with tenant_client(sqlite_server) as t:
        await _error(await t.http.get("/v1/nothing"), 404, "route_not_found")
        await _error(await t.http.delete("/v1/events"), 405, "method_not_allowed")
        await _error(await t.http.get("/v1/events/no-such-event"), 404, "not_found")
        await _error(await t.http.get("/v1/users/nobody"), 404, "not_found")


async def test_users_are_created_read_replaced_and_erased(sqlite_server: Running) -> None:
    async with tenant_client(sqlite_server) as t:
        created = await t.http.put(
            "/v1/users/ann",
            json={
                "email": "ann@example.org",
                "locale": "fr-FR",
                "timezone": "Europe/Paris",
                "attributes": {"plan": "pro"},
            },
        )
        assert created.status_code == 201
        assert created.json()["email"] == "ann@example.org"
        replaced = await t.http.put("/v1/users/ann", json={"locale": "de"})
        assert replaced.status_code == 200
        assert replaced.json()["email"] is None
        assert (await t.http.get("/v1/users/ann")).json()["locale"] == "de"
        assert (await t.http.delete("/v1/users/ann")).status_code == 204
        await _error(await t.http.get("/v1/users/ann"), 404, "not_found")
        await _error(
            await t.http.put("/v1/users/bob", json={"timezone": "Mars/Base"}),
            422,
            "invalid_request",
        )
        await _error(await t.http.put("/v1/users/bob", json={"id": "x"}), 422, "invalid_request")
        await _error(await t.http.put("/v1/users/%20bob", json={}), 422, "invalid_identifier")


async def test_one_tenant_cannot_see_anothers_objects(sqlite_server: Running) -> None:
    async with tenant_client(sqlite_server) as one, tenant_client(sqlite_server) as two:
        await one.http.put("/v1/users/ann", json={})
        event = await one.http.post(
            "/v1/events", json={"type": "t", "recipients": {"users": ["ann"]}}
        )
        await _error(await two.http.get("/v1/users/ann"), 404, "not_found")
        await _error(await two.http.get(f"/v1/events/{event.json()['id']}"), 404, "not_found")


async def test_groups_and_communities_reject_kind_changes(sqlite_server: Running) -> None:
    async with tenant_client(sqlite_server) as t:
        assert (await t.http.put("/v1/groups/town", json={"kind": "community"})).status_code == 201
        group = await t.http.put("/v1/groups/red", json={"community": "town"})
        assert group.status_code == 201
        assert group.json()["community"] == "town"
        await _error(
            await t.http.put("/v1/groups/red", json={"kind": "community"}),
            409,
            "group_kind_mismatch",
        )
        await _error(
            await t.http.put("/v1/groups/x", json={"community": "red"}), 409, "group_kind_mismatch"
        )
        await _error(
            await t.http.put("/v1/groups/x", json={"community": "nope"}), 422, "unknown_community"
        )
        await _error(await t.http.put("/v1/groups/nope/members/u"), 404, "not_found")


async def test_user_tokens_are_short_lived_and_bounded(sqlite_server: Running) -> None:
    async with tenant_client(sqlite_server) as t:
        issued = await t.http.post("/v1/users/newbie/tokens")
        assert issued.status_code == 201
        assert set(issued.json()) == {"token", "expires_at"}
        assert (await t.http.get("/v1/users/newbie")).status_code == 200
        await _error(
            await t.http.post("/v1/users/a/tokens", json={"ttl": 10**9}), 422, "invalid_request"
        )


async def test_the_openapi_document_lists_every_route(sqlite_server: Running) -> None:
    async with httpx.AsyncClient(base_url=sqlite_server.base_url) as http:
        spec = (await http.get("/openapi.json")).json()
    paths = set(spec["paths"])
    assert {
        "/v1/events",
        "/v1/events/{event_id}",
        "/v1/events/{event_id}/recipients/{user}",
        "/v1/users/{user}",
        "/v1/users/{user}/tokens",
        "/v1/groups/{group}",
        "/v1/groups/{group}/members/{user}",
    } <= paths
