"""The records the store hands back: plain values, shared by services and adapters."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from clarion.domain.channels import Channel
from clarion.domain.notifications import EventSpec, InboxItem, JsonObject, StatusCounts
from clarion.domain.outcomes import Outcome
from clarion.domain.quiet_hours import QuietHours
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
    email_status: str
    locale: str | None
    timezone: str | None
    attributes: JsonObject
    created_at: datetime
    updated_at: datetime
    quiet_hours: QuietHours | None = None


@dataclass(frozen=True, slots=True)
class UserFields:
    """What a producer may set on a user."""

    email: str | None = None
    locale: str | None = None
    timezone: str | None = None
    attributes: JsonObject = field(default_factory=dict)
    quiet_hours: QuietHours | None = None
    """None: the tenant's default applies."""


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
    fcm_topic: str | None = None
    """The FCM topic the tenant's apps subscribe its members to: events naming it go to FCM as
    one topic send instead of one send per member's device."""


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An accepted event, as stored."""

    id: str
    tenant_id: str
    spec: EventSpec
    fingerprint: str
    state: str
    """``accepted`` (not routed yet), ``routed`` or ``cancelled``."""
    created_at: datetime
    routed_at: datetime | None
    send_at: datetime | None = None
    """When it is due to be routed, if scheduled for later than its acceptance."""
    expires_at: datetime | None = None
    cancelled_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Routed:
    """What routing one event wrote."""

    tenant_id: str
    notification_id: str
    recipients: int
    deliveries: int
    topic_sends: int = 0
    event_id: str = ""


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
class RuleApplied:
    """What the tenant's routing rule that decided an event sets on its notification.

    Attributes:
        rule_key: the rule's key.
        priority: ``normal`` or ``critical``.
        ttl_seconds: how long an undelivered push stays worth delivering; None: the default.
        template_key: the template to render with instead of the event type; None: the type.
        resend_push_after: seconds after routing to resend a push not yet `received`.
        email_if_unread_after: seconds after routing to send an email if not yet `read`.
        digest_window: seconds a digest collects before it goes out; None: no digest.
        digest_key: the event's value at the digest's key ('' without a key): one open
            digest per recipient and value.
        digest_channels: the channels the digest goes out on (email only, for now).
    """

    rule_key: str
    priority: str
    ttl_seconds: int | None = None
    template_key: str | None = None
    resend_push_after: int | None = None
    email_if_unread_after: int | None = None
    digest_window: int | None = None
    digest_key: str = ""
    digest_channels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PlannedEvent:
    """What routing decided for one event before its write transaction.

    Attributes:
        event_id: the accepted event.
        notification_id: the id its notification gets.
        channels: the channels, in order; None: the event's own or the defaults.
        only: per channel, the recipients (external ids) that alone get it (a rule chose them).
        rule: the rule that decided the event, stored on its notification.
        inbox: recipient locale (None: none) -> the item's rendered title and body.
    """

    event_id: str
    notification_id: str
    channels: tuple[Channel, ...] | None = None
    only: Mapping[Channel, Collection[str]] = field(default_factory=dict)
    rule: RuleApplied | None = None
    inbox: Mapping[str | None, tuple[str, str]] | None = None


@dataclass(frozen=True, slots=True)
class EventReport:
    """An event, its notification, and where its recipients and deliveries stand."""

    event: StoredEvent
    notification_id: str | None
    recipients: StatusCounts
    channels: dict[str, StatusCounts]
    topics: tuple[TopicSendView, ...] = ()
    rule: RuleApplied | None = None


@dataclass(frozen=True, slots=True)
class TopicSendView:
    """One send of a notification to a provider topic (FCM), for reports."""

    channel: str
    topic: str
    group: str | None
    """The group or community whose mapping chose the topic (the first by key, if several)."""
    status: str
    """``pending``, ``sent`` or ``failed``."""
    attempts: int
    reference: str | None
    """The provider's id of the message (FCM: ``projects/<p>/messages/<id>``) once sent."""
    error: str | None
    sent_at: datetime | None
    failed_at: datetime | None


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
class NewEvent:
    """An event about to be stored: the id it gets, what it is, its idempotency key and the
    fingerprint that key is checked against."""

    event_id: str
    spec: EventSpec
    idempotency_key: str | None
    fingerprint: str
    send_at: datetime | None = None
    """Resolved at acceptance (`notifications.schedule_of`): None for at once."""
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class SenderSettings:
    """How a tenant's email goes out: through which of its email credentials (by name), which
    one takes over while that one fails, and whom the mail is from."""

    provider: str
    fallback: str | None
    sender: str
    sender_name: str | None = None
    reply_to: str | None = None


