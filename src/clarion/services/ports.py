"""What the services need from the world, as structural types.

Adapters never import this module: they fit it by shape, and mypy checks the fit where
`bootstrap` wires them. Each storage method is one transaction; methods that write many rows
do it set-based (``INSERT ... SELECT``, ``UPDATE ... WHERE id IN``), never a row at a time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Protocol

from clarion.domain.channels import Channel
from clarion.domain.notifications import EventSpec, InboxItem, JsonObject
from clarion.domain.outcomes import Outcome
from clarion.domain.quiet_hours import QuietHours
from clarion.domain.records import (
    Addressed,
    ApiKeyInfo,
    ChangeBatch,
    Claimed,
    ClaimedTopicSend,
    Completion,
    Credential,
    CredentialInfo,
    Device,
    DueWebhook,
    EnrichmentSource,
    EnrichmentWebhook,
    EventReport,
    GroupRecord,
    InboxQuery,
    Moved,
    NewEvent,
    OutboxEntry,
    PlannedEvent,
    RecipientReport,
    Routed,
    RuleApplied,
    SenderSettings,
    Statistics,
    StatisticsQuery,
    StatisticsReport,
    StoredEvent,
    StoredKey,
    TenantSettings,
    TokenKey,
    TopicCompletion,
    TopicSendView,
    UnreadCounts,
    UserFields,
    UserRecord,
    WebhookInfo,
)
from clarion.domain.rules import Rule, RuleChanges, StoredRule
from clarion.domain.statuses import Status
from clarion.domain.templates import (
    EmailTemplate,
    Subject,
    TemplateEntry,
    TemplateKey,
    TemplateSet,
    TemplateSetInfo,
)
from clarion.wire.email import Email

__all__ = [
    "Addressed",
    "ApiKeyInfo",
    "Bus",
    "ChangeBatch",
    "Claimed",
    "ClaimedTopicSend",
    "Clock",
    "Completion",
    "Credential",
    "CredentialInfo",
    "CredentialStore",
    "DeadLetter",
    "Device",
    "DueWebhook",
    "EnrichmentSource",
    "EnrichmentWebhook",
    "Envelope",
    "EventReport",
    "GroupRecord",
    "InboxQuery",
    "Mailer",
    "Moved",
    "NewEvent",
    "OutboxEntry",
    "PlannedEvent",
    "RecipientReport",
    "Routed",
    "RuleApplied",
    "RuleStore",
    "SenderSettings",
    "SnsClient",
    "Statistics",
    "StatisticsQuery",
    "StatisticsReport",
    "StatisticsStore",
    "Store",
    "StoredEvent",
    "StoredKey",
    "TemplateStore",
    "TenantSettings",
    "TokenKey",
    "TopicCompletion",
    "TopicSendView",
    "TopicStore",
    "TopicTransport",
    "Transport",
    "UnreadCounts",
    "UserFields",
    "UserRecord",
    "WebhookInfo",
    "WebhookSender",
    "WebhookStore",
]


class Clock(Protocol):
    """The time, injected so that nothing below the entrypoints reads the wall clock itself."""

    def now(self) -> datetime:
        """The current time, timezone-aware, UTC."""
        ...


# ---------------------------------------------------------------------------------------------
# Ports


class Store(Protocol):
    """The system of record. Every method is one transaction; every query is tenant-scoped."""

    # tenants and keys
    async def create_tenant(
        self,
        *,
        tenant_id: str,
        name: str,
        token_secret: str,
        key_id: str,
        key_digest: str,
        now: datetime,
    ) -> None:
        """Create a tenant with its first API key."""
        ...

    async def tenant_secret(self, tenant_id: str) -> str | None:
        """The tenant's user-token signing secret, or None for an unknown tenant."""
        ...

    async def tenant_settings(self, tenant_id: str) -> TenantSettings | None:
        """The tenant's settings, or None for an unknown tenant."""
        ...

    async def put_tenant_settings(
        self,
        tenant_id: str,
        *,
        default_locale: str,
        email: SenderSettings | None,
        now: datetime,
        quiet_hours: QuietHours | None = None,
        default_timezone: str | None = None,
    ) -> bool:
        """Replace the tenant's settings (None: no email sender); False for an unknown
        tenant."""
        ...

    async def add_key(
        self, *, tenant_id: str, key_id: str, name: str, digest: str, now: datetime
    ) -> bool:
        """Add an API key; False when the tenant does not exist."""
        ...

    async def find_key(self, key_id: str) -> StoredKey | None:
        """The key with this id, revoked or not."""
        ...

    async def list_keys(self, tenant_id: str) -> list[ApiKeyInfo]:
        """The tenant's keys, oldest first."""
        ...

    async def revoke_key(self, key_id: str, now: datetime) -> bool:
        """Revoke a key at once; False when there is no such key."""
        ...

    # directory
    async def put_user(
        self, tenant_id: str, external_id: str, fields: UserFields, now: datetime
    ) -> tuple[UserRecord, bool]:
        """Create or replace a user; the flag says whether it was created."""
        ...

    async def get_user(self, tenant_id: str, external_id: str) -> UserRecord | None:
        """The user, or None."""
        ...

    async def ensure_user(self, tenant_id: str, external_id: str, now: datetime) -> int:
        """The internal id of the user, created bare if unknown."""
        ...

    async def delete_user(self, tenant_id: str, external_id: str) -> bool:
        """Erase the user and everything addressed to them; False when unknown."""
        ...

    async def put_group(
        self,
        tenant_id: str,
        key: str,
        *,
        kind: str,
        name: str | None,
        community: str | None,
        attributes: JsonObject,
        now: datetime,
        fcm_topic: str | None = None,
    ) -> tuple[GroupRecord, bool]:
        """Create or update a group or community; the flag says whether it was created.
        `fcm_topic` maps it to an FCM topic (None: no mapping).

        Raises:
            errors.GroupKindMismatch: the kind would change, or `community` is not a community.
            errors.UnknownCommunity: `community` does not exist.
        """
        ...

    async def get_group(self, tenant_id: str, key: str) -> GroupRecord | None:
        """The group, or None."""
        ...

    async def put_member(
        self, tenant_id: str, group_key: str, external_id: str, now: datetime
    ) -> bool | None:
        """Add the user (created if unknown) to the group: True if added, False if already in,
        None if there is no such group."""
        ...

    async def delete_member(self, tenant_id: str, group_key: str, external_id: str) -> bool:
        """Remove a membership; False when there was none."""
        ...

    async def missing_groups(self, tenant_id: str, keys: Sequence[str], kind: str) -> list[str]:
        """Which of `keys` name no group of `kind`."""
        ...

    # events
    async def insert_event(
        self,
        *,
        tenant_id: str,
        event_id: str,
        spec: EventSpec,
        idempotency_key: str | None,
        fingerprint: str,
        now: datetime,
        send_at: datetime | None = None,
        expires_at: datetime | None = None,
    ) -> StoredEvent:
        """Store the event and its outbox entry together, or return the event that already
        holds this idempotency key (the caller compares fingerprints). A `send_at` keeps the
        entry from the relay until then; `expires_at` goes to the notification routing makes."""
        ...

    async def insert_events(
        self, *, tenant_id: str, batch: Sequence[NewEvent], now: datetime
    ) -> list[StoredEvent]:
        """Store a batch of events and their outbox entries in one transaction (keys are
        distinct within the batch). One stored event per entry, in order: for an entry whose
        key is already taken, the event that holds it. When any taken key holds an event with
        another fingerprint, nothing is stored (the caller refuses the batch)."""
        ...

    async def get_event(self, tenant_id: str, event_id: str) -> StoredEvent | None:
        """The event, or None."""
        ...

    async def route_events(
        self, plans: Sequence[PlannedEvent], *, now: datetime
    ) -> list[Routed | None]:
        """Route several events in one transaction: for each, expand the recipients, create
        unknown users, and write the notification, one inbox item per recipient and one
        delivery per recipient and channel, set-based, with a fixed number of statements for
        what the events share. A plan's `channels` (None: the event's own or the defaults) pick
        the channels; a channel in `only` goes to the recipients (external ids) listed there
        alone; `rule` is stored on the notification; `inbox` maps a recipient locale (None: no
        locale) to the item's title and body rendered for it (recipients whose locale it lacks
        keep the notification's). One answer per plan, in order: None for an event unknown,
        routed before, not yet due (`send_at`), or planned twice."""
        ...

    async def audience_locales(self, tenant_id: str, spec: EventSpec) -> set[str | None]:
        """The distinct locales of the users the event reaches; None among them when one has
        no locale (or is a named user routing will create)."""
        ...

    async def pending_events(self, event_ids: Sequence[str]) -> list[StoredEvent]:
        """Those of the events that wait to be routed (state ``accepted``), in no order."""
        ...

    async def audience_attributes(
        self, tenant_id: str, spec: EventSpec
    ) -> list[tuple[str, JsonObject]]:
        """(external id, stored attributes) of every existing user the event reaches."""
        ...

    async def unrouted_events(self, *, accepted_before: datetime, limit: int) -> list[str]:
        """Events accepted before the given time and still not routed, oldest first."""
        ...

    async def take_stale_events(
        self, *, accepted_before: datetime, limit: int, now: datetime
    ) -> list[str]:
        """Up to `limit` events accepted before `accepted_before`, still not routed, whose
        next re-publication is due, oldest first; each is marked taken at `now`, so concurrent
        sweeps (one per worker) share them out. The window is `now - accepted_before`; an event
        goes back after one window, then after 2, 4, 8 and at most 16 more, so a long queue
        is not re-published every window."""
        ...

    async def pending_outbox(self, limit: int, *, now: datetime | None = None) -> list[OutboxEntry]:
        """Outbox entries not yet published, in commit order; with `now`, only those due by
        then (a scheduled event's entry waits for its `send_at`)."""
        ...

    async def mark_published(self, ids: Sequence[int], now: datetime) -> None:
        """Record that the entries are on the bus."""
        ...

    async def prune_outbox(self, *, published_before: datetime) -> int:
        """Forget entries published before the given time; how many went."""
        ...

    async def cancel_event(self, tenant_id: str, event_id: str, now: datetime) -> str | None:
        """Cancel the event if it is not routed yet (state ``cancelled``, its unpublished
        outbox entry dropped). The event's state afterwards (``cancelled``, or ``routed`` when
        too late); None when the tenant has no such event."""
        ...

    async def expire_overdue(self, *, now: datetime, limit: int) -> int:
        """Move up to `limit` pending deliveries, then up to `limit` pending items, whose
        notification expired by `now` to `expired`, audited; those a worker holds a lease on
        wait for it. How many moved."""
        ...

    async def digest_due(self, *, now: datetime, limit: int) -> int:
        """Close up to `limit` open digests due by `now`, in one transaction: one email
        delivery per digest, on the item of its newest unread entry (audited ``digest``;
        `suppressed` where email is opted out); a digest with no unread entry is closed
        without one. Two callers never close the same digest. How many were closed."""
        ...

    async def escalate_due(self, *, now: datetime, limit: int) -> int:
        """Fire up to `limit` pending escalations due by `now`, in one transaction: a resend
        puts the item's `sent` push deliveries back to `pending` (audited
        ``escalation_resend``), an email follow-up creates an email delivery (audited
        ``escalation_email``; `suppressed` where email is opted out); those whose item was
        acknowledged meanwhile are cancelled. Two callers never fire the same row. How many
        rows were settled."""
        ...

    # realtime
    async def items_for_users(
        self, tenant_id: str, notification_id: str, user_ids: Sequence[int]
    ) -> list[Addressed]:
        """The notification's items for those of `user_ids` who received it."""
        ...

    async def backlog(
        self,
        tenant_id: str,
        user_id: int,
        *,
        after: int | None,
        start: int,
        limit: int,
        now: datetime | None = None,
    ) -> list[Addressed]:
        """One page of what a (re)connecting user missed, items with id above `start` in id
        order: every item after the cursor `after`, and any still pending (only those when
        there is no cursor); never an expired one (with `now`: nor one whose expiry passed)."""
        ...

    async def mark_sent(
        self, tenant_id: str, item_ids: Sequence[int], *, channel: Channel, now: datetime
    ) -> list[int]:
        """Move pending items (and their deliveries on `channel`) to sent; the ids that moved."""
        ...

    async def apply_receipt(
        self,
        tenant_id: str,
        user_id: int,
        item_id: int,
        target: Status,
        *,
        channel: Channel | None,
        cause: str,
        now: datetime,
    ) -> Moved | None:
        """Advance the user's item (and its delivery on `channel`) towards `target`.
        None when the item is not this user's."""
        ...

    # the user's own side
    async def inbox(self, tenant_id: str, user_id: int, query: InboxQuery) -> list[InboxItem]:
        """The user's items matching `query`, newest first."""
        ...

    async def inbox_item(self, tenant_id: str, user_id: int, item_id: int) -> InboxItem | None:
        """One of the user's visible items, or None (also when it is someone else's)."""
        ...

    async def unread_counts(self, tenant_id: str, user_id: int) -> UnreadCounts:
        """Unread items in all, per group and per category."""
        ...

    async def unread_totals(self, tenant_id: str, external_ids: Sequence[str]) -> dict[str, int]:
        """Each named user's unread items in all, set-based; users with none are left out."""
        ...

    async def read_all(
        self,
        tenant_id: str,
        user_id: int,
        *,
        group: str | None,
        category: str | None,
        cause: str,
        now: datetime,
    ) -> list[int]:
        """Mark the user's unread items (of a group and/or category) read; the ids moved."""
        ...

    async def put_preferences(
        self,
        tenant_id: str,
        user_id: int,
        scope: str,
        key: str,
        channels: dict[str, bool],
        now: datetime,
    ) -> None:
        """Replace the user's channel switches for one group or category."""
        ...

    async def preferences(
        self, tenant_id: str, user_id: int
    ) -> dict[str, dict[str, dict[str, bool]]]:
        """The user's switches: scope → key → channel → enabled."""
        ...

    async def put_device(
        self,
        tenant_id: str,
        external_id: str,
        *,
        provider: str,
        token: str,
        app_id: str | None,
        keys: JsonObject,
        now: datetime,
    ) -> tuple[Device, bool]:
        """Register a token for the user (moving or reviving it); True if new."""
        ...

    async def delete_device(self, tenant_id: str, external_id: str, token: str) -> bool:
        """Unregister the user's device(s) with this token."""
        ...

    async def devices_of(self, tenant_id: str, external_id: str) -> list[Device]:
        """The user's devices."""
        ...

    async def set_email_status(
        self, tenant_id: str, user_id: int, status: str, now: datetime
    ) -> str | None:
        """Set the user's email subscription; the status after, None without an address."""
        ...

    async def mark_addresses(
        self, tenant_id: str, addresses: Iterable[str], status: str, now: datetime
    ) -> int:
        """Set ``email_status`` `status` (``bounced`` | ``complained``) on every user of the
        tenant whose address, lower-cased, is among `addresses` (lower-cased, every form that
        should match: `wire.mail_events.address_forms`); a complaint overrides a bounce, never
        the reverse. How many users changed."""
        ...

    async def put_token_key(
        self, tenant_id: str, kid: str, *, algorithm: str, public_key: str, now: datetime
    ) -> bool:
        """Register or replace a token-signing public key; True if new."""
        ...

    async def token_key(self, tenant_id: str, kid: str) -> TokenKey | None:
        """A registered key, or None."""
        ...

    async def token_keys(self, tenant_id: str, kid: str | None = None) -> list[TokenKey]:
        """The tenant's registered keys."""
        ...

    async def delete_token_key(self, tenant_id: str, kid: str) -> bool:
        """Forget a key."""
        ...

    # reports
    async def event_report(self, tenant_id: str, event_id: str) -> EventReport | None:
        """The event and its per-status counts, or None."""
        ...

    async def recipient_report(
        self, tenant_id: str, event_id: str, external_id: str
    ) -> RecipientReport | None:
        """One recipient's item, deliveries and audit trail for the event, or None."""
        ...

    # deliveries sent by transports
    async def claim_deliveries(
        self, channel: Channel, *, limit: int, lease_seconds: float, now: datetime
    ) -> list[Claimed]:
        """Lease up to `limit` due, pending deliveries of `channel`, each with a new fence.

        A push delivery whose device was retired or deleted since routing is failed instead
        of handed out ("device retired", "device deleted"): a dead token is never used again.
        """
        ...

    async def complete_deliveries(
        self, completions: Sequence[Completion], now: datetime
    ) -> list[int]:
        """Apply outcomes set-based, each move audited; those whose fence is stale, or whose
        delivery is no longer pending, are ignored. The ids applied.

        `Delivered`: the delivery and its item go `sent` (the reference kept). `RetryLater` and
        `AuthFailed`: due again at `retry_at`. `Rejected` and `TokenInvalid`: the delivery fails,
        and so does its item once none of its deliveries is left open. `TokenInvalid` on a push
        channel also retires the device, unless it registered again after the claim.
        """
        ...


