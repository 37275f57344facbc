"""The storage contract: every backend (SQLite, PostgreSQL) passes the same tests."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from clarion import bootstrap
from clarion.adapters.storage import tables
from clarion.domain import errors, outcomes
from clarion.domain.channels import Channel
from clarion.domain.notifications import EventSpec, Recipients
from clarion.domain.records import Claimed, Completion, UserFields
from clarion.domain.statuses import Status, Subject
from clarion.services.accepting import Accepting
from clarion.services.relaying import Relay

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


async def _routing_of(app: bootstrap.Clarion, event_id: str) -> tuple[Any, ...]:
    """What routing wrote for the event, by external ids: its recipients with their items'
    status, its deliveries (user, channel, endpoint, status) and its audit entries."""
    t = tables
    async with app.store.engine.connect() as conn:
        [nid] = (
            await conn.scalars(
                sa.select(t.notifications.c.id).where(t.notifications.c.event_id == event_id)
            )
        ).all()
        items = await conn.execute(
            sa.select(t.users.c.external_id, t.inbox_items.c.status)
            .join(t.users, t.users.c.id == t.inbox_items.c.user_id)
            .where(t.inbox_items.c.notification_id == nid)
        )
        sent = await conn.execute(
            sa.select(
                t.users.c.external_id,
                t.deliveries.c.channel,
                t.deliveries.c.endpoint != "",
                t.deliveries.c.status,
                t.deliveries.c.category,
            )
            .join(t.users, t.users.c.id == t.deliveries.c.user_id)
            .where(t.deliveries.c.notification_id == nid)
        )
        audit = await conn.execute(
            sa.select(
                t.transitions.c.subject, t.transitions.c.target, t.transitions.c.tenant_id
            ).where(
                sa.or_(
                    t.transitions.c.subject_id.in_(
                        sa.select(t.inbox_items.c.id).where(t.inbox_items.c.notification_id == nid)
                    )
                    & (t.transitions.c.subject == "item"),
                    t.transitions.c.subject_id.in_(
                        sa.select(t.deliveries.c.id).where(t.deliveries.c.notification_id == nid)
                    )
                    & (t.transitions.c.subject == "delivery"),
                )
            )
        )
        return (
            sorted(tuple(r) for r in items),
            sorted(tuple(r) for r in sent),
            sorted(tuple(r) for r in audit),
        )


async def test_a_batch_routes_each_event_as_routing_it_alone_would(
    clarion: bootstrap.Clarion,
) -> None:
    one, two = await _tenant(clarion), await _tenant(clarion)
    await _group(clarion, one, "town", ["mayor"], kind="community")
    await _group(clarion, one, "red", ["ann", "bob"], community="town")
    await _group(clarion, two, "red", ["zed", "ann"])
    await _group(clarion, two, "nobody", [])
    now = clarion.clock.now()
    bob = await clarion.store.ensure_user(one, "bob", now)
    await clarion.store.put_preferences(one, bob, "category", "news", {"*": False}, now)
    await clarion.devices.register(
        one, "ann", provider="apns", token="a" * 64, app_id=None, keys={}
    )
    shapes = [
        (one, EventSpec(type="t", recipients=Recipients(users=("ann", "new-1")))),
        (one, EventSpec(type="t", recipients=Recipients(communities=("town",)), category="news")),
        (
            one,
            EventSpec(
                type="t",
                recipients=Recipients(users=("bob",), groups=("red",)),
                channels=(Channel.WEBSOCKET, Channel.APNS),
            ),
        ),
        (two, EventSpec(type="t", recipients=Recipients(groups=("red",)), category="news")),
        (two, EventSpec(type="t", recipients=Recipients(users=("new-2", "zed")))),
        (two, EventSpec(type="t", recipients=Recipients(groups=("nobody",)))),
    ]
    accepting = Accepting(
        clarion.store, clarion.clock, max_recipients=10_000, channels=frozenset(Channel)
    )
    alone = [(await accepting.accept(tenant, spec)).id for tenant, spec in shapes]
    together = [(await accepting.accept(tenant, spec)).id for tenant, spec in shapes]
    for event_id in alone:
        assert await clarion.routing.route(event_id) is not None
    # In the batch: an event already routed, and one named twice, are routed once.
    answers = await clarion.routing.route_many([alone[0], *together, together[1]])
    assert answers[0] is None
    assert answers[-1] is None
    assert all(a is not None for a in answers[1:-1])
    for by_itself, batched, answer in zip(alone, together, answers[1:-1], strict=True):
        expected, got = await _routing_of(clarion, by_itself), await _routing_of(clarion, batched)
        assert got == expected
        assert answer is not None
        assert (answer.recipients, answer.deliveries) == (len(got[0]), len(got[1]))
    [apns] = [d for d in (await _routing_of(clarion, together[2]))[1] if d[1] == "apns"]
    assert apns[0] == "ann"
    # bob opted out of "news": the community event's delivery to him is suppressed.
    news = {(d[0], d[3]) for d in (await _routing_of(clarion, together[1]))[1]}
    assert news == {("ann", "pending"), ("bob", "suppressed"), ("mayor", "pending")}


async def test_a_batch_larger_than_one_statement_routes_every_event(
    clarion: bootstrap.Clarion,
) -> None:
    tenant = await _tenant(clarion)
    ids = [
        (
            await clarion.accepting.accept(
                tenant, EventSpec(type="t", recipients=Recipients(users=(f"u{n}", f"v{n % 3}")))
            )
        ).id
        for n in range(130)
    ]
    answers = await clarion.routing.route_many(ids)
    assert [(a.recipients, a.deliveries) if a else None for a in answers] == [(2, 2)] * 130
    async with clarion.store.engine.connect() as conn:
        audited = await conn.scalar(sa.select(sa.func.count()).select_from(tables.transitions))
        states = set(await conn.scalars(sa.select(tables.events.c.state)))
    assert audited == 130 * 4
    assert states == {"routed"}


async def test_overlapping_batches_route_each_event_once(clarion: bootstrap.Clarion) -> None:
    tenant = await _tenant(clarion)
    ids = [
        (
            await clarion.accepting.accept(
                tenant, EventSpec(type="t", recipients=Recipients(users=(f"u{n % 7}", "all")))
            )
        ).id
        for n in range(40)
    ]
    batches = [ids, ids[::-1], ids[10:30], ids[::2]]
    results = await asyncio.gather(*(clarion.routing.route_many(b) for b in batches))
    winners = [r.event_id for answers in results for r in answers if r is not None]
    assert sorted(winners) == sorted(ids)


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


async def test_the_redelivery_sweep_takes_every_stale_event_once_per_window(
    clarion: bootstrap.Clarion,
) -> None:
    tenant = await _tenant(clarion)
    accepted = await clarion.accepting.accept_many(
        tenant,
        [(EventSpec(type="t", recipients=Recipients(users=(f"u{n}",))), None) for n in range(7)],
    )
    await clarion.routing.route(accepted[0].id)
    wanted = {a.id for a in accepted[1:]}
    relay = Relay(clarion.store, clarion.bus, clarion.clock, batch=3, interval=1, redeliver_after=0)
    # Pages of 3 until none is left: all six unrouted ones in one sweep, the routed one not.
    later = clarion.clock.now() + timedelta(seconds=1)
    taken = []
    while page := await clarion.store.take_stale_events(accepted_before=later, limit=3, now=later):
        taken += page
    assert sorted(taken) == sorted(wanted)
    # Taken ones wait a window before they are taken again.
    assert await clarion.store.take_stale_events(accepted_before=later, limit=10, now=later) == []
    again = later + timedelta(seconds=1)
    assert (
        len(await clarion.store.take_stale_events(accepted_before=again, limit=10, now=again)) == 6
    )
    # The relay's sweep publishes every one of them, whatever its page size.
    assert await relay.redeliver_stale(older_than=timedelta(seconds=-5)) == 6


async def test_an_event_that_stays_unrouted_goes_back_ever_more_rarely(
    clarion: bootstrap.Clarion,
) -> None:
    tenant = await _tenant(clarion)
    [accepted] = await clarion.accepting.accept_many(
        tenant, [(EventSpec(type="t", recipients=Recipients(users=("a",))), None)]
    )
    window = timedelta(seconds=10)
    start = clarion.clock.now() + window

    async def taken_at(seconds: float) -> bool:
        now = start + timedelta(seconds=seconds)
        found = await clarion.store.take_stale_events(
            accepted_before=now - window, limit=10, now=now
        )
        return accepted.id in found

    # Taken after one window, then after 1, 2, 4, 8 windows, then every 16.
    assert await taken_at(0)
    assert not await taken_at(9)
    assert await taken_at(10.5)
    assert not await taken_at(25)
    assert await taken_at(31)
    assert not await taken_at(65)
    assert await taken_at(72)
    assert await taken_at(153)
    assert not await taken_at(300)
    assert await taken_at(314)
    assert not await taken_at(470)
    assert await taken_at(475)


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


async def _claim_mine(
    app: bootstrap.Clarion, tenant: str, now: datetime, *, limit: int = 1000, lease: float = 60
) -> list[Claimed]:
    # Claims span tenants, and the PostgreSQL database is shared by the session's tests.
    claimed = await app.store.claim_deliveries(
        Channel.APNS, limit=limit, lease_seconds=lease, now=now
    )
    return sorted((c for c in claimed if c.tenant_id == tenant), key=lambda c: c.id)


async def _delivery_rows(app: bootstrap.Clarion, tenant: str) -> dict[int, sa.Row[Any]]:
    d = tables.deliveries
    async with app.store.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(d).where(d.c.tenant_id == tenant, d.c.channel == str(Channel.APNS))
        )
        return {r.id: r for r in rows}


async def _trail(
    app: bootstrap.Clarion, subject: Subject, subject_id: int
) -> list[tuple[Any, ...]]:
    t = tables.transitions
    async with app.store.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(t.c.source, t.c.target, t.c.cause)
            .where(t.c.subject == str(subject), t.c.subject_id == subject_id)
            .order_by(t.c.id)
        )
        return [tuple(r) for r in rows]


async def _device_status(app: bootstrap.Clarion, device_id: int) -> tuple[str, str | None]:
    d = tables.devices
    async with app.store.engine.connect() as conn:
        row = (
            await conn.execute(sa.select(d.c.status, d.c.retired_reason).where(d.c.id == device_id))
        ).one()
        return row.status, row.retired_reason


async def test_one_completion_call_applies_every_kind_of_outcome_set_based(
    clarion: bootstrap.Clarion,
) -> None:
    tenant = await _tenant(clarion)
    devices = {
        name: await _push_device(clarion, tenant, user, f"tok-{name}")
        for name, user in [
            ("a1", "a"),
            ("a2", "a"),
            ("b", "b"),
            ("c", "c"),
            ("d", "d"),
        ]
    }
    _, routed = await _route(
        clarion,
        tenant,
        EventSpec(
            type="t", recipients=Recipients(users=("a", "b", "c", "d")), channels=(Channel.APNS,)
        ),
    )
    now = clarion.clock.now()
    claimed = {c.endpoint: c for c in await _claim_mine(clarion, tenant, now)}
    assert sorted(claimed) == sorted(str(i) for i in devices.values())
    by_name = {name: claimed[str(i)] for name, i in devices.items()}
    retry_at = now + timedelta(seconds=90)
    script = {
        "a1": Completion(by_name["a1"].id, by_name["a1"].fence, outcomes.Delivered("apns-a1")),
        "a2": Completion(by_name["a2"].id, by_name["a2"].fence, outcomes.Delivered("apns-a2")),
        "b": Completion(
            by_name["b"].id, by_name["b"].fence, outcomes.RetryLater("busy", 90), retry_at
        ),
        "c": Completion(by_name["c"].id, by_name["c"].fence, outcomes.Rejected("BadTopic")),
        "d": Completion(by_name["d"].id, by_name["d"].fence, outcomes.TokenInvalid("Unregistered")),
    }
    applied = await clarion.store.complete_deliveries(list(script.values()), now)
    assert sorted(applied) == sorted(c.delivery_id for c in script.values())

    rows = await _delivery_rows(clarion, tenant)
    a1, a2, b, c, d = (rows[by_name[n].id] for n in ("a1", "a2", "b", "c", "d"))
    assert (a1.status, a1.reference, a2.status, a2.reference) == (
        "sent",
        "apns-a1",
        "sent",
        "apns-a2",
    )
    assert a1.sent_at is not None
    assert a1.lease_expires_at is None
    assert (b.status, b.error, b.lease_expires_at) == ("pending", "busy", None)
    assert b.next_attempt_at == retry_at
    assert (c.status, c.error, d.status, d.error) == (
        "failed",
        "BadTopic",
        "failed",
        "Unregistered",
    )
    assert c.failed_at is not None

    # The dead token is retired; the others are untouched.
    assert await _device_status(clarion, devices["d"]) == ("retired", "Unregistered")
    for name in ("a1", "a2", "b", "c"):
        assert (await _device_status(clarion, devices[name]))[0] == "active"

    # Every move is audited, once; the item of two sent deliveries moved once.
    for name, target, cause in [
        ("a1", "sent", "apns"),
        ("a2", "sent", "apns"),
        ("c", "failed", "BadTopic"),
        ("d", "failed", "Unregistered"),
    ]:
        assert await _trail(clarion, Subject.DELIVERY, by_name[name].id) == [
            (None, "pending", "routed"),
            ("pending", target, cause),
        ]
    assert await _trail(clarion, Subject.DELIVERY, by_name["b"].id) == [(None, "pending", "routed")]
    items = await _items(clarion, routed.notification_id)
    assert await _trail(clarion, Subject.ITEM, items["a"][0]) == [
        (None, "pending", "routed"),
        ("pending", "sent", "apns"),
    ]
    # Each recipient still has an open websocket delivery, so no item fails.
    assert {user: status for user, (_, status) in items.items()} == {
        "a": "sent",
        "b": "pending",
        "c": "pending",
        "d": "pending",
    }

    # The retry is not due before its time, and then it is, with a new fence.
    assert await _claim_mine(clarion, tenant, retry_at - timedelta(seconds=1)) == []
    [again] = await _claim_mine(clarion, tenant, retry_at)
    assert (again.id, again.fence, again.attempts) == (
        by_name["b"].id,
        by_name["b"].fence + 1,
        by_name["b"].attempts + 1,
    )


async def test_a_completion_applies_only_what_this_lease_holds(clarion: bootstrap.Clarion) -> None:
    tenant = await _tenant(clarion)
    for user in ("a", "b", "c"):
        await _push_device(clarion, tenant, user, f"tok-{user}")
    await _route(
        clarion,
        tenant,
        EventSpec(type="t", recipients=Recipients(users=("a", "b", "c")), channels=(Channel.APNS,)),
    )
    now = clarion.clock.now()
    first = await _claim_mine(clarion, tenant, now, lease=1)
    later = now + timedelta(seconds=5)
    # The lease ran out: one delivery is claimed again by another worker.
    [taken] = await _claim_mine(clarion, tenant, later, limit=1)
    taken_over = next(c for c in first if c.id == taken.id)
    applied = await clarion.store.complete_deliveries(
        [Completion(c.id, c.fence, outcomes.Delivered(f"ref-{c.id}")) for c in first], later
    )
    assert sorted(applied) == sorted(c.id for c in first if c.id != taken.id)
    rows = await _delivery_rows(clarion, tenant)
    assert rows[taken.id].status == "pending"
    assert rows[taken.id].reference is None
    assert await _trail(clarion, Subject.DELIVERY, taken.id) == [(None, "pending", "routed")]
    # A completion for a delivery that is no longer pending changes nothing either.
    done = next(c for c in first if c.id != taken_over.id)
    assert (
        await clarion.store.complete_deliveries(
            [Completion(done.id, done.fence, outcomes.Rejected("late"))], later
        )
        == []
    )
    assert (await _delivery_rows(clarion, tenant))[done.id].status == "sent"
    assert await clarion.store.complete_deliveries(
        [Completion(taken.id, taken.fence, outcomes.Delivered("mine"))], later
    ) == [taken.id]


async def test_claims_never_hand_out_a_leased_delivery_and_take_them_back_when_it_runs_out(
    clarion: bootstrap.Clarion,
) -> None:
    tenant = await _tenant(clarion)
    users = tuple(f"u{n}" for n in range(5))
    for user in users:
        await _push_device(clarion, tenant, user, f"tok-{user}")
    await _route(
        clarion,
        tenant,
        EventSpec(type="t", recipients=Recipients(users=users), channels=(Channel.APNS,)),
    )
    now = clarion.clock.now()
    seen: list[int] = []
    while batch := await _claim_mine(clarion, tenant, now, limit=2, lease=30):
        seen += [c.id for c in batch]
    assert len(seen) == len(set(seen)) == 5
    assert await _claim_mine(clarion, tenant, now + timedelta(seconds=29)) == []
    again = await _claim_mine(clarion, tenant, now + timedelta(seconds=31))
    assert sorted(c.id for c in again) == sorted(seen)
    assert {c.attempts for c in again} == {2}


async def test_a_dead_token_is_kept_when_the_device_registered_again_after_the_claim(
    clarion: bootstrap.Clarion,
) -> None:
    tenant = await _tenant(clarion)
    device = await _push_device(clarion, tenant, "a", "ab" * 32)
    await _route(
        clarion,
        tenant,
        EventSpec(type="t", recipients=Recipients(users=("a",)), channels=(Channel.APNS,)),
    )
    [claimed] = await _claim_mine(clarion, tenant, clarion.clock.now())
    # The app registers the token again while the push is in flight.
    await clarion.devices.register(
        tenant, "a", provider="apns", token="ab" * 32, app_id=None, keys={}
    )
    applied = await clarion.store.complete_deliveries(
        [Completion(claimed.id, claimed.fence, outcomes.TokenInvalid("Unregistered"))],
        clarion.clock.now(),
    )
    assert applied == [claimed.id]
    assert (await _delivery_rows(clarion, tenant))[claimed.id].status == "failed"
    assert await _device_status(clarion, device) == ("active", None)


async def test_deliveries_to_a_retired_device_fail_at_claim_and_are_never_sent(
    clarion: bootstrap.Clarion,
) -> None:
    tenant = await _tenant(clarion)
    dead = await _push_device(clarion, tenant, "a", "tok-dead")
    alive = await _push_device(clarion, tenant, "b", "tok-alive")
    spec = EventSpec(type="t", recipients=Recipients(users=("a", "b")), channels=(Channel.APNS,))
    await _route(clarion, tenant, spec)
    await _route(clarion, tenant, spec)
    now = clarion.clock.now()
    first = [c for c in await _claim_mine(clarion, tenant, now) if c.endpoint == str(dead)]
    # The first push to the dead token retires it; the second event's is still pending.
    [one, other] = first
    await clarion.store.complete_deliveries(
        [Completion(one.id, one.fence, outcomes.TokenInvalid("Unregistered"))], now
    )
    # The lease on the second runs out without an answer: it is due again, to a dead token.
    later = now + timedelta(seconds=61)
    claimed = await _claim_mine(clarion, tenant, later)
    assert {c.endpoint for c in claimed} == {str(alive)}
    row = (await _delivery_rows(clarion, tenant))[other.id]
    assert (row.status, row.error) == ("failed", "device retired")
    assert await _trail(clarion, Subject.DELIVERY, other.id) == [
        (None, "pending", "routed"),
        ("pending", "failed", "device retired"),
    ]


async def test_an_item_fails_when_its_last_open_delivery_fails_and_the_move_is_audited(
    clarion: bootstrap.Clarion,
) -> None:
    tenant = await _tenant(clarion)
    device = await _push_device(clarion, tenant, "a", "tok")
    event_id, routed = await _route(
        clarion,
        tenant,
        EventSpec(type="t", recipients=Recipients(users=("a",)), channels=(Channel.APNS,)),
    )
    [push] = await _claim_mine(clarion, tenant, clarion.clock.now())
    report = await clarion.reporting.recipient(tenant, event_id, "a")
    inbox = next(d for d in report.deliveries if d.channel == str(Channel.WEBSOCKET))
    # The websocket delivery was never leased (fence 0); both fail in one call.
    applied = await clarion.store.complete_deliveries(
        [
            Completion(inbox.id, 0, outcomes.Rejected("closed")),
            Completion(push.id, push.fence, outcomes.TokenInvalid("BadDeviceToken")),
        ],
        clarion.clock.now(),
    )
    assert sorted(applied) == sorted([inbox.id, push.id])
    items = await _items(clarion, routed.notification_id)
    item_id, status = items["a"]
    assert status == "failed"
    assert await _trail(clarion, Subject.ITEM, item_id) == [
        (None, "pending", "routed"),
        ("pending", "failed", "unreachable"),
    ]
    assert (await _device_status(clarion, device))[0] == "retired"
