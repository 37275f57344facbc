"""Digests in the store, on every backend: routing adds each recipient's item to one open
digest per rule and key value, and closing a due digest makes one email delivery listing its
unread entries (or none, when all were read)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from clarion import bootstrap
from clarion.adapters.storage import tables
from clarion.domain.channels import Channel
from clarion.domain.notifications import EventSpec, Recipients
from clarion.domain.records import UserFields
from clarion.domain.statuses import Status, Subject
from clarion.services.accepting import Accepting

pytestmark = pytest.mark.usefixtures("clarion")

WINDOW = 1800


async def _setup(app: bootstrap.Clarion, key: str | None = None) -> str:
    tenant = (await app.tenancy.create_tenant("t")).tenant_id
    await app.ruling.put(
        tenant,
        "comments",
        {
            "event_type": "comment.*",
            "channels": ["websocket"],
            "digest": {"window": WINDOW, "key": key, "channels": ["email"]},
        },
    )
    for user, email in (("a", "a@example.com"), ("b", "b@example.com"), ("c", None)):
        await app.directory.put_user(tenant, user, UserFields(email=email))
    return tenant


async def _route(app: bootstrap.Clarion, tenant: str, title: str, thread: str = "t1") -> str:
    accepting = Accepting(app.store, app.clock, max_recipients=100, channels=frozenset(Channel))
    accepted = await accepting.accept(
        tenant,
        EventSpec(
            type="comment.created",
            title=title,
            data={"thread": thread},
            recipients=Recipients(users=("a", "b", "c")),
        ),
    )
    routed = await app.routing.route(accepted.id)
    assert routed is not None
    return routed.notification_id


async def _digests(app: bootstrap.Clarion) -> dict[tuple[str, str], Any]:
    d, e, u = tables.digests, tables.digest_entries, tables.users
    async with app.store.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(
                u.c.external_id,
                d.c.key,
                d.c.status,
                d.c.delivery_id,
                d.c.due_at,
                d.c.created_at,
                sa.select(sa.func.count())
                .where(e.c.digest_id == d.c.id)
                .scalar_subquery()
                .label("entries"),
            ).join(u, u.c.id == d.c.user_id)
        )
        return {(r.external_id, r.key): r for r in rows}


async def _channels(app: bootstrap.Clarion, notification_id: str) -> set[tuple[str, str]]:
    d, u = tables.deliveries, tables.users
    async with app.store.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(u.c.external_id, d.c.channel)
            .join(u, u.c.id == d.c.user_id)
            .where(d.c.notification_id == notification_id)
        )
        return {(r.external_id, r.channel) for r in rows}


async def test_routing_batches_the_digest_channel_into_one_open_digest_per_user_and_key(
    clarion: bootstrap.Clarion,
) -> None:
    tenant = await _setup(clarion, key="event.data.thread")
    first = await _route(clarion, tenant, "one", "t1")
    await _route(clarion, tenant, "two", "t1")
    await _route(clarion, tenant, "three", "t2")
    assert await _channels(clarion, first) == {(u, "websocket") for u in ("a", "b", "c")}
    found = await _digests(clarion)
    assert {k: (r.status, r.entries) for k, r in found.items()} == {
        ("a", "t1"): ("open", 2),
        ("b", "t1"): ("open", 2),
        ("a", "t2"): ("open", 1),
        ("b", "t2"): ("open", 1),
    }
    for r in found.values():
        assert r.due_at - r.created_at == timedelta(seconds=WINDOW)


async def test_a_due_digest_becomes_one_email_delivery_listing_its_unread_entries(
    clarion: bootstrap.Clarion,
) -> None:
    tenant = await _setup(clarion)
    notifications = [await _route(clarion, tenant, title) for title in ("one", "two", "three")]
    now = clarion.clock.now()
    assert await clarion.store.digest_due(now=now, limit=100) == 0
    # b reads the first comment: it is left out of b's digest.
    b_id = await clarion.directory.ensure_user(tenant, "b")
    i = tables.inbox_items
    async with clarion.store.engine.begin() as conn:
        await conn.execute(
            i.update()
            .where(i.c.notification_id == notifications[0], i.c.user_id == b_id)
            .values(status=str(Status.READ))
        )
    later = now + timedelta(seconds=WINDOW + 1)
    assert await clarion.store.digest_due(now=later, limit=100) == 2
    assert await clarion.store.digest_due(now=later, limit=100) == 0
    found = await _digests(clarion)
    assert {k: r.status for k, r in found.items()} == {("a", ""): "sent", ("b", ""): "sent"}
    # The email rides on the newest notification; no other notification got one.
    assert ("a", "email") in await _channels(clarion, notifications[2])
    assert ("a", "email") not in await _channels(clarion, notifications[0])
    contents = await clarion.store.digest_contents(
        [found[("a", "")].delivery_id, found[("b", "")].delivery_id]
    )
    name, entries = contents[found[("a", "")].delivery_id]
    assert name == "digest:comments"
    assert [e["title"] for e in entries] == ["one", "two", "three"]
    assert [e["title"] for e in contents[found[("b", "")].delivery_id][1]] == ["two", "three"]
    t = tables.transitions
    async with clarion.store.engine.connect() as conn:
        trail = (
            await conn.execute(
                sa.select(t.c.target, t.c.cause).where(
                    t.c.subject == str(Subject.DELIVERY),
                    t.c.subject_id == found[("a", "")].delivery_id,
                )
            )
        ).all()
    assert [tuple(r) for r in trail] == [("pending", "digest")]


async def test_a_digest_all_read_closes_empty_and_a_new_event_opens_the_next(
    clarion: bootstrap.Clarion,
) -> None:
    tenant = await _setup(clarion)
    await _route(clarion, tenant, "one")
    i = tables.inbox_items
    async with clarion.store.engine.begin() as conn:
        await conn.execute(i.update().values(status=str(Status.READ)))
    later = clarion.clock.now() + timedelta(seconds=WINDOW + 1)
    assert await clarion.store.digest_due(now=later, limit=100) == 2
    assert {r.status for r in (await _digests(clarion)).values()} == {"empty"}
    d = tables.deliveries
    async with clarion.store.engine.connect() as conn:
        emails = (await conn.execute(sa.select(d.c.id).where(d.c.channel == "email"))).all()
    assert emails == []
    await _route(clarion, tenant, "two")
    d = tables.digests
    async with clarion.store.engine.connect() as conn:
        statuses = sorted((await conn.execute(sa.select(d.c.status))).scalars().all())
    assert statuses == ["empty", "empty", "open", "open"]


async def test_an_unsubscribed_address_gets_its_digest_suppressed(
    clarion: bootstrap.Clarion,
) -> None:
    tenant = await _setup(clarion)
    await _route(clarion, tenant, "one")
    b_id = await clarion.directory.ensure_user(tenant, "b")
    await clarion.store.set_email_status(tenant, b_id, "unsubscribed", clarion.clock.now())
    later = clarion.clock.now() + timedelta(seconds=WINDOW + 1)
    assert await clarion.store.digest_due(now=later, limit=1) == 1
    assert await clarion.store.digest_due(now=later, limit=1) == 1
    d, u = tables.deliveries, tables.users
    async with clarion.store.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(u.c.external_id, d.c.status)
            .join(u, u.c.id == d.c.user_id)
            .where(d.c.channel == "email")
        )
        assert dict(rows.all()) == {"a": "pending", "b": "suppressed"}
