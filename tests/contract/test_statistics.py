"""Producer statistics: exact counts, rates, medians and buckets, on SQLite and PostgreSQL.

Events go through the real services (accept, route, mark sent, receipts) under a clock the
test moves, so every created_at, sent_at and read_at is known to the microsecond.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from clarion import bootstrap
from clarion.adapters.storage import tables
from clarion.domain import errors
from clarion.domain.channels import Channel
from clarion.domain.notifications import EventSpec, Recipients
from clarion.domain.records import StatisticsReport, UserFields
from clarion.domain.statuses import Status
from clarion.services.accepting import Accepting
from clarion.settings import Settings

T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
ZERO = {str(s): 0 for s in Status}


class ManualClock:
    """A clock that stands still until the test moves it."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
async def clarion(settings: Settings, clock: ManualClock) -> AsyncIterator[bootstrap.Clarion]:
    """The suite's `clarion` (each database in turn), on a clock the test moves."""
    await bootstrap.migrate(settings)
    app = bootstrap.build(settings, clock=clock)
    yield app
    await app.close()


@dataclass
class World:
    tenant: str
    other_tenant: str
    items: dict[str, int]  # user -> item id, in the first tenant


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


async def _route(app: bootstrap.Clarion, tenant: str, spec: EventSpec) -> str:
    # Accept on every channel, as a server with every transport configured would.
    accepting = Accepting(app.store, app.clock, max_recipients=100, channels=frozenset(Channel))
    accepted = await accepting.accept(tenant, spec)
    routed = await app.routing.route(accepted.id)
    assert routed is not None
    return routed.notification_id


async def _item_ids(app: bootstrap.Clarion, notification_id: str) -> dict[str, int]:
    async with app.store.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(tables.users.c.external_id, tables.inbox_items.c.id)
            .join(tables.users, tables.users.c.id == tables.inbox_items.c.user_id)
            .where(tables.inbox_items.c.notification_id == notification_id)
        )
        return {r.external_id: r.id for r in rows}


async def _receipt(
    app: bootstrap.Clarion,
    tenant: str,
    user: str,
    item: int,
    status: Status,
    channel: Channel | None = Channel.WEBSOCKET,
) -> None:
    user_id = await app.directory.ensure_user(tenant, user)
    moved = await app.acknowledging.report(tenant, user_id, item, status, channel=channel)
    assert moved.changed


