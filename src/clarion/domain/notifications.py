"""Events as producers send them, and what routing makes of them.

An *event* is what a producer emitted ("order placed"). Routing turns it into one *notification*
(the message), one *inbox item* per recipient (their copy, whose status is the recipient's status)
and one *delivery* per recipient and channel endpoint (each attempt to reach them).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from clarion.domain.channels import Channel
from clarion.domain.statuses import Status

JsonObject = dict[str, Any]

EVENTS_STREAM = "events"
"""The stream accepted events travel on, from the outbox to the routers: ``{"event_id": ...}``."""

INGEST_STREAM = "ingest"
"""Events producers publish straight onto the bus instead of calling the API (docs/bus.md)."""


@dataclass(frozen=True, slots=True)
class Recipients:
    """Who an event is for, by external key. Groups and communities are expanded by routing."""

    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    communities: tuple[str, ...] = ()

    def is_empty(self) -> bool:
        """Whether nobody is named at all."""
        return not (self.users or self.groups or self.communities)

    def count(self) -> int:
        """How many keys are named (before expansion)."""
        return len(self.users) + len(self.groups) + len(self.communities)


@dataclass(frozen=True, slots=True)
class EventSpec:
    """An event as accepted from a producer, before routing."""

    type: str
    recipients: Recipients
    title: str | None = None
    body: str | None = None
    data: JsonObject = field(default_factory=dict)
    category: str | None = None
    group: str | None = None
    channels: tuple[Channel, ...] | None = None

    def to_json(self) -> JsonObject:
        """The event as stored and as replayed to the router."""
        return {
            "type": self.type,
            "recipients": {
                "users": list(self.recipients.users),
                "groups": list(self.recipients.groups),
                "communities": list(self.recipients.communities),
            },
            "title": self.title,
            "body": self.body,
            "data": self.data,
            "category": self.category,
            "group": self.group,
            "channels": None if self.channels is None else [str(c) for c in self.channels],
        }

    @classmethod
    def from_json(cls, raw: JsonObject) -> EventSpec:
        """The inverse of `to_json`."""
        recipients = raw["recipients"]
        channels = raw.get("channels")
        return cls(
            type=raw["type"],
            recipients=Recipients(
                users=tuple(recipients.get("users", ())),
                groups=tuple(recipients.get("groups", ())),
                communities=tuple(recipients.get("communities", ())),
            ),
            title=raw.get("title"),
            body=raw.get("body"),
            data=raw.get("data") or {},
            category=raw.get("category"),
            group=raw.get("group"),
            channels=None if channels is None else tuple(Channel(c) for c in channels),
        )

    def fingerprint(self) -> str:
        """A digest of the request's meaning, for Idempotency-Key comparison.

        Canonical JSON, so two bodies that differ only in key order or spacing count as the same.
        """
        canonical = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class AcceptedEvent:
    """The answer to an accepted event; replayed as-is for a repeated Idempotency-Key."""

    id: str
    created: bool


@dataclass(frozen=True, slots=True)
class InboxItem:
    """A recipient's copy of a notification, as a device sees it."""

    id: int
    notification_id: str
    event_id: str
    user: str
    status: Status
    type: str
    title: str | None
    body: str | None
    data: JsonObject
    category: str | None
    group: str | None
    created_at: datetime

    @property
    def cursor(self) -> str:
        """An opaque position in the user's inbox: later items sort after it."""
        return str(self.id)


@dataclass(frozen=True, slots=True)
class StatusCounts:
    """How many recipients (or deliveries) stand in each status."""

    total: int
    by_status: dict[Status, int]

    @classmethod
    def of(cls, counts: dict[Status, int]) -> StatusCounts:
        """Counts with every status present, zeros included, so clients need no defaults."""
        full = {s: counts.get(s, 0) for s in Status}
        return cls(total=sum(full.values()), by_status=full)


def parse_cursor(cursor: str | None) -> int:
    """The item id behind a cursor; an absent or unreadable cursor means the very start."""
    if not cursor:
        return 0
    try:
        value = int(cursor)
    except ValueError:
        return 0
    return max(value, 0)
