"""GET /v1/stats over real HTTP: the answer's shape, its filters, and what it refuses."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.support import Running, Tenant, tenant_client

STATUSES = ["pending", "sent", "received", "read", "failed", "expired", "suppressed"]
ZERO = dict.fromkeys(STATUSES, 0)


async def _error(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code
    assert body["error"]["docs"] == f"docs/api.md#{code}"
    return body["error"]


async def _routed(http: httpx.AsyncClient, body: dict[str, object]) -> None:
    accepted = await http.post("/v1/events", json=body)
    assert accepted.status_code == 202, accepted.text
    for _ in range(200):
        report = (await http.get(f"/v1/events/{accepted.json()['id']}")).json()
        if report["state"] == "routed":
            return
        await asyncio.sleep(0.02)
    raise AssertionError("event was not routed")


async def _community(http: httpx.AsyncClient) -> None:
    assert (await http.put("/v1/groups/town", json={"kind": "community"})).status_code == 201
    for group, members in (("red", ["ann", "bob"]), ("blue", ["cid"])):
        put = await http.put(f"/v1/groups/{group}", json={"community": "town"})
        assert put.status_code == 201
        for user in members:
            assert (await http.put(f"/v1/groups/{group}/members/{user}")).status_code == 201
    await _routed(http, {"type": "t", "recipients": {"groups": ["red"]}, "category": "billing"})
    await _routed(http, {"type": "t", "recipients": {"groups": ["blue"]}})
    await _routed(http, {"type": "t", "recipients": {"users": ["dan"]}})


async def test_stats_answer_counts_rates_median_and_series(tenant: Tenant) -> None:
    await _community(tenant.http)
    response = await tenant.http.get("/v1/stats", params={"community": "town", "bucket": "day"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {
        "since",
        "until",
        "bucket",
        "filters",
        "recipients",
        "channels",
        "receive_rate",
        "read_rate",
        "median_seconds_to_read",
        "series",
    }
    until = datetime.fromisoformat(body["until"])
    assert datetime.fromisoformat(body["since"]) == until - timedelta(days=30)
    assert abs(until - datetime.now(UTC)) < timedelta(minutes=1)
    assert body["bucket"] == "day"
    assert body["filters"] == {"user": None, "group": None, "community": "town", "category": None}
    assert body["recipients"] == {"total": 3, "by_status": {**ZERO, "pending": 3}}
    assert body["channels"] == {"websocket": {"total": 3, "by_status": {**ZERO, "pending": 3}}}
    assert (body["receive_rate"], body["read_rate"], body["median_seconds_to_read"]) == (
        None,
        None,
        None,
    )
    series = body["series"]
    assert len(series) == 31  # the range starts inside a day and ends 30 days later
    assert set(series[-1]) == {"start", "total", "by_status"}
    assert series[-1]["start"].endswith("T00:00:00Z")
    assert series[-1]["total"] == 3
    assert sum(b["total"] for b in series) == 3


async def test_stats_filters_are_query_parameters(tenant: Tenant) -> None:
    await _community(tenant.http)

    async def total(**params: str) -> int:
        response = await tenant.http.get("/v1/stats", params=params)
        assert response.status_code == 200, response.text
        assert response.json()["series"] is None
        return int(response.json()["recipients"]["total"])

    assert await total() == 4
    assert await total(group="red") == 2
    assert await total(community="town", category="billing") == 2
    assert await total(user="dan") == 1
    assert await total(user="dan", community="town") == 0
    assert await total(since="2020-01-01T00:00:00Z", until="2020-01-02T00:00:00Z") == 0
    now = datetime.now(UTC)
    assert await total(since=(now - timedelta(hours=1)).isoformat()) == 4
    assert await total(until=(now - timedelta(hours=1)).isoformat()) == 0


async def test_an_unknown_user_is_not_found(tenant: Tenant) -> None:
    await _error(await tenant.http.get("/v1/stats", params={"user": "nobody"}), 404, "not_found")


@pytest.mark.parametrize(
    "params",
    [
        {"bucket": "week"},
        {"since": "yesterday"},
        {"since": "2026-11-01T00:00:00"},  # no time zone
        {"since": "2026-11-01T00:00:00 01:00"},  # an unencoded '+' became a space
        {"since": "2026-11-02T00:00:00Z", "until": "2026-11-01T00:00:00Z"},
        {"since": "2026-11-01T00:00:00Z", "until": "2026-11-01T00:00:00Z"},
        {"since": "2025-01-01T00:00:00Z", "until": "2026-11-01T00:00:00Z"},
        {"since": "2026-09-01T00:00:00Z", "until": "2026-11-01T00:00:00Z", "bucket": "hour"},
        {"since": "0001-01-01T00:00:00+14:00"},  # would overflow once in UTC
        {"until": "9999-12-31T23:59:59-14:00"},
        {"user": "x" * 256},
        {"group": "x" * 1001},
        {"category": " padded "},
    ],
)
async def test_invalid_parameters_are_422_invalid_request(
    sqlite_server: Running, params: dict[str, str]
) -> None:
    async with tenant_client(sqlite_server) as tenant:
        await _error(await tenant.http.get("/v1/stats", params=params), 422, "invalid_request")


async def test_stats_need_an_api_key_and_see_only_their_tenant(sqlite_server: Running) -> None:
    async with httpx.AsyncClient(base_url=sqlite_server.base_url) as anonymous:
        await _error(await anonymous.get("/v1/stats"), 401, "unauthorized")
    async with tenant_client(sqlite_server) as one, tenant_client(sqlite_server) as two:
        await _community(one.http)
        theirs = await two.http.get("/v1/stats", params={"community": "town"})
        assert theirs.status_code == 200
        assert theirs.json()["recipients"]["total"] == 0
        await _error(await two.http.get("/v1/stats", params={"user": "ann"}), 404, "not_found")