async def _world(app: bootstrap.Clarion, clock: ManualClock) -> World:
    """A community `town` of groups `red` and `blue`, a group `other` outside it, and an
    event for each, with this outcome (seconds to read in brackets):

    | user | created          | group | category | item status        | websocket delivery |
    |------|------------------|-------|----------|--------------------|--------------------|
    | ann  | 11-01 10:00      | red   | billing  | read (70)          | read (+ email: pending) |
    | bob  | 11-01 10:00      | red   | billing  | received           | received           |
    | cid  | 11-01 10:00      | red   | billing  | pending            | pending            |
    | gus  | 11-01 10:00      | other | -        | read (1000)        | read               |
    | dan  | 11-01 11:00      | blue  | news     | read (120)         | read               |
    | eve  | 11-01 11:00      | blue  | news     | read (30), via API | pending            |
    | fay  | 11-02 10:00      | town  | -        | sent               | sent               |

    A second tenant has a community `town`, a group `red` and a user `ann` too, all read.
    """
    tenant = (await app.tenancy.create_tenant("t")).tenant_id
    other = (await app.tenancy.create_tenant("u")).tenant_id
    await _group(app, tenant, "town", [], kind="community")
    await _group(app, tenant, "red", ["ann", "bob", "cid"], community="town")
    await _group(app, tenant, "blue", ["dan", "eve"], community="town")
    await _group(app, tenant, "other", ["gus"])
    await app.directory.put_user(tenant, "ann", UserFields(email="ann@example.com"))

    clock.at = T0
    red = await _item_ids(
        app,
        await _route(
            app,
            tenant,
            EventSpec(
                type="invoice",
                recipients=Recipients(groups=("red",)),
                category="billing",
                channels=(Channel.EMAIL,),
            ),
        ),
    )
    gus = await _item_ids(
        app,
        await _route(app, tenant, EventSpec(type="t", recipients=Recipients(groups=("other",)))),
    )
    clock.at = T0 + timedelta(seconds=10)
    await app.realtime.mark_sent(tenant, [red["ann"], red["bob"], gus["gus"]])
    clock.at = T0 + timedelta(seconds=20)
    await _receipt(app, tenant, "bob", red["bob"], Status.RECEIVED)
    clock.at = T0 + timedelta(seconds=70)
    await _receipt(app, tenant, "ann", red["ann"], Status.READ)
    clock.at = T0 + timedelta(seconds=1000)
    await _receipt(app, tenant, "gus", gus["gus"], Status.READ)

    clock.at = T0 + timedelta(hours=1)
    blue = await _item_ids(
        app,
        await _route(
            app,
            tenant,
            EventSpec(type="news", recipients=Recipients(groups=("blue",)), category="news"),
        ),
    )
    clock.at = T0 + timedelta(hours=1, seconds=5)
    await app.realtime.mark_sent(tenant, [blue["dan"]])
    clock.at = T0 + timedelta(hours=1, seconds=30)
    await _receipt(app, tenant, "eve", blue["eve"], Status.READ, channel=None)
    clock.at = T0 + timedelta(hours=1, seconds=120)
    await _receipt(app, tenant, "dan", blue["dan"], Status.READ)

    clock.at = T0 + timedelta(days=1)
    town = await _item_ids(
        app,
        await _route(
            app, tenant, EventSpec(type="t", recipients=Recipients(users=("fay",)), group="town")
        ),
    )
    clock.at = T0 + timedelta(days=1, seconds=1)
    await app.realtime.mark_sent(tenant, [town["fay"]])

    # The other tenant: same keys, everything read, at the same times.
    await _group(app, other, "town", [], kind="community")
    await _group(app, other, "red", ["ann", "zed"], community="town")
    clock.at = T0
    theirs = await _item_ids(
        app,
        await _route(
            app,
            other,
            EventSpec(type="t", recipients=Recipients(groups=("red",)), category="billing"),
        ),
    )
    clock.at = T0 + timedelta(seconds=5)
    for user, item in theirs.items():
        await _receipt(app, other, user, item, Status.READ)

    clock.at = T0 + timedelta(days=2)
    return World(tenant, other, {**red, **gus, **blue, **town})


def _counts(report: StatisticsReport) -> dict[str, int]:
    return {str(s): n for s, n in report.statistics.recipients.by_status.items()}


def _channel(report: StatisticsReport, channel: str) -> dict[str, int]:
    return {str(s): n for s, n in report.statistics.channels[channel].by_status.items()}


async def test_counts_rates_and_median_cover_every_item_of_the_tenant(
    clarion: bootstrap.Clarion, clock: ManualClock
) -> None:
    world = await _world(clarion, clock)
    report = await clarion.statistics.summarise(world.tenant)
    stats = report.statistics
    assert _counts(report) == {**ZERO, "pending": 1, "sent": 1, "received": 1, "read": 4}
    assert stats.recipients.total == 7
    assert sorted(stats.channels) == ["email", "websocket"]
    assert _channel(report, "websocket") == {
        **ZERO,
        "pending": 2,
        "sent": 1,
        "received": 1,
        "read": 3,
    }
    assert _channel(report, "email") == {**ZERO, "pending": 1}
    # Reached: sent 1 + received 1 + read 4 = 6.
    assert stats.receive_rate == pytest.approx(5 / 6)
    assert stats.read_rate == pytest.approx(4 / 6)
    # Read after 30, 70, 120 and 1000 seconds: the mean of the middle two.
    assert stats.median_seconds_to_read == 95.0
    assert stats.series is None


