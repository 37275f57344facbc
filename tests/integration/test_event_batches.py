"""POST /v1/events/batch: many events in one request and one transaction, all or none."""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa

from clarion.adapters.storage import tables
from tests.support import Running, Tenant, tenant_client


def _event(n: int, **changes: Any) -> dict[str, Any]:
    body = {"type": "order.shipped", "recipients": {"users": [f"u{n}"]}, "title": f"#{n}"}
    return {**body, **changes}


async def _routed(tenant: Tenant, event_id: str) -> dict[str, Any]:
    for _ in range(200):
        report = (await tenant.http.get(f"/v1/events/{event_id}")).json()
        if report["routed_at"]:
            return dict(report)
        await asyncio.sleep(0.05)
    raise AssertionError(f"event {event_id} was not routed")


async def test_a_batch_is_accepted_in_order_and_every_event_is_routed(tenant: Tenant) -> None:
    answer = await tenant.http.post(
        "/v1/events/batch", json={"events": [_event(n) for n in range(50)]}
    )
    assert answer.status_code == 202, answer.text
    accepted = answer.json()["events"]
    assert len(accepted) == 50
    assert len({a["id"] for a in accepted}) == 50
    assert all(a["status"] == "accepted" and not a["replayed"] for a in accepted)
    for n in (0, 49):
        report = await _routed(tenant, accepted[n]["id"])
        assert report["notification"]["title"] == f"#{n}"
        assert report["recipients_named"]["users"] == [f"u{n}"]


async def test_idempotency_keys_replay_per_event_within_and_across_batches(
    tenant: Tenant,
) -> None:
    first = await tenant.http.post(
        "/v1/events/batch",
        json={
            "events": [
                _event(1, idempotency_key="k1"),
                _event(2),
                _event(1, idempotency_key="k1"),
            ]
        },
    )
    assert first.status_code == 202, first.text
    one, two, again = first.json()["events"]
    assert one["id"] == again["id"] != two["id"]
    second = await tenant.http.post(
        "/v1/events/batch", json={"events": [_event(1, idempotency_key="k1"), _event(3)]}
    )
    replayed, fresh = second.json()["events"]
    assert replayed == {"id": one["id"], "status": "accepted", "replayed": True}
    assert not fresh["replayed"]
    # The single-event route sees the same keys.
    single = await tenant.http.post("/v1/events", json=_event(1), headers={"Idempotency-Key": "k1"})
    assert single.json()["id"] == one["id"]


async def test_one_bad_event_refuses_the_whole_batch_and_stores_nothing(
    server: Running, tenant: Tenant
) -> None:
    cases: list[tuple[list[dict[str, Any]], int, str]] = [
        ([_event(1), _event(2, recipients={"users": []})], 422, "no_recipients"),
        ([_event(1), _event(2, recipients={"groups": ["nope"]})], 422, "unknown_group"),
        ([_event(1), _event(2, channels=["carrier-pigeon"])], 422, "invalid_request"),
        (
            [_event(1, idempotency_key="k"), _event(2, idempotency_key="k")],
            422,
            "idempotency_key_reused",
        ),
        ([], 422, "invalid_request"),
        ([_event(n) for n in range(101)], 422, "invalid_request"),
    ]
    for events, status, code in cases:
        answer = await tenant.http.post("/v1/events/batch", json={"events": events})
        assert answer.status_code == status, answer.text
        assert answer.json()["error"]["code"] == code, answer.text
    stored = await tenant.http.post(
        "/v1/events/batch", json={"events": [_event(9, idempotency_key="taken")]}
    )
    assert stored.status_code == 202
    clash = await tenant.http.post(
        "/v1/events/batch",
        json={"events": [_event(10), _event(11, idempotency_key="taken")]},
    )
    assert clash.status_code == 422
    assert clash.json()["error"]["code"] == "idempotency_key_reused"
    assert "events[1]" in clash.json()["error"]["message"]
    # Only the one good batch is on disk: one event.
    async with server.clarion.store.engine.connect() as conn:
        count = await conn.scalar(
            sa.select(sa.func.count()).where(tables.events.c.tenant_id == tenant.id)
        )
    assert count == 1


async def test_another_tenant_s_keys_are_its_own(server: Running, tenant: Tenant) -> None:
    mine = await tenant.http.post(
        "/v1/events/batch", json={"events": [_event(1, idempotency_key="shared")]}
    )
    async with tenant_client(server) as other:
        theirs = await other.http.post(
            "/v1/events/batch", json={"events": [_event(2, idempotency_key="shared")]}
        )
    assert theirs.status_code == 202, theirs.text
    assert theirs.json()["events"][0]["id"] != mine.json()["events"][0]["id"]
    assert not theirs.json()["events"][0]["replayed"]
