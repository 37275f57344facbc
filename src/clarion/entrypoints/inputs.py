"""What producers send, whichever way in they use: the HTTP API (`POST /v1/events`) and the bus
(`ingest` stream, docs/bus.md) validate an event with the same models, so they take and refuse
exactly the same things.

Inputs forbid unknown fields (no mass assignment: ids, statuses and timestamps are ours) and
take no coercions beyond pydantic's defaults for JSON.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

from clarion.domain import identifiers
from clarion.domain.channels import PUSH_ALIAS, Channel
from clarion.domain.notifications import MAX_TTL, EventSpec, Recipients


def _key(value: str) -> str:
    if not identifiers.is_valid_key(value):
        raise ValueError("must be 1-255 printable characters without surrounding blanks")
    return value


MAX_JSON_DEPTH = 32  # deeper than any real payload; bounds the work of every later walk


def _storable_text(value: str) -> str:
    # PostgreSQL text cannot hold NUL, and a lone surrogate cannot be encoded as UTF-8: both
    # would fail at write time, long after the 202, so they are refused here.
    if "\x00" in value:
        raise ValueError("text must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("text must be valid Unicode (no lone surrogates)") from exc
    return value


def _storable_json(value: Any, depth: int = 0) -> Any:
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"JSON nests deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("numbers must be finite (no NaN or Infinity)")
    if isinstance(value, str):
        _storable_text(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _storable_text(key)
            _storable_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _storable_json(item, depth + 1)
    return value


def _rfc3339(value: Any) -> Any:
    # Pydantic would also read a number as Unix time; the API documents RFC 3339 strings only.
    if not isinstance(value, str | datetime):
        raise ValueError("must be an RFC 3339 timestamp with a time zone")
    return value


Key = Annotated[str, AfterValidator(_key)]
Timestamp = Annotated[AwareDatetime, BeforeValidator(_rfc3339)]
"""An RFC 3339 date and time with its offset (``2026-11-21T09:00:00Z``)."""
Text = Annotated[str, AfterValidator(_storable_text)]
JsonData = Annotated[dict[str, Any], AfterValidator(_storable_json)]
MAX_KEYS = 30_000  # the request-level ceiling; the configured per-event limit is checked later


class Input(BaseModel):
    """Every request body: unknown fields are an error."""

    model_config = ConfigDict(extra="forbid")


class RecipientsIn(Input):
    """Who an event is for, by external key."""

    users: Annotated[list[Key], Field(max_length=MAX_KEYS)] = []
    groups: Annotated[list[Key], Field(max_length=MAX_KEYS)] = []
    communities: Annotated[list[Key], Field(max_length=MAX_KEYS)] = []


ChannelName = Literal["websocket", "apns", "fcm", "wns", "webpush", "email", "push"]
"""A channel an event may name: one of `Channel`, or `push` for every configured push provider
(one flat list, so that a wrong name is reported at the item, not per union member)."""


class PushIn(Input):
    """Push-only options of an event, passed to every push provider that has them."""

    sound: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    collapse_id: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    """APNs ``apns-collapse-id`` (64 bytes at most), FCM ``android.notification.tag``."""
    thread_id: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    link: Annotated[str, Field(min_length=1, max_length=2000)] | None = None
    """The deep link the app opens on a tap."""
    badge: bool | None = None
    """True: set the app's badge to the recipient's unread count."""


class EventIn(Input):
    """An event from a producer."""

    type: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:/\-]+$")]
    recipients: RecipientsIn
    title: Annotated[Text, Field(max_length=1000)] | None = None
    body: Annotated[Text, Field(max_length=10_000)] | None = None
    data: JsonData = {}
    category: Key | None = None
    group: Key | None = None
    channels: (
        Annotated[list[ChannelName], Field(min_length=1, max_length=len(Channel) + 1)] | None
    ) = None
    """Where to push besides the in-app inbox; "push" stands for every configured push provider."""
    send_at: Timestamp | None = None
    """Not before then (at most `notifications.MAX_SCHEDULE_AHEAD` ahead); past or now: at once."""
    expires_at: Timestamp | None = None
    """What is not delivered by then is dropped as `expired`."""
    ttl: Annotated[int, Field(gt=0, le=int(MAX_TTL.total_seconds()))] | None = None
    """Seconds from the time it goes out until it expires; instead of `expires_at`."""
    priority: Literal["normal", "critical"] | None = None
    """Critical goes through the recipients' quiet hours; None: the matching rule's."""
    push: PushIn | None = None

    @model_validator(mode="after")
    def _one_expiry(self) -> Self:
        if self.expires_at is not None and self.ttl is not None:
            raise ValueError("give expires_at or ttl, not both")
        return self


class IngestMessage(Input):
    """An event a producer published onto the bus's `ingest` stream (docs/bus.md)."""

    version: Literal[1] = 1
    tenant_id: Annotated[str, Field(min_length=1, max_length=255)]
    idempotency_key: Key
    event: EventIn


def event_spec(body: EventIn, push_channels: Callable[[], tuple[Channel, ...]]) -> EventSpec:
    """The event as the domain knows it: keys de-duplicated in order, and the `push` alias
    expanded to `push_channels()` (which raises `UnknownChannel` when there is none)."""
    channels: tuple[Channel, ...] | None = None
    if body.channels is not None:
        found: list[Channel] = []
        for name in body.channels:
            if name == PUSH_ALIAS:
                found.extend(push_channels())
            else:
                found.append(Channel(name))
        channels = tuple(dict.fromkeys(found))
    return EventSpec(
        type=body.type,
        recipients=Recipients(
            users=identifiers.unique_in_order(body.recipients.users),
            groups=identifiers.unique_in_order(body.recipients.groups),
            communities=identifiers.unique_in_order(body.recipients.communities),
        ),
        title=body.title,
        body=body.body,
        data=body.data,
        category=body.category,
        group=body.group,
        channels=channels,
        send_at=body.send_at,
        expires_at=body.expires_at,
        ttl=body.ttl,
        priority=body.priority,
        push={} if body.push is None else body.push.model_dump(exclude_none=True),
    )