async def test_the_default_range_is_the_thirty_days_before_now(
    clarion: bootstrap.Clarion, clock: ManualClock
) -> None:
    world = await _world(clarion, clock)
    report = await clarion.statistics.summarise(world.tenant)
    assert report.query.until == clock.at
    assert report.query.since == clock.at - timedelta(days=30)
    # 30 days after the first events (at 10:00 and 11:00) only fay's, a day later, is left.
    clock.at = T0 + timedelta(days=30, hours=12)
    later = await clarion.statistics.summarise(world.tenant)
    assert _counts(later) == {**ZERO, "sent": 1}
    clock.at = T0 + timedelta(days=40)
    empty = (await clarion.statistics.summarise(world.tenant)).statistics
    assert empty.recipients.total == 0
    assert empty.channels == {}
    assert (empty.receive_rate, empty.read_rate, empty.median_seconds_to_read) == (None,) * 3


async def test_a_user_filter_counts_only_that_users_items(
    clarion: bootstrap.Clarion, clock: ManualClock
) -> None:
    world = await _world(clarion, clock)
    ann = await clarion.statistics.summarise(world.tenant, user="ann")
    assert _counts(ann) == {**ZERO, "read": 1}
    assert _channel(ann, "websocket") == {**ZERO, "read": 1}
    assert _channel(ann, "email") == {**ZERO, "pending": 1}
    assert ann.statistics.median_seconds_to_read == 70.0
    assert (ann.statistics.receive_rate, ann.statistics.read_rate) == (1.0, 1.0)
    cid = (await clarion.statistics.summarise(world.tenant, user="cid")).statistics
    assert (cid.recipients.total, cid.receive_rate, cid.read_rate) == (1, None, None)
    assert cid.median_seconds_to_read is None


async def test_an_unknown_user_is_not_found(clarion: bootstrap.Clarion, clock: ManualClock) -> None:
    world = await _world(clarion, clock)
    with pytest.raises(errors.NotFound):
        await clarion.statistics.summarise(world.tenant, user="nobody")
    # gus exists in the first tenant only.
    with pytest.raises(errors.NotFound):
        await clarion.statistics.summarise(world.other_tenant, user="gus")


async def test_a_group_filter_counts_the_items_of_that_group_key(
    clarion: bootstrap.Clarion, clock: ManualClock
) -> None:
    world = await _world(clarion, clock)
    red = await clarion.statistics.summarise(world.tenant, group="red")
    assert _counts(red) == {**ZERO, "pending": 1, "received": 1, "read": 1}
    assert red.statistics.median_seconds_to_read == 70.0
    assert red.statistics.receive_rate == pytest.approx(2 / 2)
    assert red.statistics.read_rate == pytest.approx(1 / 2)
    nobody = await clarion.statistics.summarise(world.tenant, group="no-such-group")
    assert nobody.statistics.recipients.total == 0


async def test_a_community_filter_counts_its_own_key_and_every_group_in_it(
    clarion: bootstrap.Clarion, clock: ManualClock
) -> None:
    world = await _world(clarion, clock)
    town = await clarion.statistics.summarise(world.tenant, community="town")
    # red (ann, bob, cid), blue (dan, eve) and fay's event labelled `town`; not gus (other).
    assert _counts(town) == {**ZERO, "pending": 1, "sent": 1, "received": 1, "read": 3}
    assert _channel(town, "websocket") == {
        **ZERO,
        "pending": 2,
        "sent": 1,
        "received": 1,
        "read": 2,
    }
    assert town.statistics.median_seconds_to_read == 70.0  # 30, 70, 120
    assert town.statistics.receive_rate == pytest.approx(4 / 5)
    assert town.statistics.read_rate == pytest.approx(3 / 5)


async def test_filters_combine_with_and(clarion: bootstrap.Clarion, clock: ManualClock) -> None:
    world = await _world(clarion, clock)
    blue = await clarion.statistics.summarise(world.tenant, community="town", group="blue")
    assert _counts(blue) == {**ZERO, "read": 2}
    assert blue.statistics.median_seconds_to_read == 75.0  # 30 and 120
    none = await clarion.statistics.summarise(world.tenant, group="blue", category="billing")
    assert none.statistics.recipients.total == 0
    eve = await clarion.statistics.summarise(world.tenant, user="eve", category="news")
    assert _counts(eve) == {**ZERO, "read": 1}
    assert _channel(eve, "websocket") == {**ZERO, "pending": 1}