class StatisticsStore(Protocol):
    """Aggregates over inbox items and their deliveries, for producers. Read-only: every call
    reads one snapshot, and counts with SQL aggregates, never row by row."""

    async def statistics(self, query: StatisticsQuery) -> Statistics | None:
        """Counts per status (items) and per channel and status (deliveries), the median time
        to read, and (when `query.bucket` is set) the counts per bucket that holds any item,
        in bucket order. Only the tenant's rows count. None when `query.user` names no user of
        the tenant."""
        ...


class Envelope(Protocol):
    """A message taken from a work stream; it stays owed until acknowledged.

    One not acknowledged within the bus's visibility timeout is delivered again, to this
    consumer or another of its group. After the bus's limit of deliveries it is moved to the
    dead-letter stream `<stream>.dead` instead of being delivered again.
    """

    payload: JsonObject

    @property
    def deliveries(self) -> int:
        """How many times the message has been handed out, this time included (1 the first)."""
        ...

    async def ack(self) -> None:
        """The work is done; the bus may forget the message."""
        ...

    async def reject(self, reason: str) -> None:
        """The work can never be done (a malformed message): move it to `<stream>.dead` now,
        with `reason`, instead of letting it be retried."""
        ...


class DeadLetter(Protocol):
    """A message the bus gave up on, as an operator reads it back from `<stream>.dead`
    (docs/bus.md, "Dead letters")."""

    @property
    def id(self) -> str:
        """Its id in the dead-letter stream, opaque (a Redis entry id, a JetStream sequence)."""
        ...

    @property
    def stream(self) -> str:
        """The stream it was taken from, and to which a replay publishes it."""
        ...

    @property
    def group(self) -> str:
        """The consumer group that gave up on it."""
        ...

    @property
    def deliveries(self) -> int:
        """How many times it had been handed out."""
        ...

    @property
    def reason(self) -> str:
        """`max_deliveries`, `invalid`, the reason given to `Envelope.reject`, or `unreadable`
        (the dead-letter stream holds something that is not a dead letter)."""
        ...

    @property
    def payload(self) -> JsonObject | str | None:
        """The original payload; the raw text of one that was not a JSON object."""
        ...

    @property
    def dead_at(self) -> datetime | None:
        """When it was dead-lettered, as the broker recorded it."""
        ...


