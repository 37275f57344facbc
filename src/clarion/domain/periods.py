"""Time buckets for statistics: whole hours or whole days, in UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

BUCKETS: dict[str, timedelta] = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
"""The bucket sizes statistics offer, by name."""


def bucket_start(at: datetime, bucket: str) -> datetime:
    """The start (UTC) of the hour or day that holds `at` (timezone-aware)."""
    at = at.astimezone(UTC)
    if bucket == "day":
        return datetime(at.year, at.month, at.day, tzinfo=UTC)
    return at.replace(minute=0, second=0, microsecond=0)


def bucket_starts(since: datetime, until: datetime, bucket: str) -> list[datetime]:
    """The start of every bucket that overlaps ``[since, until)``, in order.

    The first starts at or before `since`; a bucket is counted from `since` and up to `until`
    only, so the first and last may cover less than a whole hour or day.
    """
    step = BUCKETS[bucket]
    starts = []
    at = bucket_start(since, bucket)
    while at < until:
        starts.append(at)
        at += step
    return starts
