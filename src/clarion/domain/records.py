"""The records the store hands back: plain values, shared by services and adapters."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from clarion.domain.notifications import EventSpec, InboxItem, JsonObject, StatusCounts
from clarion.domain.outcomes import Outcome
from clarion.domain.statuses import Status, Transition


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    """An API key as listed: never its secret, nor its digest."""

    id: str
    tenant_id: str
    name: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class StoredKey:
    """What authentication needs to know of a key id."""

    tenant_id: str
    digest: str
    revoked: bool


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A recipient as the tenant described them."""

    id: int
    external_id: str
    email: str | None
    locale: str | None
    timezone: str | None
    attributes: JsonObject
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class UserFields:
    """What a producer may set on a user."""

    email: str | None = None
    locale: str | None = None
    timezone: str | None = None
    attributes: JsonObject = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GroupRecord:
    """A group, or a community of groups."""

    id: int
    key: str
    kind: str
    name: str | None
    community: str | None
    attributes: JsonObject
    member_count: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An accepted event, as stored."""

    id: str
    tenant_id: str
    spec: EventSpec
    fingerprint: str
    state: str
    created_at: datetime
    routed_at: datetime | None


@dataclass(frozen=True, slots=True)
class Routed:
    """What routing one event wrote."""

    tenant_id: str
    notification_id: str
    recipients: int
    deliveries: int


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A message committed with the change that caused it, waiting to go onto the bus."""

    id: int
    topic: str
    payload: JsonObject


@dataclass(frozen=True, slots=True)
class Addressed:
    """An inbox item with the internal id of the user it belongs to."""

    user_id: int
    item: InboxItem


@dataclass(frozen=True, slots=True)
class Moved:
    """An item whose status a receipt changed, or would have changed."""

    item_id: int
    user_id: int
    status: Status
    changed: bool


@dataclass(frozen=True, slots=True)
class EventReport:
    """An event, its notification, and where its recipients and deliveries stand."""

    event: StoredEvent
    notification_id: str | None
    recipients: StatusCounts
    channels: dict[str, StatusCounts]


@dataclass(frozen=True, slots=True)
class DeliveryView:
    """One delivery of an item, for reports."""

    id: int
    channel: str
    endpoint: str
    status: Status
    attempts: int
    error: str | None
    trail: tuple[Transition, ...]


@dataclass(frozen=True, slots=True)
class RecipientReport:
    """One recipient's item for an event, its deliveries and the whole audit trail."""

    item: InboxItem
    trail: tuple[Transition, ...]
    deliveries: tuple[DeliveryView, ...]


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery a worker holds a lease on, with what it needs to send it."""

    id: int
    fence: int
    tenant_id: str
    channel: str
    endpoint: str
    attempts: int
    item: InboxItem


@dataclass(frozen=True, slots=True)
class Completion:
    """What became of one claimed delivery."""

    delivery_id: int
    fence: int
    outcome: Outcome
    retry_at: datetime | None = None