class Bus(Protocol):
    """Carries work between processes, and broadcasts realtime news to every gateway.

    Work streams are at-least-once with one consumer per message within a group; every group
    gets every message, and a group that did not exist yet starts from the oldest message the
    stream still holds. Broadcasts reach every listener that is connected at the time and are
    not kept.
    """

    async def publish(
        self, stream: str, payload: JsonObject, *, message_id: str | None = None
    ) -> None:
        """Append work to a stream. A payload naming itself (`message_id` if given, else its
        `event_id`, else its `id`) is appended once per stream within the bus's dedupe window,
        however often it is published.

        Raises:
            errors.Unavailable: the bus cannot take it now (its broker is unreachable).
        """
        ...

    def consume(self, stream: str, group: str) -> AsyncIterator[Envelope]:
        """The stream's messages for this consumer group, forever. Survives broker restarts."""
        ...

    async def acknowledge(self, envelopes: Sequence[Envelope]) -> None:
        """`Envelope.ack` for several messages this bus handed out, in as few round trips to
        the broker as it allows (one per stream and group on Redis).

        Raises:
            errors.Unavailable: the broker is unreachable; the messages stay owed.
        """
        ...

    async def broadcast(self, channel: str, payload: JsonObject) -> None:
        """Tell every listener of `channel`.

        Raises:
            errors.Unavailable: the bus cannot take it now (its broker is unreachable).
        """
        ...

    def listen(self, channel: str) -> AbstractAsyncContextManager[AsyncIterator[JsonObject]]:
        """Listen to `channel` for as long as the context is open (subscribed once entered)."""
        ...

    async def dead_letters(
        self, stream: str, *, after: str | None = None, limit: int = 100
    ) -> Sequence[DeadLetter]:
        """Up to `limit` dead letters of `stream` still held in `<stream>.dead`, oldest first,
        starting after the letter whose id is `after`.

        Raises:
            errors.Unavailable: the broker is unreachable.
        """
        ...

    async def dead_letter(self, stream: str, letter_id: str) -> DeadLetter | None:
        """One dead letter of `stream`; None when there is no such letter (or id).

        Raises:
            errors.Unavailable: the broker is unreachable.
        """
        ...

    async def remove_dead_letter(self, stream: str, letter_id: str) -> bool:
        """Forget one dead letter of `stream`; False when there was no such letter.

        Raises:
            errors.Unavailable: the broker is unreachable.
        """
        ...

    async def close(self) -> None:
        """Release connections; consumers and listeners of this bus end."""
        ...


