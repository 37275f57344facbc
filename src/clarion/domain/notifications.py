"""Events as producers send them, and what routing makes of them.

An *event* is what a producer emitted ("order placed"). Routing turns it into one *notification*
(the message), one *inbox item* per recipient (their copy, whose status is the recipient's status)
and one *delivery* per recipient and channel endpoint (each attempt to reach them).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from clarion.domain import errors
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
    send_at: datetime | None = None
    """Not to go out before this (aware); None, now or past: at once."""
    expires_at: datetime | None = None
    """What is not delivered by then is dropped as `expired` (aware)."""
    ttl: int | None = None
    """Seconds after it goes out until it expires: `expires_at` given relatively."""
    priority: str | None = None
    """``normal`` or ``critical`` (critical goes through quiet hours); None: the rule's."""
    push: JsonObject = field(default_factory=dict)
    """Push-only options: ``sound``, ``collapse_id``, ``thread_id``, ``link`` (strings)."""

    def to_json(self) -> JsonObject:
        """The event as stored and as replayed to the router. Scheduling fields appear only
        when set, so events stored before they existed keep their fingerprints."""
        raw = self._core_json()
        if self.send_at is not None:
            raw["send_at"] = self.send_at.isoformat()
        if self.expires_at is not None:
            raw["expires_at"] = self.expires_at.isoformat()
        if self.ttl is not None:
            raw["ttl"] = self.ttl
        if self.priority is not None:
            raw["priority"] = self.priority
        if self.push:
            raw["push"] = self.push
        return raw

    def _core_json(self) -> JsonObject:
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
            send_at=_instant(raw.get("send_at")),
            expires_at=_instant(raw.get("expires_at")),
            ttl=raw.get("ttl"),
            priority=raw.get("priority"),
            push=raw.get("push") or {},
        )

    def fingerprint(self) -> str:
        """A digest of the request's meaning, for Idempotency-Key comparison.

        Canonical JSON, so two bodies that differ only in key order or spacing count as the same.
        """
        canonical = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def _instant(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


MAX_SCHEDULE_AHEAD = timedelta(days=366)
"""How far ahead `send_at` may be: a yearly reminder fits, while a typo in the year (2062 for
2026) is refused at once instead of sitting in the outbox for decades."""

MAX_TTL = timedelta(days=366)
"""The longest life after going out (`ttl`, or `expires_at` past the send time): as long as a
schedule may reach, so no notification needs to be kept deliverable for longer."""


@dataclass(frozen=True, slots=True)
class Schedule:
    """When an accepted event goes out and when what is left of it expires (both aware UTC)."""

    send_at: datetime | None
    """None when it goes out at once."""
    expires_at: datetime | None


def schedule_of(spec: EventSpec, now: datetime) -> Schedule:
    """Resolve the event's `send_at`, `expires_at` and `ttl` against `now` (acceptance).

    A `send_at` at or before `now` means at once. `ttl` runs from the time the event goes out.

    Raises:
        errors.InvalidRequest: `send_at` beyond `MAX_SCHEDULE_AHEAD`; both `expires_at` and
            `ttl`; an expiry at or before the send time, or more than `MAX_TTL` after it.
    """
    send_at = None if spec.send_at is None else _utc(spec.send_at)
    if send_at is not None and send_at - now > MAX_SCHEDULE_AHEAD:
        raise errors.InvalidRequest(f"send_at may be at most {MAX_SCHEDULE_AHEAD.days} days ahead")
    scheduled = send_at is not None and send_at > now
    goes_out = send_at if send_at is not None and scheduled else now
    if spec.expires_at is not None and spec.ttl is not None:
        raise errors.InvalidRequest("give expires_at or ttl, not both")
    expires_at = None if spec.expires_at is None else _utc(spec.expires_at)
    if spec.ttl is not None:
        if not 0 < spec.ttl <= MAX_TTL.total_seconds():
            raise errors.InvalidRequest(f"ttl must be 1 to {int(MAX_TTL.total_seconds())} seconds")
        expires_at = goes_out + timedelta(seconds=spec.ttl)
    if expires_at is not None:
        if expires_at <= goes_out:
            raise errors.InvalidRequest("expires_at must be after the time the event goes out")
        if expires_at - goes_out > MAX_TTL:
            raise errors.InvalidRequest(
                f"expires_at may be at most {MAX_TTL.days} days after the event goes out"
            )
    return Schedule(send_at=goes_out if scheduled else None, expires_at=expires_at)


def _utc(value: datetime) -> datetime:
    if value.utcoffset() is None:
        raise errors.InvalidRequest("timestamps need a time zone")
    return value.astimezone(UTC)


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
    expires_at: datetime | None = None
    """When the notification expires, if it does (transports pass it on as the push's TTL)."""
    push: JsonObject = field(default_factory=dict)
    """The event's push-only options (``sound``, ``collapse_id``, ``thread_id``, ``link``)."""

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
