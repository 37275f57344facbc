"""Routing rules over HTTP: saved, replaced, read, listed in order, deleted; refused with the
field at fault; tested against a sample event and user with the trace of every rule tried;
and each tenant's own."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support import Running, Tenant, tenant_client

GOLD = {
    "event_type": "order.*",
    "condition": 'user.attributes.tier == "gold"',
    "channels": ["push", "email"],
    "template": "order-gold",
    "priority": "critical",
    "ttl": 600,
    "order": 1,
}
ORDERS = {"event_type": "order.*", "channels": ["websocket"], "order": 2}


def _error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, error
    assert error["docs"] == f"docs/api.md#{code}"
    return error


async def test_a_rule_is_created_replaced_read_listed_and_deleted(tenant: Tenant) -> None:
    http = tenant.http
    created = await http.put("/v1/rules/orders", json=ORDERS)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["key"] == "orders"
    assert body["channels"] == ["websocket"]
    assert body["priority"] == "normal"
    assert body["condition"] is None

    replaced = await http.put("/v1/rules/orders", json={**ORDERS, "key": "orders", "ttl": 60})
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["ttl"] == 60
    assert replaced.json()["created_at"] == body["created_at"]
    assert (await http.get("/v1/rules/orders")).json() == replaced.json()

    assert (await http.put("/v1/rules/gold", json=GOLD)).status_code == 201
    listed = (await http.get("/v1/rules")).json()["rules"]
    assert [r["key"] for r in listed] == ["gold", "orders"]  # by order, then key
    assert listed[0]["channels"] == ["push", "email"]

    assert (await http.delete("/v1/rules/orders")).status_code == 204
    _error(await http.get("/v1/rules/orders"), 404, "not_found")
    _error(await http.delete("/v1/rules/orders"), 404, "not_found")
    assert [r["key"] for r in (await http.get("/v1/rules")).json()["rules"]] == ["gold"]


async def test_an_invalid_rule_is_refused_naming_the_field(tenant: Tenant) -> None:
    http = tenant.http
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"event_type": "a", "channels": ["sms"]}, "channels[0]", "unknown channel"),
        ({"event_type": "order.*", "chanels": ["email"]}, "chanels", "unknown field"),
        ({"event_type": "order.*", "condition": "event.data.x >"}, "condition", "column"),
        ({"event_type": "order.*", "condition": "evnt.type == 'a'"}, "condition", "unknown name"),
        ({"event_type": "order.*", "priority": "urgent"}, "priority", "must be one of"),
        ({"event_type": "order.*", "ttl": -1}, "ttl", "between"),
        ({"event_type": "order.*", "key": "other"}, "key", "differs"),
        ({"event_type": "a", "digest": {"window": 5}}, "digest.window", "between"),
    ]
    for body, field, words in cases:
        error = _error(await http.put("/v1/rules/r", json=body), 422, "invalid_rule")
        assert error["details"]["field"] == field, error
        assert error["message"].startswith(f"{field}: "), error
        assert words in error["message"], error
    condition = _error(
        await http.put("/v1/rules/r", json={"event_type": "a", "condition": "event.x ==="}),
        422,
        "invalid_rule",
    )
    assert isinstance(condition["details"]["column"], int)
    # Not a JSON object at all: the schema refuses it before the rule is read.
    _error(await http.put("/v1/rules/r", json=["a"]), 422, "invalid_request")
    assert (await http.get("/v1/rules")).json()["rules"] == []


async def test_the_test_route_shows_the_matched_rule_its_trace_and_what_would_be_sent(
    tenant: Tenant,
) -> None:
    http = tenant.http
    await http.put("/v1/rules/gold", json=GOLD)
    await http.put("/v1/rules/orders", json=ORDERS)
    await http.put(f"/v1/users/{'ann'}", json={"attributes": {"tier": "gold"}})
    event = {"type": "order.created", "data": {"total": 5}}

    stored = await http.post("/v1/rules/test", json={"event": event, "user": {"id": "ann"}})
    assert stored.status_code == 200, stored.text
    explained = stored.json()
    assert explained["matched"] == "gold"
    assert explained["trace"] == [
        {
            "rule": "gold",
            "verdict": "matched",
            "reason": "event type 'order.created' matches 'order.*' and "
            'user.attributes.tier == "gold"',
        }
    ]
    # No push or email transport on this server: the rule's push and email are dropped.
    assert explained["channels"] == ["websocket"]
    assert explained["channels_from"] == "rule"
    assert (explained["template"], explained["priority"], explained["ttl"]) == (
        "order-gold",
        "critical",
        600,
    )
    assert explained["user"] == {"id": "ann", "stored": True, "attributes": {"tier": "gold"}}

    given = await http.post(
        "/v1/rules/test",
        json={"event": event, "user": {"id": "ann", "attributes": {"tier": "silver"}}},
    )
    explained = given.json()
    assert explained["matched"] == "orders"
    assert [(a["rule"], a["verdict"]) for a in explained["trace"]] == [
        ("gold", "condition_false"),
        ("orders", "matched"),
    ]
    assert explained["template"] == "order.created"

    nobody = (await http.post("/v1/rules/test", json={"event": {"type": "comment.created"}})).json()
    assert nobody["matched"] is None
    assert nobody["channels"] == ["websocket"]
    assert nobody["channels_from"] == "default"
    assert [a["verdict"] for a in nobody["trace"]] == ["type_mismatch", "type_mismatch"]
    assert nobody["user"] == {"id": None, "stored": False, "attributes": {}}

    named = await http.post(
        "/v1/rules/test", json={"event": {**event, "channels": ["websocket"]}, "user": {"id": "x"}}
    )
    assert named.json()["channels_from"] == "event"
    assert named.json()["user"]["stored"] is False
    _error(
        await http.post("/v1/rules/test", json={"event": {"type": "a", "channels": ["push"]}}),
        422,
        "unknown_channel",
    )
    _error(await http.post("/v1/rules/test", json={"user": {}}), 422, "invalid_request")


async def test_each_tenant_sees_and_tests_only_its_own_rules(server: Running) -> None:
    async with tenant_client(server) as mine, tenant_client(server) as theirs:
        assert (await mine.http.put("/v1/rules/orders", json=ORDERS)).status_code == 201
        _error(await theirs.http.get("/v1/rules/orders"), 404, "not_found")
        _error(await theirs.http.delete("/v1/rules/orders"), 404, "not_found")
        assert (await theirs.http.get("/v1/rules")).json()["rules"] == []
        tested = await theirs.http.post("/v1/rules/test", json={"event": {"type": "order.created"}})
        assert tested.json()["matched"] is None
        assert (await theirs.http.put("/v1/rules/orders", json=GOLD)).status_code == 201
        assert (await mine.http.get("/v1/rules/orders")).json()["channels"] == ["websocket"]