class Transport(Protocol):
    """Sends claimed deliveries of one channel to its provider; one adapter per provider."""

    channel: Channel

    async def send(self, batch: Sequence[Claimed]) -> Sequence[Outcome]:
        """One outcome per delivery, in order. Never raises for a provider's answer."""
        ...


class TopicStore(Protocol):
    """Sends to provider topics (FCM), which routing writes for the groups and communities a
    tenant mapped to a topic: leased and fenced like deliveries."""

    async def claim_topic_sends(
        self, channel: Channel, *, limit: int, lease_seconds: float, now: datetime
    ) -> list[ClaimedTopicSend]:
        """Lease up to `limit` due, pending topic sends of `channel`, each with a new fence and
        one more attempt counted."""
        ...

    async def complete_topic_sends(
        self, completions: Sequence[TopicCompletion], now: datetime
    ) -> list[int]:
        """Apply outcomes; those whose fence is stale, or that are no longer pending, are
        ignored. The ids applied. `Delivered`: sent, with its reference. `RetryLater` and
        `AuthFailed`: due again at `retry_at`. Anything else: failed, with the reason."""
        ...


class TopicTransport(Protocol):
    """Sends claimed topic sends of one channel to its provider."""

    channel: Channel

    async def send_topics(self, sends: Sequence[ClaimedTopicSend]) -> Sequence[Outcome]:
        """One outcome per send, in order, with the tenant's default credential. Never raises
        for a provider's answer; a refused credential is `AuthFailed` naming it."""
        ...