async def test_a_category_filter_counts_items_of_that_category(
    clarion: bootstrap.Clarion, clock: ManualClock
) -> None:
    world = await _world(clarion, clock)
    billing = await clarion.statistics.summarise(world.tenant, category="billing")
    assert _counts(billing) == {**ZERO, "pending": 1, "received": 1, "read": 1}
    assert _channel(billing, "email") == {**ZERO, "pending": 1}
    news = await clarion.statistics.summarise(world.tenant, category="news")
    assert _counts(news) == {**ZERO, "read": 2}
    assert "email" not in news.statistics.channels


async def test_since_is_inclusive_and_until_exclusive(
    clarion: bootstrap.Clarion, clock: ManualClock
) -> None:
    world = await _world(clarion, clock)
    ten = await clarion.statistics.summarise(world.tenant, since=T0, until=T0 + timedelta(hours=1))
    # ann, bob, cid and gus at exactly 10:00; dan and eve at exactly 11:00 are left out.
    assert _counts(ten) == {**ZERO, "pending": 1, "received": 1, "read": 2}
    after = await clarion.statistics.summarise(world.tenant, since=T0 + timedelta(microseconds=1))
    assert _counts(after) == {**ZERO, "sent": 1, "read": 2}
    paris = datetime.fromisoformat("2026-11-01T12:00:00+01:00")  # 11:00 UTC
    assert _counts(await clarion.statistics.summarise(world.tenant, since=paris)) == _counts(after)


async def test_daily_buckets_span_the_range_with_zeros_where_nothing_was_sent(
    clarion: bootstrap.Clarion, clock: ManualClock
) -> None:
    world = await _world(clarion, clock)
    report = await clarion.statistics.summarise(
        world.tenant, since=T0, until=T0 + timedelta(days=2), bucket="day"
    )
    series = report.statistics.series
    assert series is not None
    day = datetime(2026, 11, 1, tzinfo=UTC)
    assert [b.start for b in series] == [day, day + timedelta(days=1), day + timedelta(days=2)]
    assert [{str(s): n for s, n in b.counts.by_status.items()} for b in series] == [
        {**ZERO, "pending": 1, "received": 1, "read": 4},
        {**ZERO, "sent": 1},
        ZERO,
    ]
    assert sum(b.counts.total for b in series) == report.statistics.recipients.total


