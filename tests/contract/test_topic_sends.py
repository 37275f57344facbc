"""The topic-send contract on every backend (SQLite, PostgreSQL): routing to groups mapped to
FCM topics, and the leases, fences and outcomes of `claim_topic_sends` /
`complete_topic_sends`."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from clarion import bootstrap
from clarion.adapters.storage import tables
from clarion.adapters.storage.topics import SqlTopicSends
from clarion.domain import outcomes
from clarion.domain.channels import Channel
from clarion.domain.notifications import EventSpec, Recipients
from clarion.domain.records import Routed, TopicCompletion
from clarion.services.accepting import Accepting

pytestmark = pytest.mark.usefixtures("clarion")


async def _tenant(app: bootstrap.Clarion) -> str:
    return (await app.tenancy.create_tenant("t")).tenant_id


async def _group(
    app: bootstrap.Clarion,
    tenant: str,
    key: str,
    members: list[str],
    *,
    topic: str | None = None,
    kind: str = "group",
    community: str | None = None,
) -> None:
    await app.directory.put_group(
        tenant,
        key,
        kind=kind,
        name=None,
        community=community,
        attributes={},
        fcm_topic=topic,
    )
    for m in members:
        await app.directory.put_member(tenant, key, m)


async def _android(app: bootstrap.Clarion, tenant: str, *users: str) -> None:
    for user in users:
        await app.devices.register(
            tenant, user, provider="fcm", token=f"token-{tenant}-{user}", app_id=None, keys={}
        )


async def _route(
    app: bootstrap.Clarion,
    tenant: str,
    *,
    channels: tuple[Channel, ...] = (Channel.FCM,),
    **recipients: tuple[str, ...],
) -> tuple[str, Routed]:
    accepting = Accepting(app.store, app.clock, max_recipients=10_000, channels=frozenset(Channel))
    spec = EventSpec(
        type="news",
        recipients=Recipients(**recipients),
        title="hi",
        body="b",
        data={"k": "v"},
        channels=channels,
    )
    accepted = await accepting.accept(tenant, spec)
    routed = await app.routing.route(accepted.id)
    assert routed is not None
    return accepted.id, routed


async def _deliveries(app: bootstrap.Clarion, notification_id: str) -> dict[str, set[str]]:
    async with app.store.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(tables.users.c.external_id, tables.deliveries.c.channel)
            .join(tables.users, tables.users.c.id == tables.deliveries.c.user_id)
            .where(tables.deliveries.c.notification_id == notification_id)
        )
        found: dict[str, set[str]] = {}
        for r in rows:
            found.setdefault(r.channel, set()).add(r.external_id)
        return found


async def _sends(app: bootstrap.Clarion, notification_id: str) -> list[Any]:
    async with app.store.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(tables.topic_sends)
            .where(tables.topic_sends.c.notification_id == notification_id)
            .order_by(tables.topic_sends.c.topic)
        )
        return list(rows)


def _topics(app: bootstrap.Clarion) -> SqlTopicSends:
    return SqlTopicSends(app.store.engine)


async def test_a_group_keeps_shows_and_drops_its_fcm_topic(clarion: bootstrap.Clarion) -> None:
    tenant = await _tenant(clarion)
    await _group(clarion, tenant, "fans", [], topic="fans-news")
    record = await clarion.directory.get_group(tenant, "fans")
    assert record.fcm_topic == "fans-news"
    await _group(clarion, tenant, "fans", [], topic=None)
    assert (await clarion.directory.get_group(tenant, "fans")).fcm_topic is None


async def test_routing_sends_once_per_topic_and_not_per_device_to_mapped_members(
    clarion: bootstrap.Clarion,
) -> None:
    tenant = await _tenant(clarion)
    await _android(clarion, tenant, "ann", "bob", "cid", "dan", "eve")
    await _group(clarion, tenant, "red", ["ann", "bob"], topic="colours")
    await _group(clarion, tenant, "blue", ["bob", "cid"], topic="colours")
    await _group(clarion, tenant, "green", ["dan"], topic="green")
    await _group(clarion, tenant, "plain", ["eve", "ann"])
    _, routed = await _route(
        clarion, tenant, groups=("red", "blue", "green", "plain"), users=("cid", "zed")
    )
    assert routed.topic_sends == 2
    assert routed.recipients == 6  # ann bob cid dan eve zed: the inbox is unchanged
    sends = await _sends(clarion, routed.notification_id)
    assert [(s.topic, s.group_key, s.status, s.channel) for s in sends] == [
        ("colours", "blue", "pending", "fcm"),
        ("green", "green", "pending", "fcm"),
    ]
    by_channel = await _deliveries(clarion, routed.notification_id)
    assert by_channel["websocket"] == {"ann", "bob", "cid", "dan", "eve", "zed"}
    # Members of a mapped group hear through the topic, even when also named or in a plain
    # group; only eve (through "plain" alone) gets a per-device FCM send.
    assert by_channel["fcm"] == {"eve"}
    assert routed.deliveries == 7


async def test_a_mapped_community_covers_its_groups_and_an_event_off_fcm_writes_none(
    clarion: bootstrap.Clarion,
) -> None:
    tenant = await _tenant(clarion)
    await _android(clarion, tenant, "mayor", "ann", "out")
    await _group(clarion, tenant, "town", ["mayor"], kind="community", topic="town")
    await _group(clarion, tenant, "red", ["ann"], community="town", topic="red")
    await _group(clarion, tenant, "other", ["out"])
    _, routed = await _route(clarion, tenant, communities=("town",), groups=("other",))
    assert [s.topic for s in await _sends(clarion, routed.notification_id)] == ["town"]
    assert (await _deliveries(clarion, routed.notification_id))["fcm"] == {"out"}

    _, inbox_only = await _route(
        clarion, tenant, channels=(Channel.WEBSOCKET,), communities=("town",)
    )
    assert inbox_only.topic_sends == 0
    assert await _sends(clarion, inbox_only.notification_id) == []


async def test_claims_lease_fence_and_complete_topic_sends(clarion: bootstrap.Clarion) -> None:
    tenant = await _tenant(clarion)
    await _group(clarion, tenant, "fans", ["ann"], topic="fans")
    event_id, routed = await _route(clarion, tenant, groups=("fans",))
    store, now = _topics(clarion), clarion.clock.now()

    [claim] = await store.claim_topic_sends(Channel.FCM, limit=10, lease_seconds=60, now=now)
    assert (claim.tenant_id, claim.topic, claim.channel) == (tenant, "fans", "fcm")
    assert (claim.fence, claim.attempts) == (1, 1)
    assert (claim.notification_id, claim.event_id) == (routed.notification_id, event_id)
    assert (claim.title, claim.body, claim.data, claim.group) == ("hi", "b", {"k": "v"}, "fans")
    assert await store.claim_topic_sends(Channel.FCM, limit=10, lease_seconds=60, now=now) == []
    assert await store.claim_topic_sends(Channel.APNS, limit=10, lease_seconds=60, now=now) == []

    # The lease runs out; the next holder's fence makes the first one's completion stale.
    later = now + timedelta(seconds=61)
    [again] = await store.claim_topic_sends(Channel.FCM, limit=10, lease_seconds=60, now=later)
    assert (again.id, again.fence, again.attempts) == (claim.id, 2, 2)
    stale = TopicCompletion(claim.id, claim.fence, outcomes.Delivered("projects/p/messages/1"))
    assert await store.complete_topic_sends([stale], later) == []

    name = "projects/p/messages/2"
    done = TopicCompletion(again.id, again.fence, outcomes.Delivered(name))
    assert await store.complete_topic_sends([done], later) == [again.id]
    assert await store.complete_topic_sends([done], later) == []  # no longer pending
    report = await clarion.reporting.event(tenant, event_id)
    [shown] = report.topics
    assert (shown.topic, shown.group, shown.status, shown.reference) == (
        "fans",
        "fans",
        "sent",
        name,
    )
    assert (shown.attempts, shown.error, shown.sent_at) == (2, None, later)


async def test_a_retried_send_waits_until_due_and_a_refused_one_fails(
    clarion: bootstrap.Clarion,
) -> None:
    tenant = await _tenant(clarion)
    await _group(clarion, tenant, "a", [], topic="topic-a")
    await _group(clarion, tenant, "b", [], topic="topic-b")
    event_id, _ = await _route(clarion, tenant, groups=("a", "b"))
    store, now = _topics(clarion), clarion.clock.now()
    claims = await store.claim_topic_sends(Channel.FCM, limit=10, lease_seconds=60, now=now)
    first, second = sorted(claims, key=lambda c: c.topic)
    due = now + timedelta(seconds=30)
    applied = await store.complete_topic_sends(
        [
            TopicCompletion(first.id, first.fence, outcomes.RetryLater("UNAVAILABLE", 30), due),
            TopicCompletion(second.id, second.fence, outcomes.Rejected("INVALID_ARGUMENT: no")),
        ],
        now,
    )
    assert sorted(applied) == sorted([first.id, second.id])
    assert await store.claim_topic_sends(Channel.FCM, limit=10, lease_seconds=60, now=now) == []
    [retried] = await store.claim_topic_sends(Channel.FCM, limit=10, lease_seconds=60, now=due)
    assert (retried.id, retried.attempts) == (first.id, 2)

    report = await clarion.reporting.event(tenant, event_id)
    shown = {t.topic: t for t in report.topics}
    assert (shown["topic-a"].status, shown["topic-a"].error) == ("pending", "UNAVAILABLE")
    assert (shown["topic-b"].status, shown["topic-b"].error) == ("failed", "INVALID_ARGUMENT: no")
    assert shown["topic-b"].failed_at == now