class Mailer(Protocol):
    """Sends emails through one kind of email provider (``smtp``, ``ses``, ``sendgrid``) with a
    tenant's credential; one adapter per kind, each a thin shell over `wire.email`."""

    kind: str

    async def send(self, credential: Credential, emails: Sequence[Email]) -> Sequence[Outcome]:
        """One outcome per email, in order. Never raises for a provider's answer; a provider
        that cannot be reached is `RetryLater`, one that refuses the credential `AuthFailed`
        naming ``credential.info.id``."""
        ...

    async def close(self) -> None:
        """Close pooled connections."""
        ...


class WebhookStore(Protocol):
    """Status webhooks and the audit trail they tail. Every method is one transaction."""

    async def put_webhook(
        self,
        tenant_id: str,
        name: str,
        *,
        url: str,
        secret: str | None,
        new_secret: str,
        enabled: bool,
        max_webhooks: int,
        now: datetime,
    ) -> tuple[WebhookInfo, bool]:
        """Create or update a webhook; the flag says whether it was created. A new webhook gets
        `secret`, or `new_secret` when that is None, and a cursor at the tenant's newest audit
        entry; an existing one keeps its secret unless `secret` is given, and keeps its cursor.

        Raises:
            errors.Conflict: creating it would give the tenant more than `max_webhooks`.
        """
        ...

    async def list_webhooks(self, tenant_id: str) -> list[WebhookInfo]:
        """The tenant's webhooks, by name."""
        ...

    async def delete_webhook(self, tenant_id: str, name: str) -> bool:
        """Forget a webhook; False when the tenant has none of that name."""
        ...

    async def claim_webhooks(
        self, *, now: datetime, settled_before: datetime, lease_seconds: float, limit: int
    ) -> list[DueWebhook]:
        """Lease up to `limit` enabled, due webhooks (any tenant) that have audit entries past
        their cursor written before `settled_before`; none is leased twice at once."""
        ...

    async def status_changes(
        self, tenant_id: str, *, after: int, settled_before: datetime, limit: int
    ) -> ChangeBatch:
        """Up to `limit` item status changes (not creations as `pending`) with audit ids above
        `after`, in id order, and the cursor that delivering them earns. Ids are only taken up
        to the newest entry written before `settled_before`, so that a transaction still
        committing a lower id is waited for rather than skipped."""
        ...

    async def webhook_delivered(self, webhook_id: int, *, cursor: int, now: datetime) -> None:
        """Move the cursor forward to `cursor`, clear the failures and release the lease."""
        ...

    async def webhook_failed(
        self, webhook_id: int, *, error: str, retry_at: datetime, now: datetime
    ) -> None:
        """Count a failure, keep `error`, and make the webhook due again at `retry_at`."""
        ...


