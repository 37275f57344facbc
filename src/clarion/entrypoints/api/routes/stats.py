"""Producers read statistics over their notifications: per status, per channel, over time."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel

from clarion.domain import errors
from clarion.entrypoints.api import schemas
from clarion.entrypoints.api.dependencies import App, Tenant

router = APIRouter(prefix="/v1", tags=["statistics"])

KeyParam = Annotated[str | None, Query(max_length=1000)]
TimeParam = Annotated[str | None, Query(max_length=64)]


class StatsFiltersOut(BaseModel):
    """The filters the statistics answer (all of them hold)."""

    user: str | None
    group: str | None
    community: str | None
    category: str | None


class StatsBucketOut(BaseModel):
    """The items created in one bucket, by status."""

    start: datetime
    total: int
    by_status: dict[str, int]


class StatsOut(BaseModel):
    """Where a producer's notifications stand."""

    since: datetime
    until: datetime
    bucket: Literal["hour", "day"] | None
    filters: StatsFiltersOut
    recipients: schemas.CountsOut
    channels: dict[str, schemas.CountsOut]
    receive_rate: float | None
    read_rate: float | None
    median_seconds_to_read: float | None
    series: list[StatsBucketOut] | None


def _instant(name: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise errors.InvalidRequest(
            f"'{name}' must be an ISO 8601 timestamp with a time zone, e.g. "
            "2026-11-21T00:00:00Z (in a URL, write '+' as %2B)"
        ) from None


@router.get("/stats", response_model=StatsOut)
async def get_stats(
    app: App,
    tenant: Tenant,
    user: KeyParam = None,
    group: KeyParam = None,
    community: KeyParam = None,
    category: KeyParam = None,
    since: TimeParam = None,
    until: TimeParam = None,
    bucket: Literal["hour", "day"] | None = None,
) -> StatsOut:
    """Counts per status over the inbox items (one per recipient) created in ``[since, until)``
    that match every filter given, counts per channel and status over their deliveries, the
    receive and read rates, the median time to read, and a series per hour or day."""
    report = await app.statistics.summarise(
        tenant,
        user=user,
        group=group,
        community=community,
        category=category,
        since=_instant("since", since),
        until=_instant("until", until),
        bucket=bucket,
    )
    query, stats = report.query, report.statistics
    return StatsOut(
        since=query.since,
        until=query.until,
        bucket=bucket,
        filters=StatsFiltersOut(
            user=query.user, group=query.group, community=query.community, category=query.category
        ),
        recipients=schemas.CountsOut.of(stats.recipients),
        channels={c: schemas.CountsOut.of(n) for c, n in stats.channels.items()},
        receive_rate=stats.receive_rate,
        read_rate=stats.read_rate,
        median_seconds_to_read=stats.median_seconds_to_read,
        series=None
        if stats.series is None
        else [
            StatsBucketOut(
                start=b.start,
                total=b.counts.total,
                by_status={str(s): n for s, n in b.counts.by_status.items()},
            )
            for b in stats.series
        ],
    )