async def test_buckets_are_utc_whatever_the_database_time_zone(
    clarion: bootstrap.Clarion, clock: ManualClock
) -> None:
    world = await _world(clarion, clock)
    engine = clarion.store.engine
    if engine.dialect.name == "postgresql":
        # +13:45 in November: 10:00 and 11:00 UTC fall on two different local days.
        @sa.event.listens_for(engine.sync_engine, "connect")
        def _far_east(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("SET TimeZone = 'Pacific/Chatham'")
            cursor.close()
            dbapi_connection.commit()  # the driver opened a transaction, whose end would undo it

        await engine.dispose()
    day = datetime(2026, 11, 1, tzinfo=UTC)
    for filters in ({}, {"community": "town"}):
        report = await clarion.statistics.summarise(
            world.tenant, since=day, until=day + timedelta(days=2), bucket="day", **filters
        )
        series = report.statistics.series
        assert series is not None
        assert [(b.start, b.counts.total) for b in series] == [
            (day, 6 if not filters else 5),
            (day + timedelta(days=1), 1),
        ]


async def test_hourly_buckets_follow_the_filters(
    clarion: bootstrap.Clarion, clock: ManualClock
) -> None:
    world = await _world(clarion, clock)
    report = await clarion.statistics.summarise(
        world.tenant,
        community="town",
        since=T0 - timedelta(minutes=30),
        until=T0 + timedelta(hours=2),
        bucket="hour",
    )
    series = report.statistics.series
    assert series is not None
    assert [(b.start, b.counts.total) for b in series] == [
        (T0 - timedelta(hours=1), 0),
        (T0, 3),  # ann, bob, cid; gus is outside the community
        (T0 + timedelta(hours=1), 2),  # dan, eve
    ]
    assert series[1].counts.by_status[Status.READ] == 1
    assert series[2].counts.by_status[Status.READ] == 2


async def test_failed_expired_and_suppressed_items_are_counted_but_never_reached(
    clarion: bootstrap.Clarion, clock: ManualClock
) -> None:
    tenant = (await clarion.tenancy.create_tenant("t")).tenant_id
    items = await _item_ids(
        clarion,
        await _route(
            clarion, tenant, EventSpec(type="t", recipients=Recipients(users=("a", "b", "c", "d")))
        ),
    )
    # No transport or sweep produces these yet: set them as those would.
    async with clarion.store.engine.begin() as conn:
        for user, status in (("a", "failed"), ("b", "expired"), ("c", "suppressed")):
            await conn.execute(
                tables.inbox_items.update()
                .where(tables.inbox_items.c.id == items[user])
                .values(status=status)
            )
    clock.at = T0 + timedelta(seconds=2)
    await clarion.realtime.mark_sent(tenant, [items["d"]])
    report = await clarion.statistics.summarise(tenant)
    assert _counts(report) == {**ZERO, "failed": 1, "expired": 1, "suppressed": 1, "sent": 1}
    assert (report.statistics.receive_rate, report.statistics.read_rate) == (0.0, 0.0)


async def test_another_tenants_items_are_never_counted(
    clarion: bootstrap.Clarion, clock: ManualClock
) -> None:
    world = await _world(clarion, clock)
    theirs = await clarion.statistics.summarise(world.other_tenant)
    assert _counts(theirs) == {**ZERO, "read": 2}
    assert theirs.statistics.median_seconds_to_read == 5.0
    for filters in ({"community": "town"}, {"group": "red"}, {"category": "billing"}):
        assert _counts(await clarion.statistics.summarise(world.other_tenant, **filters)) == {
            **ZERO,
            "read": 2,
        }
    ann = await clarion.statistics.summarise(world.other_tenant, user="ann")
    assert _counts(ann) == {**ZERO, "read": 1}
    assert ann.statistics.median_seconds_to_read == 5.0
    fresh = (await clarion.tenancy.create_tenant("v")).tenant_id
    assert (await clarion.statistics.summarise(fresh)).statistics.recipients.total == 0


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({"since": T0, "until": T0}, "before"),
        ({"since": T0 + timedelta(days=1), "until": T0}, "before"),
        ({"since": T0 - timedelta(days=401), "until": T0}, "400 days"),
        ({"since": T0 - timedelta(days=32), "until": T0, "bucket": "hour"}, "31 days"),
        ({"since": datetime(2026, 11, 1)}, "time zone"),  # naive
        ({"until": datetime(2026, 11, 1)}, "time zone"),  # naive
        ({"since": datetime(1969, 12, 31, tzinfo=UTC)}, "between 1970 and 9998"),
        ({"bucket": "week"}, "bucket"),
        ({"group": " padded"}, "group"),
        ({"user": ""}, "user"),
    ],
)
async def test_invalid_requests_are_refused(
    clarion: bootstrap.Clarion, arguments: dict[str, object], problem: str
) -> None:
    tenant = (await clarion.tenancy.create_tenant("t")).tenant_id
    with pytest.raises(errors.InvalidRequest, match=problem):
        await clarion.statistics.summarise(tenant, **arguments)


async def test_the_longest_ranges_are_accepted(clarion: bootstrap.Clarion) -> None:
    tenant = (await clarion.tenancy.create_tenant("t")).tenant_id
    year = await clarion.statistics.summarise(
        tenant, since=T0 - timedelta(days=400), until=T0, bucket="day"
    )
    assert year.statistics.series is not None
    assert len(year.statistics.series) == 401  # the range starts at 10:00, inside a day
    month = await clarion.statistics.summarise(
        tenant, since=T0 - timedelta(days=31), until=T0, bucket="hour"
    )
    assert month.statistics.series is not None
    assert len(month.statistics.series) == 31 * 24
