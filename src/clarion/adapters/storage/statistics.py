"""Producer statistics as SQL aggregates, on SQLite and PostgreSQL.

Nothing is counted in Python: every figure comes out of an aggregate query, and Python only
reshapes the few rows those return (per status, per channel and status, per bucket and status).
All the queries of one call read one snapshot.

1. The user filter is resolved to the internal id (None: no such user), a community to its own
   key and the keys of its groups (``group_key = ANY(array)`` on PostgreSQL, ``IN`` on SQLite).
2. Counts per status, and per bucket and status, come from one statement, in one of two shapes:

   - **probes** (PostgreSQL, filtered by group or community and not by user): a grid of
     (bucket, status) pairs, each with a correlated ``count(*)`` over its own range of the
     index ``(tenant_id, group_key, status, created_at)``. Every item is visited once, in an
     index-only scan of a deduplicated index; nothing is hashed or sorted per row. Without
     ``bucket`` the grid has one bucket, ``[since, until)``. Each probe descends the B-tree
     once per group key, so a grid that would take more than `_PROBE_DESCENTS` descents (hourly
     buckets over a community of many groups) is counted the other way.
   - **group by** (SQLite; PostgreSQL for other filters, whose rows no index orders by
     status): ``GROUP BY status``, or ``GROUP BY bucket, status`` where the bucket is
     ``date_trunc(unit, created_at)`` on PostgreSQL (in a transaction whose time zone is UTC)
     and ``strftime`` on SQLite (which stores naive UTC).

   With buckets, the totals are summed from the per-bucket counts in the same statement
   (``WITH ... UNION ALL ... GROUP BY status``), so the items are read once.
3. Deliveries per channel and status: the same two shapes over ``(tenant_id, group_key,
   channel, status, created_at)``, with the filters applied to the deliveries' own copies of
   tenant, user, group key, category and creation time.
4. The median time to read, over the read items: on PostgreSQL ``percentile_cont(0.5) WITHIN
   GROUP (ORDER BY read_at - created_at in seconds)``; SQLite has no percentile function, so
   the durations, ``(julianday(read_at) - julianday(created_at)) * 86400``, are numbered in
   order with ``row_number()`` and the middle one (odd count) or the mean of the middle two
   (even count) is taken, which is what ``percentile_cont(0.5)`` gives. With a group or
   community filter, PostgreSQL reads the durations from the partial index of read items.

On PostgreSQL the median (a sort nothing can share) runs at the same time as the counts, on a
second connection that imports the first one's snapshot (``pg_export_snapshot``, ``SET
TRANSACTION SNAPSHOT``): one consistent answer for about the time of the slower half. At most
pool size / 2 calls hold two connections at once, so that calls holding one and waiting for
their second cannot take the whole pool. SQLite answers on one connection, in turn.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from clarion.adapters.storage import engines
from clarion.adapters.storage.tables import (
    Key,
    UtcDateTime,
    deliveries,
    groups,
    inbox_items,
    users,
)
from clarion.domain.channels import Channel
from clarion.domain.notifications import StatusCounts
from clarion.domain.periods import BUCKETS, bucket_starts
from clarion.domain.records import BucketCounts, Statistics, StatisticsQuery
from clarion.domain.statuses import Status

_SQLITE_BUCKETS = {"hour": "%Y-%m-%d %H:00:00", "day": "%Y-%m-%d 00:00:00"}
_SECONDS_PER_DAY = 86_400.0
# The sort behind the median keeps 32 bytes per read item in memory: 64 MB sorts two million
# without spilling to disk; beyond that PostgreSQL spills, slower but still right.
_MEDIAN_WORK_MEM = "64MB"
# Probing costs a B-tree descent per (bucket, status, group key) on top of the rows it counts;
# measured on 1,000,000 items, 11,000 descents (daily buckets, 51 groups) took 123 ms against
# 220 ms for GROUP BY, and 257,000 (hourly) took 890 ms.
_PROBE_DESCENTS = 15_000
_SESSION = sa.text(  # SET LOCAL, all three, in one round trip
    "SELECT set_config('TimeZone', 'UTC', true), set_config('jit', 'off', true),"
    " set_config('plan_cache_mode', 'force_custom_plan', true)"
)
_SNAPSHOT_ID = re.compile(r"^[0-9A-F]+-[0-9A-F]+(-[0-9]+)?$")
# A literal, not a parameter: the planners match it against the partial index's predicate.
_READ: sa.ColumnElement[str] = sa.literal_column(f"'{Status.READ}'")
_Where = list[sa.ColumnElement[bool]]


@dataclass(frozen=True, slots=True)
class _Filters:
    """What selects the items and deliveries counted, without the time range."""

    items: _Where
    deliveries: _Where
    keys: int  # group keys the index is entered with: the community's, or 1


class SqlStatistics:
    """Statistics for producers, computed by the database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._dialect = engine.dialect.name
        size = getattr(engine.pool, "size", lambda: 2)()
        self._pairs = asyncio.Semaphore(max(1, size // 2))

    @asynccontextmanager
    async def _snapshot(self, imported: str | None = None) -> AsyncIterator[AsyncConnection]:
        options: dict[str, Any] = {engines.READONLY: True}
        if self._dialect == "postgresql":
            options.update(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        with engines.translated():  # an unreachable database is a 503, as for the store
            async with self._engine.connect() as raw:
                conn = await raw.execution_options(**options)
                async with conn.begin():
                    if imported is not None:
                        if not _SNAPSHOT_ID.match(imported):
                            raise ValueError(f"unexpected snapshot id {imported!r}")
                        await conn.execute(sa.text(f"SET TRANSACTION SNAPSHOT '{imported}'"))
                    if self._dialect == "postgresql":
                        # UTC: buckets are UTC hours and days, and date_trunc(unit, ts) in the
                        # session's zone is cheaper than naming the zone on every row. No JIT:
                        # probes gain nothing from compiled expressions, and a plan over a
                        # million rows passes jit_above_cost, compiling for ~10 ms a statement.
                        # Custom plans: the driver prepares statements, and after a few runs
                        # PostgreSQL may switch to a generic plan, blind to the group keys and
                        # the range; one took 3.5 s instead of 0.45 s. Planning anew costs
                        # about a millisecond.
                        await conn.execute(_SESSION)
                    yield conn

    async def statistics(self, query: StatisticsQuery) -> Statistics | None:
        if self._dialect != "postgresql":
            async with self._snapshot() as conn:
                found = await self._resolve(conn, query)
                if found is None:
                    return None
                recipients, series = await self._items(conn, query, found)
                channels = await self._deliveries(conn, query, found)
                median = await self._median(conn, [*found.items, *_within(inbox_items, query)])
            return Statistics(recipients, channels, median, series)
        async with self._pairs, self._snapshot() as conn:
            found = await self._resolve(conn, query)
            if found is None:
                return None
            snapshot = str(await conn.scalar(sa.text("SELECT pg_export_snapshot()")))
            try:
                async with asyncio.TaskGroup() as group:
                    reading = group.create_task(
                        self._median_elsewhere(
                            snapshot, [*found.items, *_within(inbox_items, query)]
                        )
                    )
                    recipients, series = await self._items(conn, query, found)
                    channels = await self._deliveries(conn, query, found)
            except BaseExceptionGroup as failed:
                # Raise the failure itself, so that an unreachable database is translated
                # (503) like anywhere else instead of leaving as a group (500).
                raise _first(failed) from None
        return Statistics(recipients, channels, reading.result(), series)

    async def _resolve(self, conn: AsyncConnection, query: StatisticsQuery) -> _Filters | None:
        """The filters on items and on deliveries, without the time range; None when the
        user is unknown."""
        user_id = None
        if query.user is not None:
            user_id = await conn.scalar(
                sa.select(users.c.id).where(
                    users.c.tenant_id == query.tenant_id, users.c.external_id == query.user
                )
            )
            if user_id is None:
                return None
        keys: list[str] | sa.Select[Any] | None = None
        if query.community is not None:
            community_id = (
                sa.select(groups.c.id)
                .where(groups.c.tenant_id == query.tenant_id, groups.c.key == query.community)
                .scalar_subquery()
            )
            members = sa.select(groups.c.key).where(
                groups.c.tenant_id == query.tenant_id, groups.c.community_id == community_id
            )
            # The community's own key (events addressed to it carry it) and its groups' keys:
            # a list on PostgreSQL, passed as one array; a subquery on SQLite, which takes no
            # arrays and at most 32,766 parameters.
            keys = members
            if self._dialect == "postgresql":
                keys = [query.community, *await conn.scalars(members)]
        return _Filters(
            items=self._filter(inbox_items, query, user_id, keys),
            deliveries=self._filter(deliveries, query, user_id, keys),
            keys=len(keys) if isinstance(keys, list) and query.group is None else 1,
        )

    def _filter(
        self,
        table: sa.Table,
        query: StatisticsQuery,
        user_id: int | None,
        keys: list[str] | sa.Select[Any] | None,
    ) -> _Where:
        where = [table.c.tenant_id == query.tenant_id]
        if user_id is not None:
            where.append(table.c.user_id == user_id)
        if query.group is not None:
            where.append(table.c.group_key == query.group)
        if isinstance(keys, list):
            # One array parameter however many groups; the index is entered once per key.
            array = sa.bindparam(None, keys, type_=postgresql.ARRAY(Key))
            where.append(table.c.group_key == sa.any_(array))
        elif keys is not None:
            where.append(sa.or_(table.c.group_key == query.community, table.c.group_key.in_(keys)))
        if query.category is not None:
            where.append(table.c.category == query.category)
        return where

    def _probing(self, query: StatisticsQuery, keys: int, cells: int) -> bool:
        """Whether to count `cells` (bucket, status) or (channel, status) pairs over `keys`
        group keys by index probes (see the module's docstring)."""
        return (
            self._dialect == "postgresql"
            and (query.group is not None or query.community is not None)
            and query.user is None
            and keys * cells <= _PROBE_DESCENTS
        )

    # -----------------------------------------------------------------------------------------
    # counts

    async def _items(
        self, conn: AsyncConnection, query: StatisticsQuery, filters: _Filters
    ) -> tuple[StatusCounts, tuple[BucketCounts, ...] | None]:
        """Counts per status, and per bucket and status, from one pass over the items."""
        items, where = inbox_items, filters.items
        cells = len(_buckets(query)[0]) * len(Status)
        if self._probing(query, filters.keys, cells):
            per_bucket = self._probes(query, where)
        elif query.bucket is None:
            per_bucket = (
                sa.select(sa.null().label("start"), items.c.status, sa.func.count().label("n"))
                .where(*where, *_within(items, query))
                .group_by(items.c.status)
            )
        else:
            start = self._bucket(query.bucket)
            per_bucket = (
                sa.select(start.label("start"), items.c.status, sa.func.count().label("n"))
                .where(*where, *_within(items, query))
                .group_by(start, items.c.status)
            )
        if query.bucket is None:
            rows = await conn.execute(per_bucket)
            return StatusCounts.of({Status(r.status): int(r.n) for r in rows}), None
        counted = per_bucket.cte("per_bucket")
        # The totals are summed from the buckets in SQL, so the items are read once. A NULL
        # start marks them.
        rows = await conn.execute(
            sa.union_all(
                sa.select(counted.c.start, counted.c.status, counted.c.n),
                sa.select(sa.null(), counted.c.status, sa.func.sum(counted.c.n)).group_by(
                    counted.c.status
                ),
            )
        )
        totals: dict[Status, int] = {}
        buckets: dict[datetime, dict[Status, int]] = {}
        for r in rows:
            counts = totals if r.start is None else buckets.setdefault(r.start, {})
            counts[Status(r.status)] = int(r.n)
        series = tuple(
            BucketCounts(start=s, counts=StatusCounts.of(buckets[s])) for s in sorted(buckets)
        )
        return StatusCounts.of(totals), series

    def _probes(self, query: StatisticsQuery, where: _Where) -> sa.Select[Any]:
        """(start, status, n) for every bucket and status, each n one index range count."""
        items = inbox_items
        starts, los, his = _buckets(query)
        buckets = (
            sa.func.unnest(_array(starts), _array(los), _array(his))
            .table_valued(
                sa.column("start", UtcDateTime),
                sa.column("lo", UtcDateTime),
                sa.column("hi", UtcDateTime),
            )
            .render_derived(name="b")
        )
        statuses = _unnest("status", [str(s) for s in Status])
        n = (
            sa.select(sa.func.count())
            .where(
                *where,
                items.c.status == statuses.c.status,
                items.c.created_at >= buckets.c.lo,
                items.c.created_at < buckets.c.hi,
            )
            .scalar_subquery()
        )
        return sa.select(buckets.c.start, statuses.c.status, n.label("n")).select_from(
            buckets.join(statuses, sa.true())
        )

    def _bucket(self, bucket: str) -> Any:
        created = inbox_items.c.created_at
        if self._dialect == "postgresql":
            start: Any = sa.func.date_trunc(sa.literal_column(f"'{bucket}'"), created)
        else:
            start = sa.func.strftime(sa.literal_column(f"'{_SQLITE_BUCKETS[bucket]}'"), created)
        return sa.type_coerce(start, UtcDateTime)

    async def _deliveries(
        self, conn: AsyncConnection, query: StatisticsQuery, filters: _Filters
    ) -> dict[str, StatusCounts]:
        dels, where = deliveries, filters.deliveries
        if self._probing(query, filters.keys, len(Channel) * len(Status)):
            channels = _unnest("channel", [str(c) for c in Channel])
            statuses = _unnest("status", [str(s) for s in Status])
            n = (
                sa.select(sa.func.count())
                .where(
                    *where,
                    *_within(dels, query),
                    dels.c.channel == channels.c.channel,
                    dels.c.status == statuses.c.status,
                )
                .scalar_subquery()
            )
            # Every (channel, status) pair comes back, zeros included; channels without any
            # delivery are dropped below. (A filter on n in SQL would count everything twice.)
            counted: sa.Select[Any] = sa.select(
                channels.c.channel, statuses.c.status, n.label("n")
            ).select_from(channels.join(statuses, sa.true()))
        else:
            counted = (
                sa.select(dels.c.channel, dels.c.status, sa.func.count().label("n"))
                .where(*where, *_within(dels, query))
                .group_by(dels.c.channel, dels.c.status)
            )
        by_channel: dict[str, dict[Status, int]] = {}
        for r in await conn.execute(counted):
            by_channel.setdefault(r.channel, {})[Status(r.status)] = int(r.n)
        return {c: StatusCounts.of(n) for c, n in sorted(by_channel.items()) if any(n.values())}

    # -----------------------------------------------------------------------------------------
    # the median time to read

    async def _median_elsewhere(self, snapshot: str, where: _Where) -> float | None:
        async with self._snapshot(imported=snapshot) as conn:
            await conn.execute(sa.text(f"SET LOCAL work_mem = '{_MEDIAN_WORK_MEM}'"))
            return await self._median(conn, where)

    async def _median(self, conn: AsyncConnection, where: _Where) -> float | None:
        """The median of ``read_at - created_at`` in seconds, over the items read."""
        items = inbox_items
        read = [*where, items.c.status == _READ, items.c.read_at.is_not(None)]
        if self._dialect == "postgresql":
            # date_part gives float8 (extract gives numeric): the cheaper sort key.
            epoch = sa.func.date_part("epoch", items.c.read_at - items.c.created_at)
            median = await conn.scalar(
                sa.select(sa.func.percentile_cont(0.5).within_group(epoch)).where(*read)
            )
        else:
            seconds = (
                sa.func.julianday(items.c.read_at) - sa.func.julianday(items.c.created_at)
            ) * _SECONDS_PER_DAY
            ranked = (
                sa.select(
                    seconds.label("seconds"),
                    sa.func.row_number().over(order_by=seconds).label("position"),
                    sa.func.count().over().label("n"),
                )
                .where(*read)
                .subquery()
            )
            # Positions (n + 1) / 2 and (n + 2) / 2 in integer division: both the middle row
            # when n is odd, the two middle rows when it is even.
            middle = [(ranked.c.n + 1) // 2, (ranked.c.n + 2) // 2]
            median = await conn.scalar(
                sa.select(sa.func.avg(ranked.c.seconds)).where(ranked.c.position.in_(middle))
            )
        return None if median is None else float(median)


def _buckets(
    query: StatisticsQuery,
) -> tuple[list[datetime], list[datetime], list[datetime]]:
    """Each bucket's start, and the range ``[lo, hi)`` it counts within ``[since, until)``;
    without `bucket`, one bucket for the whole range."""
    if query.bucket is None:
        return [query.since], [query.since], [query.until]
    step = BUCKETS[query.bucket]
    starts = bucket_starts(query.since, query.until, query.bucket)
    los = [max(s, query.since) for s in starts]
    his = [min(s + step, query.until) for s in starts]
    return starts, los, his


def _within(table: sa.Table, query: StatisticsQuery) -> _Where:
    return [table.c.created_at >= query.since, table.c.created_at < query.until]


def _array(values: Sequence[datetime]) -> Any:
    return sa.bindparam(None, list(values), type_=postgresql.ARRAY(sa.DateTime(timezone=True)))


def _unnest(name: str, values: list[str]) -> Any:
    """``unnest(:values) AS <name>s(<name>)``, a one-column table of `values`."""
    return (
        sa.func.unnest(sa.bindparam(None, values, type_=postgresql.ARRAY(sa.String)))
        .table_valued(name)
        .render_derived(name=f"{name}s")
    )


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first failure inside a task group's exception."""
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf
