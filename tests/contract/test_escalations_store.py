"""Escalation in the store, on every backend: routing writes the timers of a rule's
escalation, firing them resends a push or creates an email delivery once, and reading (or,
for a resend, receiving) cancels them."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from clarion import bootstrap
from clarion.adapters.storage import tables
from clarion.domain import outcomes
from clarion.domain.channels import Channel
from clarion.domain.notifications import EventSpec, Recipients
from clarion.domain.records import Completion, UserFields
from clarion.domain.statuses import Status, Subject
from clarion.services.accepting import Accepting

pytestmark = pytest.mark.usefixtures("clarion")

RESEND, EMAIL = 60, 600


async def _setup(app: bootstrap.Clarion, rule: dict[str, Any] | None = None) -> str:
    tenant = (await app.tenancy.create_tenant("t")).tenant_id
    await app.ruling.put(
        tenant,
        "orders",
        rule
        or {
            "event_type": "order.*",
            "channels": ["apns"],
            "escalation": {"resend_push_after": RESEND, "email_if_unread_after": EMAIL},
        },
    )
    for user, email in (("a", "a@example.com"), ("b", "b@example.com"), ("c", None)):
        await app.directory.put_user(tenant, user, UserFields(email=email))
        user_id = await app.directory.ensure_user(tenant, user)
        now = app.clock.now()
        async with app.store.engine.begin() as conn:
            await conn.execute(
                tables.devices.insert().values(
                    tenant_id=tenant,
                    user_id=user_id,
                    provider="apns",
                    token=f"tok-{user}",
                    keys={},
                    status="active",
                    created_at=now,
                    updated_at=now,
                )
            )
    return tenant


async def _route(
    app: bootstrap.Clarion, tenant: str, users: tuple[str, ...] = ("a", "b", "c")
) -> str:
    accepting = Accepting(app.store, app.clock, max_recipients=100, channels=frozenset(Channel))
    accepted = await accepting.accept(
        tenant,
        EventSpec(
            type="order.shipped", recipients=Recipients(users=users), channels=(Channel.APNS,)
        ),
    )
    routed = await app.routing.route(accepted.id)
    assert routed is not None
    return routed.notification_id


async def _escalations(app: bootstrap.Clarion, notification_id: str) -> dict[tuple[str, str], str]:
    e, u = tables.escalations, tables.users
    async with app.store.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(u.c.external_id, e.c.kind, e.c.status)
            .join(u, u.c.id == e.c.user_id)
            .where(e.c.notification_id == notification_id)
        )
        return {(r.external_id, r.kind): r.status for r in rows}


async def _deliveries(app: bootstrap.Clarion, notification_id: str) -> dict[tuple[str, str], Any]:
    d, u = tables.deliveries, tables.users
    async with app.store.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(u.c.external_id, d.c.channel, d.c.id, d.c.status, d.c.item_id)
            .join(u, u.c.id == d.c.user_id)
            .where(d.c.notification_id == notification_id)
        )
        return {(r.external_id, r.channel): r for r in rows}


async def _trail(app: bootstrap.Clarion, delivery_id: int) -> list[tuple[Any, ...]]:
    t = tables.transitions
    async with app.store.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(t.c.source, t.c.target, t.c.cause)
            .where(t.c.subject == str(Subject.DELIVERY), t.c.subject_id == delivery_id)
            .order_by(t.c.id)
        )
        return [tuple(r) for r in rows]


async def _send_push(app: bootstrap.Clarion, tenant: str, now: datetime) -> int:
    claimed = [
        c
        for c in await app.store.claim_deliveries(
            Channel.APNS, limit=100, lease_seconds=60, now=now
        )
        if c.tenant_id == tenant
    ]
    await app.store.complete_deliveries(
        [_completion(c, outcomes.Delivered(f"ref-{c.id}")) for c in claimed], now
    )
    return len(claimed)


def _completion(claimed: Any, outcome: outcomes.Outcome) -> Completion:
    return Completion(claimed.id, claimed.fence, outcome)


async def test_routing_writes_a_timer_per_item_and_kind_of_the_rules_escalation(
    clarion: bootstrap.Clarion,
) -> None:
    tenant = await _setup(clarion)
    notification = await _route(clarion, tenant)
    assert await _escalations(clarion, notification) == {
        (user, kind): "pending"
        for user in ("a", "b", "c")
        for kind in ("resend_push", "email_if_unread")
    }
    e = tables.escalations
    async with clarion.store.engine.connect() as conn:
        due = (await conn.execute(sa.select(e.c.kind, e.c.due_at, e.c.created_at))).all()
    for kind, due_at, created_at in due:
        assert due_at - created_at == timedelta(seconds=RESEND if kind == "resend_push" else EMAIL)


async def test_a_rule_without_escalation_writes_no_timer(clarion: bootstrap.Clarion) -> None:
    tenant = await _setup(clarion, {"event_type": "order.*"})
    notification = await _route(clarion, tenant)
    assert await _escalations(clarion, notification) == {}


async def test_nothing_fires_before_it_is_due(clarion: bootstrap.Clarion) -> None:
    tenant = await _setup(clarion)
    notification = await _route(clarion, tenant)
    assert await clarion.store.escalate_due(now=clarion.clock.now(), limit=100) == 0
    assert set((await _escalations(clarion, notification)).values()) == {"pending"}


async def test_a_due_resend_puts_the_sent_push_back_to_pending_once(
    clarion: bootstrap.Clarion,
) -> None:
    tenant = await _setup(clarion)
    notification = await _route(clarion, tenant, ("a",))
    now = clarion.clock.now()
    assert await _send_push(clarion, tenant, now) == 1
    later = now + timedelta(seconds=RESEND + 1)
    assert await clarion.store.escalate_due(now=later, limit=100) == 1
    push = (await _deliveries(clarion, notification))[("a", "apns")]
    assert push.status == "pending"
    assert await _trail(clarion, push.id) == [
        (None, "pending", "routed"),
        ("pending", "sent", "apns"),
        ("sent", "pending", "escalation_resend"),
    ]
    assert await _escalations(clarion, notification) == {
        ("a", "resend_push"): "done",
        ("a", "email_if_unread"): "pending",
    }
    # Sent again, it stays sent: the resend happens once.
    assert await _send_push(clarion, tenant, later) == 1
    assert await clarion.store.escalate_due(now=later + timedelta(seconds=1), limit=100) == 0
    assert (await _deliveries(clarion, notification))[("a", "apns")].status == "sent"


async def test_a_due_email_follow_up_creates_an_email_delivery_unless_opted_out(
    clarion: bootstrap.Clarion,
) -> None:
    tenant = await _setup(clarion)
    notification = await _route(clarion, tenant)
    b_id = await clarion.directory.ensure_user(tenant, "b")
    await clarion.store.set_email_status(tenant, b_id, "unsubscribed", clarion.clock.now())
    later = clarion.clock.now() + timedelta(seconds=EMAIL + 1)
    assert await clarion.store.escalate_due(now=later, limit=100) == 6
    found = await _deliveries(clarion, notification)
    assert found[("a", "email")].status == "pending"
    assert found[("b", "email")].status == "suppressed"
    assert ("c", "email") not in found  # no address
    assert await _trail(clarion, found[("a", "email")].id) == [
        (None, "pending", "escalation_email")
    ]
    assert set((await _escalations(clarion, notification)).values()) == {"done"}
    assert await clarion.store.escalate_due(now=later, limit=100) == 0


async def test_reading_cancels_every_timer_and_receiving_cancels_the_resend(
    clarion: bootstrap.Clarion,
) -> None:
    tenant = await _setup(clarion)
    notification = await _route(clarion, tenant)
    found = await _deliveries(clarion, notification)
    now = clarion.clock.now()
    a_id = await clarion.directory.ensure_user(tenant, "a")
    b_id = await clarion.directory.ensure_user(tenant, "b")
    c_id = await clarion.directory.ensure_user(tenant, "c")
    await clarion.store.apply_receipt(
        tenant,
        a_id,
        found[("a", "apns")].item_id,
        Status.READ,
        channel=None,
        cause="receipt:api",
        now=now,
    )
    await clarion.store.apply_receipt(
        tenant,
        b_id,
        found[("b", "apns")].item_id,
        Status.RECEIVED,
        channel=Channel.APNS,
        cause="receipt:api",
        now=now,
    )
    await clarion.store.read_all(
        tenant, c_id, group=None, category=None, cause="receipt:read-all", now=now
    )
    assert await _escalations(clarion, notification) == {
        ("a", "resend_push"): "cancelled",
        ("a", "email_if_unread"): "cancelled",
        ("b", "resend_push"): "cancelled",
        ("b", "email_if_unread"): "pending",
        ("c", "resend_push"): "cancelled",
        ("c", "email_if_unread"): "cancelled",
    }
    assert await clarion.store.escalate_due(now=now + timedelta(seconds=EMAIL + 1), limit=9) == 1
    after = await _deliveries(clarion, notification)
    assert after[("b", "email")].status == "pending"
    assert ("a", "email") not in after


async def test_two_concurrent_workers_fire_each_timer_once(clarion: bootstrap.Clarion) -> None:
    tenant = await _setup(clarion)
    notifications = [await _route(clarion, tenant) for _ in range(4)]
    now = clarion.clock.now()
    await _send_push(clarion, tenant, now)
    later = now + timedelta(seconds=EMAIL + 1)

    async def worker() -> int:
        total = 0
        while settled := await clarion.store.escalate_due(now=later, limit=3):
            total += settled
        return total

    assert sum(await asyncio.gather(worker(), worker())) == 4 * 6
    t = tables.transitions
    async with clarion.store.engine.connect() as conn:
        causes = (
            await conn.execute(
                sa.select(t.c.cause, sa.func.count())
                .where(t.c.tenant_id == tenant, t.c.cause.like("escalation%"))
                .group_by(t.c.cause)
            )
        ).all()
    assert dict(causes) == {"escalation_resend": 4 * 3, "escalation_email": 4 * 2}
    for notification in notifications:
        assert set((await _escalations(clarion, notification)).values()) == {"done"}