@dataclass(frozen=True, slots=True)
class TenantSettings:
    """A tenant's own settings: the locale its templates fall back to, and its email sender
    (None until it sets one up: no email goes out before)."""

    default_locale: str
    email: SenderSettings | None
    quiet_hours: QuietHours | None = None
    """For users without their own."""
    default_timezone: str | None = None
    """For users without a time zone (None: UTC)."""
    enrichment_url: str | None = None
    """The tenant's enrichment webhook, if it set one (its secret is never read back)."""


@dataclass(frozen=True, slots=True)
class EnrichmentWebhook:
    """Where a tenant's enrichment webhook is and the secret its requests are signed with."""

    url: str
    secret: str


@dataclass(frozen=True, slots=True)
class EnrichmentSource:
    """What enriching needs of one notification: the rule that decided it and the attributes
    of its group (empty without one)."""

    rule_key: str | None
    group_attributes: JsonObject


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
    address: str | None = None
    """For push channels, the device's provider token (``endpoint`` is the device id)."""
    app_id: str | None = None
    """For push channels, the app the device belongs to (selects the credential)."""
    registered_at: datetime | None = None
    """For push channels, when the device last registered its token (APNs 410 ``timestamp``
    comparisons: a token registered again since is kept)."""
    keys: JsonObject = field(default_factory=dict)
    """For push channels, the device's keys (Web Push: ``p256dh`` and ``auth``)."""
    locale: str | None = None
    """For email and push, the user's locale (templates are chosen by it)."""
    attributes: JsonObject = field(default_factory=dict)
    """For email and push, the user's stored attributes (templates may use them)."""
    context: JsonObject = field(default_factory=dict)
    """For email and push, once enriched (`services.enriching`): the template variables its
    rule's enrichment added (``group``, ``attributes``, ``enrichment``)."""
    push: PushExtras | None = None
    """For push channels, once rendered (`services.pushing`): badge, sound, collapse id,
    thread id and deep link for the wire builders; None sends the item as it is."""


@dataclass(frozen=True, slots=True)
class PushExtras:
    """What a push carries besides its title and body, each None when not given: the badge
    (the user's unread count), the sound, the collapse id, the thread id and the deep link."""

    badge: int | None = None
    sound: str | None = None
    collapse_id: str | None = None
    thread_id: str | None = None
    link: str | None = None


@dataclass(frozen=True, slots=True)
class ClaimedTopicSend:
    """A topic send a worker holds a lease on: one message to every device subscribed to
    `topic` at the provider, built from the notification alone (no recipient, so no locale,
    no per-user template and no per-user opt-out)."""

    id: int
    fence: int
    tenant_id: str
    channel: str
    topic: str
    attempts: int
    notification_id: str
    event_id: str
    type: str
    title: str | None
    body: str | None
    data: JsonObject
    category: str | None
    group: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class TopicCompletion:
    """What became of one claimed topic send: `Delivered` → sent (its reference kept),
    `RetryLater`/`AuthFailed` → due again at `retry_at`, anything else → failed."""

    send_id: int
    fence: int
    outcome: Outcome
    retry_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Completion:
    """What became of one claimed delivery."""

    delivery_id: int
    fence: int
    outcome: Outcome
    retry_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Device:
    """A push endpoint of a user: an APNs/FCM token, a WNS channel URI or a Web Push endpoint."""

    id: int
    user: str
    provider: str
    token: str
    app_id: str | None
    keys: JsonObject
    status: str
    created_at: datetime
    updated_at: datetime
    retired_at: datetime | None
    retired_reason: str | None


@dataclass(frozen=True, slots=True)
class UnreadCounts:
    """How many of a user's items are unread, in all and per group and category."""

    total: int
    groups: dict[str, int]
    categories: dict[str, int]


@dataclass(frozen=True, slots=True)
class InboxQuery:
    """Which of a user's items to list, newest first, and from where."""

    statuses: frozenset[Status]
    group: str | None = None
    category: str | None = None
    since: datetime | None = None
    before: int | None = None
    limit: int = 50


