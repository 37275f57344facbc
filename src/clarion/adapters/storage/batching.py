"""What the storage modules share for writing many rows: `IN` lists in chunks, and the columns
a delivery is inserted with."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar

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


def chunks(values: Sequence[T], size: int = CHUNK) -> Iterable[Sequence[T]]:
    """`values` in slices of at most `size`."""
    for start in range(0, len(values), size):
        yield values[start : start + size]
