"""The storage contract: every backend (SQLite, PostgreSQL) passes the same tests."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from clarion import bootstrap
from clarion.adapters.storage import tables
from clarion.domain import errors, outcomes
from clarion.domain.channels import Channel
from clarion.domain.notifications import EventSpec, Recipients
from clarion.domain.records import Completion, UserFields
from clarion.domain.statuses import Status, Subject
from clarion.services.accepting import Accepting

pytestmark = pytest.mark.usefixtures("clarion")


async def _tenant(app: bootstrap.Clarion) -> str:
    return (await app.tenancy.create_tenant("t")).tenant_id


async def _group(app: bootstrap.Clarion, tenant: str, key: str, members: list[str], **kw: str):
    await app.directory.put_group(
        tenant,
        key,
        kind=kw.get("kind", "group"),
        name=None,
        community=kw.get("community"),
        attributes={},
    )
    for m in members:
        await app.directory.put_member(tenant, key, m)


async def _route(app: bootstrap.Clarion, tenant: str, spec: EventSpec):
    # Accept on every channel, as a server with every transport configured would.
    accepting = Accepting(app.store, app.clock, max_recipients=10_000, channels=frozenset(Channel))
    accepted = await accepting.accept(tenant, spec)
    routed = await app.routing.route(accepted.id)
    assert routed is not None
    return accepted.id, routed


async def _items(app: bootstrap.Clarion, notification_id: str) -> dict[str, tuple[int, str]]:
    async with app.store.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(
                tables.users.c.external_id, tables.inbox_items.c.id, tables.inbox_items.c.status
            )
            .join(tables.users, tables.users.c.id == tables.inbox_items.c.user_id)
            .where(tables.inbox_items.c.notification_id == notification_id)
        )
        return {r.external_id: (r.id, r.status) for r in rows}


async def test_migrations_build_exactly_the_declared_schema(clarion: bootstrap.Clarion) -> None:
    def diff(conn: sa.Connection) -> list[object]:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, tables.metadata))

    async with clarion.store.engine.connect() as conn:
        assert await conn.run_sync(diff) == []


async def test_routing_expands_groups_and_communities_without_duplicates(
    clarion: bootstrap.Clarion,
) -> None:
    tenant = await _tenant(clarion)
    await _group(clarion, tenant, "town", ["mayor"], kind="community")
    await _group(clarion, tenant, "red", ["ann", "bob"], community="town")
    await _group(clarion, tenant, "blue", ["bob", "cid"], community="town")
    await _group(clarion, tenant, "other", ["dan"])
    spec = EventSpec(
        type="t",
        recipients=Recipients(users=("ann", "eve"), groups=("red",), communities=("town",)),
    )
    _, routed = await _route(clarion, tenant, spec)
    items = await _items(clarion, routed.notification_id)
    assert sorted(items) == ["ann", "bob", "cid", "eve", "mayor"]
    assert routed.recipients == 5
    assert routed.deliveries == 5
    assert {status for _, status in items.values()} == {"pending"}


async def test_routing_creates_users_named_for_the_first_time(clarion: bootstrap.Clarion) -> None:
    tenant = await _tenant(clarion)
    assert await clarion.store.get_user(tenant, "newcomer") is None
    await _route(clarion, tenant, EventSpec(type="t", recipients=Recipients(users=("newcomer",))))
    user = await clarion.store.get_user(tenant, "newcomer")
    assert user is not None
    assert user.attributes == {}


async def test_routing_twice_writes_nothing_more(clarion: bootstrap.Clarion) -> None:
    tenant = await _tenant(clarion)
    event_id, routed = await _route(
        clarion, tenant, EventSpec(type="t", recipients=Recipients(users=("a", "b")))
    )
    again = await clarion.routing.route(event_id)
    assert again is None
    assert len(await _items(clarion, routed.notification_id)) == 2


async def test_concurrent_routing_of_one_event_routes_it_once(clarion: bootstrap.Clarion) -> None:
    tenant = await _tenant(clarion)
    accepted = await clarion.accepting.accept(
        tenant, EventSpec(type="t", recipients=Recipients(users=("a", "b", "c")))
    )
    results = await asyncio.gather(*(clarion.routing.route(accepted.id) for _ in range(4)))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    report = await clarion.reporting.event(tenant, accepted.id)
    assert report.recipients.total == 3


async def test_routing_is_isolated_between_tenants(clarion: bootstrap.Clarion) -> None:
    one, two = await _tenant(clarion), await _tenant(clarion)
    await _group(clarion, one, "team", ["ann"])
    await _group(clarion, two, "team", ["zed"])
    _, routed = await _route(
        clarion, one, EventSpec(type="t", recipients=Recipients(groups=("team",)))
    )
    assert list(await _items(clarion, routed.notification_id)) == ["ann"]
    with pytest.raises(errors.NotFound):
        await clarion.reporting.event(two, routed.notification_id)


async def test_every_created_item_and_delivery_starts_its_audit_trail(
    clarion: bootstrap.Clarion,
) -> None:
    tenant = await _tenant(clarion)
    event_id, _ = await _route(
        clarion, tenant, EventSpec(type="t", recipients=Recipients(users=("a",)))
    )
    report = await clarion.reporting.recipient(tenant, event_id, "a")
    assert [(t.source, t.target, t.cause) for t in report.trail] == [
        (None, Status.PENDING, "routed")
    ]
    assert [d.channel for d in report.deliveries] == ["websocket"]
    assert [(t.source, t.target) for t in report.deliveries[0].trail] == [(None, Status.PENDING)]


async def test_receipts_move_forward_only_and_record_each_move(clarion: bootstrap.Clarion) -> None:
    tenant = await _tenant(clarion)
    event_id, routed = await _route(
        clarion, tenant, EventSpec(type="t", recipients=Recipients(users=("a",)))
    )
    item_id, _ = (await _items(clarion, routed.notification_id))["a"]
    user_id = await clarion.directory.ensure_user(tenant, "a")
    assert await clarion.realtime.mark_sent(tenant, [item_id]) == [item_id]
    assert await clarion.realtime.mark_sent(tenant, [item_id]) == []
    read = await clarion.acknowledging.report(
        tenant, user_id, item_id, Status.READ, channel=Channel.WEBSOCKET
    )
    assert (read.status, read.changed) == (Status.READ, True)
    late = await clarion.acknowledging.report(
        tenant, user_id, item_id, Status.RECEIVED, channel=Channel.WEBSOCKET
    )
    assert (late.status, late.changed) == (Status.READ, False)
    report = await clarion.reporting.recipient(tenant, event_id, "a")
    assert [(t.source, t.target) for t in report.trail] == [
        (None, Status.PENDING),
        (Status.PENDING, Status.SENT),
        (Status.SENT, Status.READ),
    ]
    assert report.deliveries[0].status == Status.READ


async def test_a_receipt_for_someone_elses_item_is_not_found(clarion: bootstrap.Clarion) -> None:
    tenant = await _tenant(clarion)
    _, routed = await _route(
        clarion, tenant, EventSpec(type="t", recipients=Recipients(users=("a",)))
    )
    item_id, _ = (await _items(clarion, routed.notification_id))["a"]
    intruder = await clarion.directory.ensure_user(tenant, "mallory")
    with pytest.raises(errors.NotFound):
        await clarion.acknowledging.report(tenant, intruder, item_id, Status.READ, channel=None)
    other_tenant = await _tenant(clarion)
    with pytest.raises(errors.NotFound):
        await clarion.acknowledging.report(
            other_tenant, intruder, item_id, Status.READ, channel=None
        )


async def test_idempotency_key_returns_the_first_event_and_refuses_another_body(
    clarion: bootstrap.Clarion,
) -> None:
    tenant = await _tenant(clarion)
    spec = EventSpec(type="t", recipients=Recipients(users=("a",)))
    first = await clarion.accepting.accept(tenant, spec, idempotency_key="k1")
    again = await clarion.accepting.accept(tenant, spec, idempotency_key="k1")
    assert (again.id, again.created) == (first.id, False)
    with pytest.raises(errors.IdempotencyKeyReused):
        await clarion.accepting.accept(
            tenant, EventSpec(type="u", recipients=Recipients(users=("a",))), idempotency_key="k1"
        )
    other = await _tenant(clarion)
    elsewhere = await clarion.accepting.accept(other, spec, idempotency_key="k1")
    assert elsewhere.id != first.id


async def test_concurrent_requests_with_one_idempotency_key_store_one_event(
    clarion: bootstrap.Clarion,
) -> None:
    tenant = await _tenant(clarion)
    spec = EventSpec(type="t", recipients=Recipients(users=("a",)))
    answers = await asyncio.gather(
        *(clarion.accepting.accept(tenant, spec, idempotency_key="same") for _ in range(5))
    )
    assert len({a.id for a in answers}) == 1
    assert sum(a.created for a in answers) == 1


async def test_accepting_refuses_unknown_groups_and_writes_nothing(
    clarion: bootstrap.Clarion,
) -> None:
    tenant = await _tenant(clarion)
    await _group(clarion, tenant, "known", [])
    with pytest.raises(errors.UnknownGroup):
        await clarion.accepting.accept(
            tenant, EventSpec(type="t", recipients=Recipients(groups=("known", "ghost")))
        )
    with pytest.raises(errors.UnknownCommunity):
        await clarion.accepting.accept(
            tenant, EventSpec(type="t", recipients=Recipients(communities=("known",)))
        )
    async with clarion.store.engine.connect() as conn:
        stored = await conn.scalar(
            sa.select(sa.func.count()).where(tables.events.c.tenant_id == tenant)
        )
    assert stored == 0


async def test_accepted_events_wait_in_the_outbox_until_published(
    clarion: bootstrap.Clarion,
) -> None:
    tenant = await _tenant(clarion)
    accepted = await clarion.accepting.accept(
        tenant, EventSpec(type="t", recipients=Recipients(users=("a",)))
    )
    pending = [
        e
        for e in await clarion.store.pending_outbox(10_000)
        if e.payload.get("event_id") == accepted.id
    ]
    assert len(pending) == 1
    await clarion.relay.relay_once()
    left = [
        e
        for e in await clarion.store.pending_outbox(10_000)
        if e.payload.get("event_id") == accepted.id
    ]
    assert left == []


async def test_unrouted_events_are_found_again_for_redelivery(clarion: bootstrap.Clarion) -> None:
    tenant = await _tenant(clarion)
    accepted = await clarion.accepting.accept(
        tenant, EventSpec(type="t", recipients=Recipients(users=("a",)))
    )
    later = clarion.clock.now() + timedelta(seconds=1)
    assert accepted.id in await clarion.store.unrouted_events(accepted_before=later, limit=10_000)
    await clarion.routing.route(accepted.id)
    assert accepted.id not in await clarion.store.unrouted_events(
        accepted_before=later, limit=10_000
    )


async def test_backlog_gives_everything_after_the_cursor_and_anything_pending(
    clarion: bootstrap.Clarion,
) -> None:
    tenant = await _tenant(clarion)
    ids = []
    for n in range(4):
        _, routed = await _route(
            clarion, tenant, EventSpec(type=f"t{n}", recipients=Recipients(users=("a",)))
        )
        ids.append((await _items(clarion, routed.notification_id))["a"][0])
    user_id = await clarion.directory.ensure_user(tenant, "a")
    await clarion.realtime.mark_sent(tenant, ids[:3])
    no_cursor = await clarion.store.backlog(tenant, user_id, after=None, start=0, limit=100)
    assert [a.item.id for a in no_cursor] == [ids[3]]
    after_first = await clarion.store.backlog(tenant, user_id, after=ids[0], start=0, limit=100)
    assert [a.item.id for a in after_first] == ids[1:]
    pages = [
        [a.item.id for a in page]
        for page in [p async for p in _pages(clarion, tenant, user_id, "0", 3)]
    ]
    assert pages == [ids[:3], ids[3:]]


async def _pages(app: bootstrap.Clarion, tenant: str, user_id: int, since: str, size: int):
    realtime = type(app.realtime)(app.store, app.tokens, app.clock, page=size)
    async for page in realtime.missed(tenant, user_id, since):
        yield page


async def test_deleting_a_user_erases_their_items_deliveries_and_trail(
    clarion: bootstrap.Clarion,
) -> None:
    tenant = await _tenant(clarion)
    _, routed = await _route(
        clarion, tenant, EventSpec(type="t", recipients=Recipients(users=("a", "b")))
    )
    a_item = (await _items(clarion, routed.notification_id))["a"][0]
    await clarion.directory.delete_user(tenant, "a")
    assert list(await _items(clarion, routed.notification_id)) == ["b"]
    async with clarion.store.engine.connect() as conn:
        left = await conn.scalar(
            sa.select(sa.func.count()).where(
                tables.transitions.c.subject == Subject.ITEM,
                tables.transitions.c.subject_id == a_item,
            )
        )
    assert left == 0
    with pytest.raises(errors.NotFound):
        await clarion.directory.delete_user(tenant, "a")


async def test_users_are_created_then_replaced(clarion: bootstrap.Clarion) -> None:
    tenant = await _tenant(clarion)
    user, created = await clarion.directory.put_user(
        tenant, "u", UserFields(email="u@example.org", locale="fr-FR", attributes={"plan": "pro"})
    )
    assert created
    assert (user.email, user.locale, user.attributes) == ("u@example.org", "fr-FR", {"plan": "pro"})
    user, created = await clarion.directory.put_user(
        tenant, "u", UserFields(timezone="Europe/Paris")
    )
    assert not created
    assert (user.email, user.timezone, user.attributes) == (None, "Europe/Paris", {})


async def test_a_group_cannot_change_kind_or_join_a_plain_group(clarion: bootstrap.Clarion) -> None:
    tenant = await _tenant(clarion)
    await _group(clarion, tenant, "g", [])
    with pytest.raises(errors.GroupKindMismatch):
        await _group(clarion, tenant, "g", [], kind="community")
    with pytest.raises(errors.GroupKindMismatch):
        await _group(clarion, tenant, "h", [], community="g")
    with pytest.raises(errors.UnknownCommunity):
        await _group(clarion, tenant, "h", [], community="nowhere")
    assert await clarion.store.get_group(tenant, "h") is None


async def test_memberships_are_added_once_and_removed(clarion: bootstrap.Clarion) -> None:
    tenant = await _tenant(clarion)
    await _group(clarion, tenant, "g", [])
    assert await clarion.directory.put_member(tenant, "g", "u") is True
    assert await clarion.directory.put_member(tenant, "g", "u") is False
    assert (await clarion.directory.get_group(tenant, "g")).member_count == 1
    await clarion.directory.delete_member(tenant, "g", "u")
    with pytest.raises(errors.NotFound):
        await clarion.directory.delete_member(tenant, "g", "u")
    with pytest.raises(errors.NotFound):
        await clarion.directory.put_member(tenant, "nope", "u")


async def test_revoked_keys_stop_authenticating_at_once(clarion: bootstrap.Clarion) -> None:
    tenant = await clarion.tenancy.create_tenant("t")
    assert await clarion.tenancy.authenticate(tenant.api_key) == tenant.tenant_id
    extra = await clarion.tenancy.create_key(tenant.tenant_id, "ci")
    assert await clarion.tenancy.authenticate(extra.api_key) == tenant.tenant_id
    await clarion.tenancy.revoke_key(extra.id)
    with pytest.raises(errors.InvalidApiKey):
        await clarion.tenancy.authenticate(extra.api_key)
    assert [
        k.revoked_at is not None for k in await clarion.tenancy.list_keys(tenant.tenant_id)
    ] == [
        False,
        True,
    ]
    with pytest.raises(errors.NotFound):
        await clarion.tenancy.revoke_key("0" * 16)


async def test_tenant_secrets_are_sealed_at_rest(clarion: bootstrap.Clarion) -> None:
    tenant = await clarion.tenancy.create_tenant("t")
    async with clarion.store.engine.connect() as conn:
        stored = await conn.scalar(
            sa.select(tables.tenants.c.token_secret).where(tables.tenants.c.id == tenant.tenant_id)
        )
    assert tenant.user_token_secret not in stored
    assert await clarion.store.tenant_secret(tenant.tenant_id) == tenant.user_token_secret


class _Recording:
    """A transport that answers from a script and remembers what it was given."""

    channel = Channel.APNS

    def __init__(self, script: list[outcomes.Outcome]) -> None:
        self.script = script
        self.seen: list[int] = []

    async def send(self, batch):  # type: ignore[no-untyped-def]
        self.seen += [c.id for c in batch]
        return [self.script.pop(0) for _ in batch]


async def _push_device(app: bootstrap.Clarion, tenant: str, user: str, token: str) -> int:
    user_id = await app.directory.ensure_user(tenant, user)
    now = app.clock.now()
    async with app.store.engine.begin() as conn:
        result = await conn.execute(
            tables.devices.insert()
            .values(
                tenant_id=tenant,
                user_id=user_id,
                provider="apns",
                token=token,
                keys={},
                status="active",
                created_at=now,
                updated_at=now,
            )
            .returning(tables.devices.c.id)
        )
        return int(result.scalar_one())


async def test_transports_get_one_delivery_per_active_device_and_outcomes_land(
    clarion: bootstrap.Clarion,
) -> None:
    tenant = await _tenant(clarion)
    d1 = await _push_device(clarion, tenant, "a", "tok-1")
    d2 = await _push_device(clarion, tenant, "a", "tok-2")
    await _push_device(clarion, tenant, "b", "tok-3")
    event_id, routed = await _route(
        clarion,
        tenant,
        EventSpec(type="t", recipients=Recipients(users=("a", "b")), channels=(Channel.APNS,)),
    )
    assert routed.deliveries == 2 + 3  # websocket for each user, plus one per device
    transport = _Recording(
        [
            outcomes.Delivered("apns-1"),
            outcomes.TokenInvalid("Unregistered"),
            outcomes.RetryLater("busy", 30),
        ]
    )
    delivering = type(clarion.delivering)(clarion.store, clarion.clock, {Channel.APNS: transport})
    assert await delivering.deliver_once(Channel.APNS) == 3
    assert await delivering.deliver_once(Channel.APNS) == 0  # the retry is not due for 30 s
    report = await clarion.reporting.recipient(tenant, event_id, "a")
    by_device = {d.id: d for d in report.deliveries if d.channel == "apns"}
    statuses = sorted(d.status for d in by_device.values())
    assert statuses == [Status.FAILED, Status.SENT]
    assert (
        report.status == Status.SENT
        if hasattr(report, "status")
        else report.item.status == Status.SENT
    )
    async with clarion.store.engine.connect() as conn:
        retired = await conn.execute(
            sa.select(tables.devices.c.id, tables.devices.c.status).where(
                tables.devices.c.id.in_([d1, d2])
            )
        )
        assert sorted(r.status for r in retired) == ["active", "retired"]
    b = await clarion.reporting.recipient(tenant, event_id, "b")
    b_push = next(d for d in b.deliveries if d.channel == "apns")
    assert (b_push.status, b_push.error) == (Status.PENDING, "busy")


async def test_a_completion_from_an_expired_lease_is_rejected(clarion: bootstrap.Clarion) -> None:
    tenant = await _tenant(clarion)
    await _push_device(clarion, tenant, "a", "tok")
    await _route(
        clarion,
        tenant,
        EventSpec(type="t", recipients=Recipients(users=("a",)), channels=(Channel.APNS,)),
    )
    now = clarion.clock.now()
    first = await clarion.store.claim_deliveries(Channel.APNS, limit=10, lease_seconds=1, now=now)
    mine = [c for c in first if c.tenant_id == tenant]
    assert len(mine) == 1
    later = now + timedelta(seconds=5)
    second = [
        c
        for c in await clarion.store.claim_deliveries(
            Channel.APNS, limit=10, lease_seconds=60, now=later
        )
        if c.tenant_id == tenant
    ]
    assert [c.id for c in second] == [mine[0].id]
    assert second[0].fence == mine[0].fence + 1
    stale = await clarion.store.complete_deliveries(
        [Completion(mine[0].id, mine[0].fence, outcomes.Delivered())], later
    )
    assert stale == []
    fresh = await clarion.store.complete_deliveries(
        [Completion(second[0].id, second[0].fence, outcomes.Delivered())], later
    )
    assert fresh == [second[0].id]


async def test_an_item_fails_only_when_every_delivery_failed(clarion: bootstrap.Clarion) -> None:
    tenant = await _tenant(clarion)
    await _push_device(clarion, tenant, "a", "tok")
    event_id, _ = await _route(
        clarion,
        tenant,
        EventSpec(type="t", recipients=Recipients(users=("a",)), channels=(Channel.APNS,)),
    )
    delivering = type(clarion.delivering)(
        clarion.store, clarion.clock, {Channel.APNS: _Recording([outcomes.Rejected("BadTopic")])}
    )
    await delivering.deliver_once(Channel.APNS)
    report = await clarion.reporting.recipient(tenant, event_id, "a")
    # The inbox (websocket) delivery is still open, so the recipient can still see it.
    assert report.item.status == Status.PENDING
    assert Status.FAILED in {d.status for d in report.deliveries}
