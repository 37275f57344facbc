"""Scheduling and expiry in the store, on every database: scheduled outbox entries wait without
holding up due ones, routing and the redelivery sweep leave not-yet-due events alone,
cancellation, and undelivered work moving to `expired`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from clarion import bootstrap
from clarion.adapters.storage import tables
from clarion.adapters.storage.backlog import SqlBacklog
from clarion.domain import errors
from clarion.domain.channels import Channel
from clarion.domain.notifications import EventSpec, Recipients
from clarion.domain.statuses import Status
from clarion.services.accepting import Accepting
from clarion.services.routing import Routing

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self, at: datetime = T0) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at


def _accepting(app: bootstrap.Clarion, clock: Clock) -> Accepting:
    return Accepting(app.store, clock, max_recipients=10_000, channels=frozenset(Channel))


def _spec(**kw: object) -> EventSpec:
    return EventSpec(type="t", recipients=Recipients(users=("a",)), **kw)  # type: ignore[arg-type]


async def _tenant(app: bootstrap.Clarion) -> str:
    return (await app.tenancy.create_tenant("t")).tenant_id


async def _mine(app: bootstrap.Clarion, event_ids: list[str], now: datetime) -> list[str]:
    entries = await app.store.pending_outbox(10_000, now=now)
    return [e.payload["event_id"] for e in entries if e.payload["event_id"] in event_ids]


async def _rows(app: bootstrap.Clarion, table: sa.Table, notification_id: str) -> list[sa.Row]:
    async with app.store.engine.connect() as conn:
        return list(
            await conn.execute(
                sa.select(table.c.id, table.c.status, table.c.expires_at, table.c.expired_at)
                .where(table.c.notification_id == notification_id)
                .order_by(table.c.id)
            )
        )


async def _causes(app: bootstrap.Clarion, subject: str, ids: list[int]) -> list[tuple]:
    async with app.store.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(tables.transitions.c.source, tables.transitions.c.target)
            .where(
                tables.transitions.c.subject == subject,
                tables.transitions.c.subject_id.in_(ids),
                tables.transitions.c.cause == "expired",
            )
            .order_by(tables.transitions.c.subject_id)
        )
        return [tuple(r) for r in rows]


async def test_a_scheduled_entry_waits_without_holding_up_later_due_ones(
    clarion: bootstrap.Clarion,
) -> None:
    tenant, clock = await _tenant(clarion), Clock()
    accepting = _accepting(clarion, clock)
    later = await accepting.accept(tenant, _spec(send_at=T0 + timedelta(hours=1)))
    now = await accepting.accept(tenant, _spec())
    past = await accepting.accept(tenant, _spec(send_at=T0 - timedelta(hours=1)))
    ids = [later.id, now.id, past.id]
    assert await _mine(clarion, ids, T0) == [now.id, past.id]
    # Once all are due, they come in the order they fell due (then in id order).
    assert await _mine(clarion, ids, T0 + timedelta(hours=1)) == [now.id, past.id, later.id]
    event = await clarion.store.get_event(tenant, later.id)
    assert event is not None
    assert event.send_at == T0 + timedelta(hours=1)
    assert event.state == "accepted"
    # A send_at in the past means at once: nothing is scheduled.
    assert (await clarion.store.get_event(tenant, past.id)).send_at is None  # type: ignore[union-attr]


async def test_routing_refuses_an_event_before_its_send_at(clarion: bootstrap.Clarion) -> None:
    tenant, clock = await _tenant(clarion), Clock()
    accepted = await _accepting(clarion, clock).accept(
        tenant, _spec(send_at=T0 + timedelta(minutes=5))
    )
    routing = Routing(clarion.store, clarion.bus, clock)
    assert await routing.route(accepted.id) is None
    clock.at = T0 + timedelta(minutes=5)
    assert await routing.route(accepted.id) is not None


async def test_the_redelivery_sweep_counts_staleness_from_send_at(
    clarion: bootstrap.Clarion,
) -> None:
    tenant, clock = await _tenant(clarion), Clock()
    accepted = await _accepting(clarion, clock).accept(
        tenant, _spec(send_at=T0 + timedelta(hours=1))
    )
    window = timedelta(seconds=30)

    async def stale(at: datetime) -> list[str]:
        taken = await clarion.store.take_stale_events(
            accepted_before=at - window, limit=100, now=at
        )
        return [i for i in taken if i == accepted.id]

    assert await stale(T0 + timedelta(minutes=10)) == []
    assert accepted.id not in await clarion.store.unrouted_events(
        accepted_before=T0 + timedelta(minutes=10), limit=100
    )
    assert await stale(T0 + timedelta(hours=1, seconds=10)) == []
    assert await stale(T0 + timedelta(hours=1, seconds=31)) == [accepted.id]


async def test_cancelling_an_unrouted_event_drops_its_entry_and_routing_skips_it(
    clarion: bootstrap.Clarion,
) -> None:
    tenant, clock = await _tenant(clarion), Clock()
    accepting = _accepting(clarion, clock)
    scheduled = await accepting.accept(tenant, _spec(send_at=T0 + timedelta(hours=1)))
    other = await _tenant(clarion)
    assert await clarion.store.cancel_event(other, scheduled.id, T0) is None
    assert await clarion.store.cancel_event(tenant, scheduled.id, T0) == "cancelled"
    assert await clarion.store.cancel_event(tenant, scheduled.id, T0) == "cancelled"
    assert await _mine(clarion, [scheduled.id], T0 + timedelta(days=1)) == []
    event = await clarion.store.get_event(tenant, scheduled.id)
    assert event is not None
    assert (event.state, event.cancelled_at) == ("cancelled", T0)
    clock.at = T0 + timedelta(hours=2)
    assert await Routing(clarion.store, clarion.bus, clock).route(scheduled.id) is None
    assert (
        await clarion.store.take_stale_events(accepted_before=clock.at, limit=100, now=clock.at)
        == []
    )

    routed = await accepting.accept(tenant, _spec())
    assert await Routing(clarion.store, clarion.bus, clock).route(routed.id) is not None
    assert await clarion.store.cancel_event(tenant, routed.id, clock.at) == "routed"
    with pytest.raises(errors.AlreadySent):
        await accepting.cancel(tenant, routed.id)
    with pytest.raises(errors.NotFound):
        await accepting.cancel(tenant, "no-such-event")


async def test_the_sweep_expires_pending_items_and_deliveries_with_audit_entries(
    clarion: bootstrap.Clarion,
) -> None:
    tenant, clock = await _tenant(clarion), Clock()
    accepted = await _accepting(clarion, clock).accept(
        tenant, _spec(send_at=T0 + timedelta(minutes=1), ttl=60)
    )
    clock.at = T0 + timedelta(minutes=1)
    routed = await Routing(clarion.store, clarion.bus, clock).route(accepted.id)
    assert routed is not None
    expiry = T0 + timedelta(minutes=2)
    items = await _rows(clarion, tables.inbox_items, routed.notification_id)
    deliveries = await _rows(clarion, tables.deliveries, routed.notification_id)
    assert [(r.status, r.expires_at) for r in items] == [("pending", expiry)]
    assert [(r.status, r.expires_at) for r in deliveries] == [("pending", expiry)]
    user_id = await clarion.directory.ensure_user(tenant, "a")
    assert await clarion.store.expire_overdue(now=expiry - timedelta(seconds=1), limit=100) == 0
    backlog = await clarion.store.backlog(tenant, user_id, after=None, start=0, limit=10)
    assert [a.item.id for a in backlog] == [items[0].id]
    # Past the expiry, the backlog leaves it out even before the sweep has run.
    assert (
        await clarion.store.backlog(tenant, user_id, after=None, start=0, limit=10, now=expiry)
        == []
    )

    assert await clarion.store.expire_overdue(now=expiry, limit=100) == 2
    items = await _rows(clarion, tables.inbox_items, routed.notification_id)
    deliveries = await _rows(clarion, tables.deliveries, routed.notification_id)
    assert [(r.status, r.expired_at) for r in items + deliveries] == [("expired", expiry)] * 2
    assert await _causes(clarion, "item", [items[0].id]) == [("pending", "expired")]
    assert await _causes(clarion, "delivery", [deliveries[0].id]) == [("pending", "expired")]
    assert await clarion.store.expire_overdue(now=expiry, limit=100) == 0
    assert await clarion.store.backlog(tenant, user_id, after=0, start=0, limit=10) == []


async def test_a_claim_expires_instead_of_handing_out_and_the_sweep_spares_leases(
    clarion: bootstrap.Clarion,
) -> None:
    tenant, clock = await _tenant(clarion), Clock()
    for user in ("a", "b"):
        await clarion.devices.register(
            tenant, user, provider="apns", token=f"{user * 64}", app_id=None, keys={}
        )
    spec = EventSpec(
        type="t",
        recipients=Recipients(users=("a", "b")),
        channels=(Channel.APNS,),
        expires_at=T0 + timedelta(minutes=10),
    )
    accepted = await _accepting(clarion, clock).accept(tenant, spec)
    routed = await Routing(clarion.store, clarion.bus, clock).route(accepted.id)
    assert routed is not None
    first = await clarion.store.claim_deliveries(Channel.APNS, limit=1, lease_seconds=3600, now=T0)
    assert [c.item.expires_at for c in first] == [T0 + timedelta(minutes=10)]
    late = T0 + timedelta(minutes=10)
    # The sweep leaves the leased delivery (and its item) to its worker.
    assert await clarion.store.expire_overdue(now=late, limit=100) == 4
    leased = list(await _rows(clarion, tables.deliveries, routed.notification_id))
    assert sorted(r.status for r in leased) == ["expired", "expired", "expired", "pending"]
    # Once its lease is over, a claim expires it instead of handing it out.
    after = T0 + timedelta(hours=2)
    assert (
        await clarion.store.claim_deliveries(Channel.APNS, limit=10, lease_seconds=60, now=after)
        == []
    )
    rows = await _rows(clarion, tables.deliveries, routed.notification_id)
    assert {r.status for r in rows} == {str(Status.EXPIRED)}
    items = await _rows(clarion, tables.inbox_items, routed.notification_id)
    assert {r.status for r in items} == {str(Status.EXPIRED)}
    assert len(await _causes(clarion, "delivery", [r.id for r in rows])) == 4


async def test_scheduled_entries_do_not_count_as_backlog(clarion: bootstrap.Clarion) -> None:
    tenant, clock = await _tenant(clarion), Clock()
    accepting = _accepting(clarion, clock)
    for _ in range(3):
        await accepting.accept(tenant, _spec(send_at=T0 + timedelta(hours=1)))
    before = SqlBacklog(clarion.store.engine, lambda: T0)
    after = SqlBacklog(clarion.store.engine, lambda: T0 + timedelta(hours=1))
    assert await after.unpublished(10**6) - await before.unpublished(10**6) == 3