class WebhookSender(Protocol):
    """POSTs a signed batch to a webhook URL, guarding against SSRF on every request."""

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Outcome:
        """`Delivered` on a 2xx; `RetryLater` for every failure, including a refused address.
        Never raises for anything the network or the receiver does."""
        ...

    async def close(self) -> None:
        """Release connections; the sender may be used again afterwards."""
        ...


class SnsClient(Protocol):
    """Fetches from Amazon SNS what its HTTP(S) messages point at. The caller has already
    checked each URL against the SNS host rule (`wire.mail_events.sns_url_allowed`)."""

    async def certificate(self, url: str) -> bytes | None:
        """The PEM certificate at `url`; None when the server answers without one (not 200,
        too large). Raises `errors.Unavailable` when it cannot be reached."""
        ...

    async def confirm(self, url: str) -> bool:
        """GET a ``SubscribeURL``; whether SNS answered 200. Raises `errors.Unavailable` when
        it cannot be reached."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class CredentialStore(Protocol):
    """Provider credentials, their secrets sealed at rest (envelope encryption, bound to the
    tenant and the credential)."""

    async def put_credential(
        self,
        tenant_id: str,
        provider: str,
        name: str,
        *,
        app_id: str | None,
        environment: str | None,
        metadata: JsonObject,
        secret: str,
        now: datetime,
    ) -> tuple[CredentialInfo, bool]:
        """Create or replace the tenant's credential `name` for `provider`, active again; the
        saved credential and whether it was created."""
        ...

    async def list_credentials(self, tenant_id: str) -> list[CredentialInfo]:
        """The tenant's credentials by provider and name, without their secrets."""
        ...

    async def get_credential(
        self, tenant_id: str, provider: str, name: str
    ) -> CredentialInfo | None:
        """One credential, without its secret, or None."""
        ...

    async def delete_credential(self, tenant_id: str, provider: str, name: str) -> bool:
        """Forget a credential; False when there was none."""
        ...

    async def load_credential(
        self, tenant_id: str, provider: str, app_id: str | None
    ) -> Credential | None:
        """The active credential for devices of `app_id`: the one naming that app, else the
        tenant's default (no app_id), most recently updated first; opened. None if neither.
        Raises the vault's error when the secret does not open."""
        ...

    async def load_named_credential(
        self, tenant_id: str, provider: str, name: str
    ) -> Credential | None:
        """The tenant's credential `name` for `provider`, opened, paused or not; None if there
        is none. Raises the vault's error when the secret does not open."""
        ...

    async def pause_credential(
        self, tenant_id: str, credential_id: str, *, reason: str, now: datetime
    ) -> bool:
        """Stop using a credential until it is replaced; False when there is none."""
        ...