@dataclass(frozen=True, slots=True)
class TokenKey:
    """A public key a tenant registered to sign its own user tokens."""

    kid: str
    algorithm: str
    public_key: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class StatisticsQuery:
    """Which inbox items (and their deliveries) producer statistics count: all filters hold.

    `since` and `until` bound ``created_at`` (`until` excluded). `user` is an external id;
    `group` matches the items' group key; `community` matches the community's own key and the
    key of every group in it. `bucket` is ``"hour"``, ``"day"`` or None (no series).
    """

    tenant_id: str
    since: datetime
    until: datetime
    user: str | None = None
    group: str | None = None
    community: str | None = None
    category: str | None = None
    bucket: str | None = None


@dataclass(frozen=True, slots=True)
class BucketCounts:
    """The items created in one bucket (one hour or day from `start`, in UTC), per status."""

    start: datetime
    counts: StatusCounts


@dataclass(frozen=True, slots=True)
class Statistics:
    """Where the items a `StatisticsQuery` selects stand now, and how fast they were read.

    `recipients` counts inbox items (one per recipient) by status; `channels` counts their
    deliveries by channel and status. `median_seconds_to_read` is the median of ``read_at -
    created_at`` over the items read (None when none was). `series` holds the counts per
    bucket (None when no bucket was asked for).
    """

    recipients: StatusCounts
    channels: dict[str, StatusCounts]
    median_seconds_to_read: float | None
    series: tuple[BucketCounts, ...] | None = None

    @property
    def reached(self) -> int:
        """Items known to have gone out: ``sent + received + read``."""
        counts = self.recipients.by_status
        return counts[Status.SENT] + counts[Status.RECEIVED] + counts[Status.READ]

    @property
    def receive_rate(self) -> float | None:
        """``(received + read) / (sent + received + read)``; None when nothing went out."""
        counts = self.recipients.by_status
        reached = self.reached
        return (counts[Status.RECEIVED] + counts[Status.READ]) / reached if reached else None

    @property
    def read_rate(self) -> float | None:
        """``read / (sent + received + read)``; None when nothing went out."""
        reached = self.reached
        return self.recipients.by_status[Status.READ] / reached if reached else None


@dataclass(frozen=True, slots=True)
class StatisticsReport:
    """Statistics with the query they answer (defaults filled in)."""

    query: StatisticsQuery
    statistics: Statistics


@dataclass(frozen=True, slots=True)
class WebhookInfo:
    """A tenant's status webhook as listed: never its secret."""

    name: str
    url: str
    enabled: bool
    cursor: int
    """The audit-trail id up to which changes have been delivered."""
    failures: int
    next_attempt_at: datetime | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class DueWebhook:
    """A webhook the dispatcher holds a lease on, with its opened secret."""

    id: int
    tenant_id: str
    name: str
    url: str
    secret: str
    cursor: int
    failures: int


@dataclass(frozen=True, slots=True)
class StatusChange:
    """One status change of an inbox item, as status webhooks report it."""

    id: int
    """The audit-trail entry's id: increasing, so receivers can order and de-duplicate."""
    item_id: int
    notification_id: str
    event_id: str
    user: str
    source: Status | None
    target: Status
    at: datetime


@dataclass(frozen=True, slots=True)
class ChangeBatch:
    """The next status changes for a webhook, and where its cursor goes once they are delivered
    (past entries that are not reported, such as deliveries' own moves)."""

    changes: tuple[StatusChange, ...]
    cursor: int


@dataclass(frozen=True, slots=True)
class CredentialInfo:
    """A provider credential as listed: what it is and whom it serves, never its secret."""

    id: str
    tenant_id: str
    provider: str
    name: str
    app_id: str | None
    """The devices it serves (their app_id); None: the tenant's default for the provider."""
    environment: str | None
    metadata: JsonObject
    """Non-secret facts: auth kind, key and team ids, topic, certificate subject and expiry."""
    status: str
    paused_reason: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Credential:
    """A credential opened for a provider client: its description and its secret (PEM)."""

    info: CredentialInfo
    secret: str

    def __repr__(self) -> str:
        # Never print the secret, whatever logs or tracebacks do with this value.
        return f"Credential(info={self.info!r}, secret=<sealed>)"
