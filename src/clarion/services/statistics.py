"""Statistics for producers: where the notifications of a user, group, community or category
stand, how many were received and read, and how fast."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from clarion.domain import errors, identifiers
from clarion.domain.notifications import StatusCounts
from clarion.domain.periods import BUCKETS, bucket_starts
from clarion.domain.records import BucketCounts
from clarion.services.ports import Clock, StatisticsQuery, StatisticsReport, StatisticsStore

DEFAULT_WINDOW = timedelta(days=30)  # a month: what a producer's dashboard shows first
MAX_WINDOW = timedelta(days=400)  # a year and a bit: bounds the rows one request may scan
MAX_HOURLY_WINDOW = timedelta(days=31)  # at most 744 hourly buckets in one answer
# Nothing was sent before 1970 or will be after 9998; beyond them, date arithmetic overflows.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)


class ProducerStatistics:
    """Validates a statistics request, fills in its defaults, and answers it from the store."""

    def __init__(self, store: StatisticsStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def summarise(
        self,
        tenant_id: str,
        *,
        user: str | None = None,
        group: str | None = None,
        community: str | None = None,
        category: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        bucket: str | None = None,
    ) -> StatisticsReport:
        """Statistics over the tenant's inbox items created in ``[since, until)`` that match
        every filter given. `until` defaults to now, `since` to 30 days before `until`.

        Raises:
            errors.InvalidRequest: a bad key or bucket, a naive, inverted or out-of-bounds time
                range, a range over 400 days, or hourly buckets over more than 31 days.
            errors.NotFound: `user` names no user of this tenant.
        """
        for name, key in (
            ("user", user),
            ("group", group),
            ("community", community),
            ("category", category),
        ):
            if key is not None and not identifiers.is_valid_key(key):
                raise errors.InvalidRequest(f"'{name}' is not a valid key")
        if bucket is not None and bucket not in BUCKETS:
            raise errors.InvalidRequest("'bucket' is 'hour' or 'day'")
        for name, value in (("since", since), ("until", until)):
            if value is None:
                continue
            if value.utcoffset() is None:
                raise errors.InvalidRequest(f"'{name}' needs a time zone, e.g. 'Z' or '+02:00'")
            if not EARLIEST <= value < LATEST:
                raise errors.InvalidRequest(f"'{name}' must lie between 1970 and 9998")
        end = (until or self._clock.now()).astimezone(UTC)
        start = end - DEFAULT_WINDOW if since is None else since.astimezone(UTC)
        if start >= end:
            raise errors.InvalidRequest("'since' must be before 'until'")
        if end - start > MAX_WINDOW:
            raise errors.InvalidRequest(f"the range may span at most {MAX_WINDOW.days} days")
        if bucket == "hour" and end - start > MAX_HOURLY_WINDOW:
            raise errors.InvalidRequest(
                f"hourly buckets cover at most {MAX_HOURLY_WINDOW.days} days; use bucket=day"
            )
        query = StatisticsQuery(
            tenant_id=tenant_id,
            since=start,
            until=end,
            user=user,
            group=group,
            community=community,
            category=category,
            bucket=bucket,
        )
        found = await self._store.statistics(query)
        if found is None:
            raise errors.NotFound("no such user")
        median = found.median_seconds_to_read
        series = None
        if bucket is not None:
            counted = {b.start: b.counts for b in found.series or ()}
            empty = StatusCounts.of({})
            series = tuple(
                BucketCounts(start=s, counts=counted.get(s, empty))
                for s in bucket_starts(start, end, bucket)
            )
        return StatisticsReport(
            query=query,
            statistics=dataclasses.replace(
                found,
                # Milliseconds: SQLite's julianday arithmetic is exact to well under one.
                median_seconds_to_read=None if median is None else round(median, 3),
                series=series,
            ),
        )
