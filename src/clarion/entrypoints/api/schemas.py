"""What the API takes and gives, as pydantic models.

Inputs forbid unknown fields (no mass assignment: ids, statuses and timestamps are ours) and
take no coercions beyond pydantic's defaults for JSON. Outputs are allowlists of fields.
"""

from __future__ import annotations

import zoneinfo
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field

from clarion.domain.notifications import InboxItem, StatusCounts
from clarion.domain.quiet_hours import QuietHours
from clarion.domain.statuses import Status, Transition

# The inputs producers send are shared with the bus's ingest consumer (entrypoints/inputs.py).
from clarion.entrypoints.inputs import (
    ChannelName as ChannelName,
    EventIn as EventIn,
    Input as Input,
    JsonData as JsonData,
    Key as Key,
    RecipientsIn as RecipientsIn,
    Text as Text,
)


def timezone_name(value: str) -> str:
    """An IANA time zone name, checked (a pydantic validator)."""
    return _timezone(value)


def _timezone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError("must be an IANA time zone such as 'Europe/Paris'") from exc
    return value


class EventAccepted(BaseModel):
    """The answer to an accepted event."""

    id: str
    status: Literal["accepted"] = "accepted"


MAX_EVENTS_PER_BATCH = 100
"""Events one POST /v1/events/batch may carry: enough to cut a producer's requests a
hundredfold, small enough that one transaction stays short."""


class BatchEventIn(EventIn):
    """An event in a batch, with its own idempotency key (what the header is for one event)."""

    idempotency_key: Key | None = None


class EventBatchIn(Input):
    """Events to accept together: all of them, or none."""

    events: Annotated[list[BatchEventIn], Field(min_length=1, max_length=MAX_EVENTS_PER_BATCH)]


class BatchAccepted(BaseModel):
    """One accepted event of a batch; `replayed` when its idempotency key was seen before."""

    id: str
    status: Literal["accepted"] = "accepted"
    replayed: bool = False


class EventBatchAccepted(BaseModel):
    """The answer to an accepted batch: one entry per event, in order."""

    events: list[BatchAccepted]


class CountsOut(BaseModel):
    """How many stand in each status."""

    total: int
    by_status: dict[str, int]

    @classmethod
    def of(cls, counts: StatusCounts) -> CountsOut:
        """From the domain's counts."""
        return cls(total=counts.total, by_status={str(s): n for s, n in counts.by_status.items()})


class NotificationOut(BaseModel):
    """The message an event became."""

    id: str
    title: str | None
    body: str | None
    data: dict[str, Any]
    category: str | None
    group: str | None
    rule: str | None = None
    """The key of the tenant's routing rule that decided it; null when none matched."""
    priority: str | None = None
    ttl: int | None = None
    template: str | None = None


class TopicSendOut(BaseModel):
    """One send of the notification to a provider topic (an FCM topic a named group maps to)."""

    channel: str
    topic: str
    group: str | None
    status: str
    attempts: int
    reference: str | None
    error: str | None
    sent_at: datetime | None
    failed_at: datetime | None


class EventOut(BaseModel):
    """An event with where its recipients stand."""

    id: str
    type: str
    state: str
    """``accepted`` (waiting to be routed, e.g. until `send_at`), ``routed`` or ``cancelled``."""
    created_at: datetime
    routed_at: datetime | None
    send_at: datetime | None = None
    expires_at: datetime | None = None
    cancelled_at: datetime | None = None
    recipients_named: dict[str, list[str]]
    notification: NotificationOut | None
    recipients: CountsOut
    channels: dict[str, CountsOut]
    topics: list[TopicSendOut] = []


class TransitionOut(BaseModel):
    """One entry of the audit trail."""

    from_status: Status | None = Field(serialization_alias="from")
    to_status: Status = Field(serialization_alias="to")
    cause: str
    at: datetime

    @classmethod
    def of(cls, t: Transition) -> TransitionOut:
        """From the domain's transition."""
        return cls(from_status=t.source, to_status=t.target, cause=t.cause, at=t.at)


class DeliveryOut(BaseModel):
    """One delivery of a recipient's item."""

    id: int
    channel: str
    status: Status
    attempts: int
    error: str | None
    trail: list[TransitionOut]


class RecipientOut(BaseModel):
    """One recipient's item for an event, with its audit trail."""

    user: str
    item_id: int
    status: Status
    trail: list[TransitionOut]
    deliveries: list[DeliveryOut]


HHMM = Annotated[str, Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]


class QuietHoursIn(Input):
    """A daily window of local time (24-hour ``HH:MM``, start inclusive, end exclusive) in
    which non-critical push and email wait; an end before the start crosses midnight, and an
    end equal to the start is no window."""

    start: HHMM
    end: HHMM

    def window(self) -> QuietHours:
        """As the domain knows it."""
        return QuietHours.parse(self.start, self.end)


class QuietHoursOut(BaseModel):
    """A daily quiet window."""

    start: str
    end: str

    @classmethod
    def of(cls, window: QuietHours | None) -> QuietHoursOut | None:
        """From the domain's window."""
        return None if window is None else cls(**window.to_json())