class TemplateStore(Protocol):
    """Tenants' templates, kept as sets: every channel and locale written for one event type or
    one category (a `Subject` and its name) is saved and replaced together."""

    async def put_template_set(
        self,
        tenant_id: str,
        subject: Subject,
        name: str,
        entries: Sequence[TemplateEntry],
        now: datetime,
    ) -> tuple[TemplateSet, bool]:
        """Replace every template of (`subject`, `name`) with `entries`, in one transaction;
        the set as saved and whether there was none before. A replaced set keeps its
        `created_at`."""
        ...

    async def get_template_set(
        self, tenant_id: str, subject: Subject, name: str
    ) -> TemplateSet | None:
        """The set, or None when the tenant has none of that subject and name."""
        ...

    async def list_template_sets(self, tenant_id: str) -> list[TemplateSetInfo]:
        """The tenant's sets by subject and name, with their channels and locales."""
        ...

    async def delete_template_set(self, tenant_id: str, subject: Subject, name: str) -> bool:
        """Forget a set; False when there was none."""
        ...

    async def templates_for(
        self, tenant_id: str, channel: str, *, event_type: str, category: str | None
    ) -> dict[TemplateKey, EmailTemplate]:
        """Every locale of `channel` written for the event type and (when given) the category:
        what `services.templates.choose_template` picks from. Push and inbox templates come as
        `EmailTemplate` too (the title as `subject`, the body as `text`)."""
        ...

    async def default_locale(self, tenant_id: str) -> str:
        """The locale the tenant's templates fall back to (``en`` for an unknown tenant)."""
        ...


class RuleStore(Protocol):
    """Tenants' routing rules (`domain.rules`), one per (tenant, key)."""

    async def put_rule(self, tenant_id: str, rule: Rule, now: datetime) -> tuple[StoredRule, bool]:
        """Save `rule` under its key, replacing any rule of that key (which keeps its
        `created_at`); the rule as saved and whether it was new."""
        ...

    async def get_rule(self, tenant_id: str, key: str) -> StoredRule | None:
        """The rule, or None."""
        ...

    async def list_rules(self, tenant_id: str) -> list[StoredRule]:
        """Every rule of the tenant."""
        ...

    async def delete_rule(self, tenant_id: str, key: str) -> bool:
        """Forget a rule; False when there was none."""
        ...

    async def apply_rules(
        self, tenant_id: str, given: Sequence[Rule], now: datetime, *, replace: bool
    ) -> RuleChanges:
        """Save every rule of `given` in one transaction; with `replace`, delete the tenant's
        rules whose keys `given` does not hold, so the tenant has exactly `given`."""
        ...
