"""What the storage modules share for writing many rows: `IN` lists in chunks, and the columns
a delivery is inserted with."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from clarion.adapters.storage.tables import deliveries, transitions
from clarion.domain.statuses import Subject

T = TypeVar("T")

CHUNK = 500
"""Ids per ``IN`` list: far under SQLite's limit on bound parameters, and PostgreSQL plans a
list this long as well as an array."""

DELIVERY_COLUMNS = [
    "tenant_id",
    "notification_id",
    "item_id",
    "user_id",
    "channel",
    "endpoint",
    "status",
    "category",
    "group_key",
    "attempts",
    "next_attempt_at",
    "fence",
    "created_at",
    "updated_at",
]
"""The columns of ``INSERT INTO deliveries ... SELECT`` (see `sql._delivery_rows`)."""

AUDIT_COLUMNS = ["tenant_id", "subject", "subject_id", "source", "target", "cause", "at"]
"""The columns of ``INSERT INTO transitions ... SELECT``: the audit entries of moves."""


def chunks(values: Sequence[T], size: int = CHUNK) -> Iterable[Sequence[T]]:
    """`values` in slices of at most `size`."""
    for start in range(0, len(values), size):
        yield values[start : start + size]


async def insert_deliveries(
    conn: AsyncConnection, insert: Callable[[sa.Table], Any], rows: sa.Select[Any]
) -> list[int]:
    """Insert the deliveries `rows` selects (`sql._delivery_rows`), skipping any that exists
    already; the ids of those created. `insert` is the dialect's ``insert`` (for
    ``ON CONFLICT``)."""
    created = await conn.execute(
        insert(deliveries)
        .from_select(DELIVERY_COLUMNS, rows)
        .on_conflict_do_nothing(
            index_elements=["notification_id", "user_id", "channel", "endpoint"]
        )
        .returning(deliveries.c.id)
    )
    return list(created.scalars().all())


async def audit_new_deliveries(
    conn: AsyncConnection, ids: Sequence[int], cause: str, now: datetime
) -> None:
    """One audit entry per delivery just created (no source status), with `cause`."""
    await conn.execute(
        transitions.insert().from_select(
            AUDIT_COLUMNS,
            sa.select(
                deliveries.c.tenant_id,
                sa.literal(str(Subject.DELIVERY)),
                deliveries.c.id,
                sa.null(),
                deliveries.c.status,
                sa.literal(cause),
                sa.literal(now, transitions.c.at.type),
            ).where(deliveries.c.id.in_(ids)),
        )
    )