class UserIn(Input):
    """What a producer says about a user; a PUT replaces all of it."""

    email: Annotated[str, Field(max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")] | None = None
    locale: (
        Annotated[str, Field(max_length=35, pattern=r"^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$")] | None
    ) = None
    timezone: Annotated[str, AfterValidator(_timezone)] | None = None
    attributes: JsonData = {}
    quiet_hours: QuietHoursIn | None = None
    """None: the tenant's default quiet hours apply."""


class UserOut(BaseModel):
    """A user as stored."""

    id: str
    email: str | None
    email_status: str
    locale: str | None
    timezone: str | None
    attributes: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    quiet_hours: QuietHoursOut | None = None


# FCM's rule for topic names (HTTP v1 `message.topic`, protocols.md §2).
FcmTopic = Annotated[str, Field(min_length=1, max_length=900, pattern=r"^[A-Za-z0-9\-_.~%]+$")]


class GroupIn(Input):
    """A group, or a community of groups."""

    kind: Literal["group", "community"] = "group"
    name: Annotated[Text, Field(max_length=200)] | None = None
    community: Key | None = None
    attributes: JsonData = {}
    # The FCM topic the tenant's apps subscribe the members to (FCM's own name rule); events
    # naming the group then go to FCM as one topic send. Omitted or null: no mapping.
    fcm_topic: FcmTopic | None = None


class GroupOut(BaseModel):
    """A group as stored."""

    key: str
    kind: str
    name: str | None
    community: str | None
    fcm_topic: str | None
    attributes: dict[str, Any]
    members: int
    created_at: datetime
    updated_at: datetime


class MembershipOut(BaseModel):
    """A user's membership of a group."""

    group: str
    user: str
    created: bool


class TokenIn(Input):
    """Options for a user token."""

    ttl: Annotated[int, Field(ge=1)] | None = None


class TokenOut(BaseModel):
    """A user token for an app."""

    token: str
    expires_at: datetime


class ErrorDetail(BaseModel):
    """An error's code, message and where it is documented."""

    code: str
    message: str
    docs: str
    details: Any = None


class ErrorOut(BaseModel):
    """Every 4xx and 5xx answer."""

    error: ErrorDetail


class InboxItemOut(BaseModel):
    """One notification in a user's inbox."""

    id: int
    notification_id: str
    event_id: str
    event_type: str
    title: str | None
    body: str | None
    data: dict[str, Any]
    category: str | None
    group: str | None
    status: Status
    created_at: datetime
    cursor: str

    @classmethod
    def of(cls, item: InboxItem) -> InboxItemOut:
        """From the domain's item."""
        return cls(
            id=item.id,
            notification_id=item.notification_id,
            event_id=item.event_id,
            event_type=item.type,
            title=item.title,
            body=item.body,
            data=item.data,
            category=item.category,
            group=item.group,
            status=item.status,
            created_at=item.created_at,
            cursor=item.cursor,
        )


class InboxPage(BaseModel):
    """A page of the inbox, newest first; pass `next_cursor` as `cursor` for the next one."""

    items: list[InboxItemOut]
    next_cursor: str | None


class UnreadCountsOut(BaseModel):
    """Unread notifications, in all and per group and category."""

    total: int
    groups: dict[str, int]
    categories: dict[str, int]


class ReceiptOut(BaseModel):
    """An item's status after a receipt (further along if it already was)."""

    id: int
    status: Status


class ReadAllIn(Input):
    """Which unread items to mark read: all, or those of a group and/or category."""

    group: Key | None = None
    category: Key | None = None


class ReadAllOut(BaseModel):
    """How many items a bulk read moved."""

    read: int


class PreferencesIn(Input):
    """Channel switches for one group or category: a channel name or "*" to true/false."""

    channels: Annotated[dict[str, bool], Field(max_length=16)]


class PreferencesOut(BaseModel):
    """The switches now in force for one group or category."""

    channels: dict[str, bool]


class AllPreferencesOut(BaseModel):
    """Every switch of the user."""

    groups: dict[str, dict[str, bool]]
    categories: dict[str, dict[str, bool]]


class DeviceIn(Input):
    """A push endpoint to register."""

    provider: Literal["apns", "fcm", "wns", "webpush"]
    app_id: Annotated[Text, Field(max_length=255)] | None = None
    keys: Annotated[dict[str, Text], Field(max_length=4)] = {}


class DeviceOut(BaseModel):
    """A registered push endpoint; the token is shown masked."""

    id: int
    provider: str
    token: str
    app_id: str | None
    status: str
    created_at: datetime
    updated_at: datetime
    retired_at: datetime | None
    retired_reason: str | None


class EmailIn(Input):
    """The user's own choice about email."""

    status: Literal["subscribed", "unsubscribed"]


class EmailOut(BaseModel):
    """The user's email subscription."""

    email: str | None
    status: str


class TokenKeyIn(Input):
    """A public key for tokens the tenant signs itself."""

    algorithm: Literal["ES256", "RS256"]
    public_key: Annotated[str, Field(max_length=10_000)]


class TokenKeyOut(BaseModel):
    """A registered token key; tokens name it as ``kid: "<tenant id>:<name>"``."""

    name: str
    kid: str
    algorithm: str
    public_key: str
    created_at: datetime
