"""The schema, in SQLAlchemy Core, for SQLite and PostgreSQL alike.

Alembic's migrations build exactly this (tests/contract/test_migrations.py compares them).
Internal rows that fan out (users, items, deliveries, audit entries) have integer keys so that
routing can write them with ``INSERT ... SELECT`` without a round trip per row; events and
notifications have UUID text ids that producers see.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)


class UtcDateTime(sa.TypeDecorator[datetime]):
    """A timestamp that is always stored and read back as UTC.

    SQLite has no time zones; storing naive UTC there and tagging it on the way out keeps
    comparisons and ordering right on both engines.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Json: Any = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
# Integer keys are BIGINT on PostgreSQL (a busy tenant passes 2^31 inbox items) and INTEGER on
# SQLite, where only "INTEGER PRIMARY KEY" is the fast rowid alias.
BigId: Any = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Key = sa.String(255)


def _tenant_fk() -> sa.Column[str]:
    return sa.Column(
        "tenant_id", sa.String(36), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
    )


tenants = sa.Table(
    "tenants",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    # The user-token signing secret, sealed with the server's key (adapters/sealing.py).
    sa.Column("token_secret", sa.Text, nullable=False),
    # The locale templates fall back to when a user has none, or none the tenant wrote for.
    sa.Column("default_locale", sa.String(35), nullable=False, server_default="en"),
    sa.Column("created_at", UtcDateTime, nullable=False),
    # Revision 0009: the quiet hours of users without their own ("HH:MM", both or neither),
    # and the time zone of users without one (null: UTC).
    sa.Column("quiet_start", sa.String(5)),
    sa.Column("quiet_end", sa.String(5)),
    sa.Column("default_timezone", sa.String(64)),
    # Revision 0010: the enrichment webhook (services/enriching.py), its secret sealed.
    sa.Column("enrichment_url", sa.String(2000)),
    sa.Column("enrichment_secret", sa.Text),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(16), primary_key=True),
    _tenant_fk(),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("revoked_at", UtcDateTime),
    sa.Index(None, "tenant_id"),
)

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    _tenant_fk(),
    sa.Column("external_id", Key, nullable=False),
    sa.Column("email", sa.String(320)),
    # subscribed | unsubscribed | bounced | complained: whether email may be sent at all.
    sa.Column("email_status", sa.String(16), nullable=False, server_default="subscribed"),
    sa.Column("locale", sa.String(35)),
    sa.Column("timezone", sa.String(64)),
    sa.Column("attributes", Json, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    # Revision 0009: the user's quiet hours ("HH:MM", both or neither; null: the tenant's).
    # Plain columns, so routing groups recipients by (timezone, start, end) in SQL.
    sa.Column("quiet_start", sa.String(5)),
    sa.Column("quiet_end", sa.String(5)),
    sa.UniqueConstraint("tenant_id", "external_id"),
)

groups = sa.Table(
    "groups",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    _tenant_fk(),
    sa.Column("key", Key, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("name", sa.String(200)),
    sa.Column("community_id", BigId, sa.ForeignKey("groups.id", ondelete="SET NULL")),
    # The FCM topic the tenant's apps subscribe this group's members to: an event to the group
    # goes to FCM as one topic send instead of one send per member's Android device.
    sa.Column("fcm_topic", sa.String(900)),
    sa.Column("attributes", Json, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("tenant_id", "key"),
    sa.CheckConstraint("kind IN ('group', 'community')", name="kind"),
    sa.Index(None, "community_id"),
)

memberships = sa.Table(
    "memberships",
    metadata,
    sa.Column("group_id", BigId, sa.ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("user_id", BigId, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Index(None, "user_id"),
)

categories = sa.Table(
    "categories",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    _tenant_fk(),
    sa.Column("key", Key, nullable=False),
    sa.Column("name", sa.String(200)),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("tenant_id", "key"),
)

devices = sa.Table(
    "devices",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    _tenant_fk(),
    sa.Column("user_id", BigId, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("provider", sa.String(16), nullable=False),
    sa.Column("token", sa.Text, nullable=False),
    sa.Column("app_id", sa.String(255)),
    sa.Column("keys", Json, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("retired_at", UtcDateTime),
    sa.Column("retired_reason", sa.String(200)),
    sa.UniqueConstraint("tenant_id", "provider", "token"),
    sa.Index(None, "user_id"),
    # Deliveries name their device by id: on SQLite, never hand a deleted device's id to a
    # new one (the default rowid reuse would point old deliveries at the wrong device).
    sqlite_autoincrement=True,
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    _tenant_fk(),
    sa.Column("type", sa.String(200), nullable=False),
    sa.Column("payload", Json, nullable=False),
    sa.Column("idempotency_key", sa.String(255)),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("routed_at", UtcDateTime),
    # When the relay's sweep last handed it to the bus again (services/relaying.py).
    sa.Column("redelivered_at", UtcDateTime),
    sa.Column("redeliveries", sa.Integer, nullable=False, server_default="0"),
    # Scheduling and expiry (revision 0007): not routed before `send_at`; what is undelivered
    # at `expires_at` expires. `cancelled_at` with state 'cancelled' (DELETE before routing).
    sa.Column("send_at", UtcDateTime),
    sa.Column("expires_at", UtcDateTime),
    sa.Column("cancelled_at", UtcDateTime),
    sa.UniqueConstraint("tenant_id", "idempotency_key"),
    sa.Index(None, "tenant_id", "created_at"),
    # The relay's sweep for events still unrouted: only those are in it, so it stays small.
    sa.Index(
        "ix_events_unrouted",
        "created_at",
        postgresql_where=sa.text("state = 'accepted'"),
        sqlite_where=sa.text("state = 'accepted'"),
    ),
)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("topic", sa.String(64), nullable=False),
    sa.Column("payload", Json, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("published_at", UtcDateTime),
    # Not published before this: a scheduled event's send_at, else when it was accepted
    # (revision 0007; always written, and backfilled by 0013). The relay takes due entries in
    # this order.
    sa.Column("available_at", UtcDateTime),
    sa.Index(None, "published_at", "available_at", "id"),
)

notifications = sa.Table(
    "notifications",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    _tenant_fk(),
    sa.Column(
        "event_id", sa.String(36), sa.ForeignKey("events.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("type", sa.String(200), nullable=False),
    sa.Column("title", sa.Text),
    sa.Column("body", sa.Text),
    sa.Column("data", Json, nullable=False),
    sa.Column("category", Key),
    sa.Column("group_key", Key),
    sa.Column("created_at", UtcDateTime, nullable=False),
    # What the tenant's routing rule that decided added (all null when no rule matched): its
    # key, `normal` or `critical`, the push TTL in seconds, and the template to render with.
    sa.Column("rule_key", Key),
    sa.Column("priority", sa.String(16)),
    sa.Column("ttl_seconds", sa.Integer),
    sa.Column("template_key", Key),
    # When what is undelivered of it expires (revision 0007), from the event.
    sa.Column("expires_at", UtcDateTime),
    # The event's push-only options (revision 0009): sound, collapse_id, thread_id, link.
    sa.Column("push", Json),
    sa.UniqueConstraint("event_id"),
)

inbox_items = sa.Table(
    "inbox_items",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    _tenant_fk(),
    sa.Column(
        "notification_id",
        sa.String(36),
        sa.ForeignKey("notifications.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("user_id", BigId, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    # Copied from the notification so per-user filters and bulk reads need no join.
    sa.Column("category", Key),
    sa.Column("group_key", Key),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("sent_at", UtcDateTime),
    sa.Column("received_at", UtcDateTime),
    sa.Column("read_at", UtcDateTime),
    sa.Column("failed_at", UtcDateTime),
    sa.Column("expired_at", UtcDateTime),
    # Copied from the notification (revision 0007): the expiry sweep walks a partial index of
    # the pending rows that expire, instead of every notification that ever had an expiry.
    sa.Column("expires_at", UtcDateTime),
    # Rendered from the tenant's `inbox` templates in the recipient's locale at routing
    # (revision 0012); null: the notification's own title and body.
    sa.Column("title", sa.Text),
    sa.Column("body", sa.Text),
    sa.UniqueConstraint("notification_id", "user_id"),
    sa.Index(
        "ix_inbox_items_expiring",
        "expires_at",
        postgresql_where=sa.text("status = 'pending' AND expires_at IS NOT NULL"),
        sqlite_where=sa.text("status = 'pending' AND expires_at IS NOT NULL"),
    ),
    sa.Index(None, "user_id", "id"),
    sa.Index(None, "user_id", "status"),
    sa.Index(None, "tenant_id", "group_key", "created_at"),
    sa.Index(None, "tenant_id", "category", "created_at"),
    sa.Index(None, "user_id", "created_at"),
    # Producer statistics by group or community (adapters/storage/statistics.py) count items
    # per status and bucket in ranges of the first index. Its keys repeat for all the items of
    # one notification in one status, so PostgreSQL stores it deduplicated: small, and cheap
    # to scan. The second, partial one holds what the median time to read needs.
    sa.Index(None, "tenant_id", "group_key", "status", "created_at"),
    sa.Index(
        None,
        "tenant_id",
        "group_key",
        "created_at",
        "read_at",
        postgresql_where=sa.text("status = 'read'"),
        sqlite_where=sa.text("status = 'read'"),
    ),
)

deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    _tenant_fk(),
    sa.Column(
        "notification_id",
        sa.String(36),
        sa.ForeignKey("notifications.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column(
        "item_id", BigId, sa.ForeignKey("inbox_items.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("user_id", BigId, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("channel", sa.String(16), nullable=False),
    # The endpoint within the channel: a device id for push, an address for email, '' for the
    # one realtime stream per user.
    sa.Column("endpoint", sa.String(255), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    # Copied from the item so statistics filter deliveries without a join.
    sa.Column("category", Key),
    sa.Column("group_key", Key),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", UtcDateTime),
    # Leases: a worker owns a claimed delivery until lease_expires_at; `fence` grows with every
    # claim, so a worker whose lease ran out cannot complete what another has since claimed.
    sa.Column("lease_expires_at", UtcDateTime),
    sa.Column("fence", sa.Integer, nullable=False),
    sa.Column("reference", sa.String(255)),
    sa.Column("error", sa.String(500)),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("sent_at", UtcDateTime),
    sa.Column("received_at", UtcDateTime),
    sa.Column("read_at", UtcDateTime),
    sa.Column("failed_at", UtcDateTime),
    sa.Column("expired_at", UtcDateTime),
    # As on inbox items.
    sa.Column("expires_at", UtcDateTime),
    sa.UniqueConstraint("notification_id", "user_id", "channel", "endpoint"),
    sa.Index(
        "ix_deliveries_expiring",
        "expires_at",
        postgresql_where=sa.text("status = 'pending' AND expires_at IS NOT NULL"),
        sqlite_where=sa.text("status = 'pending' AND expires_at IS NOT NULL"),
    ),
    sa.Index(None, "item_id"),
    sa.Index(None, "channel", "status", "next_attempt_at"),
    sa.Index(None, "tenant_id", "group_key", "created_at"),
    sa.Index(None, "tenant_id", "category", "created_at"),
    sa.Index(None, "user_id", "created_at"),
    sa.Index(None, "tenant_id", "group_key", "channel", "status", "created_at"),
)

transitions = sa.Table(
    "transitions",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    _tenant_fk(),
    sa.Column("subject", sa.String(16), nullable=False),
    sa.Column("subject_id", BigId, nullable=False),
    sa.Column("source", sa.String(16)),
    sa.Column("target", sa.String(16), nullable=False),
    sa.Column("cause", sa.String(64), nullable=False),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Index(None, "subject", "subject_id"),
    sa.Index(None, "tenant_id", "id"),
)

preferences = sa.Table(
    "preferences",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    _tenant_fk(),
    sa.Column("user_id", BigId, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("scope", sa.String(16), nullable=False),
    sa.Column("key", Key, nullable=False),
    # A channel name, or "*" for every channel; a channel's own row wins over "*".
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("user_id", "scope", "key", "channel"),
    sa.CheckConstraint("scope IN ('group', 'category')", name="scope"),
)

token_keys = sa.Table(
    "token_keys",
    metadata,
    _tenant_fk(),
    # Tokens name the key as "<tenant id>:<kid>" in their header.
    sa.Column("kid", sa.String(64), nullable=False),
    sa.Column("algorithm", sa.String(8), nullable=False),
    sa.Column("public_key", sa.Text, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.PrimaryKeyConstraint("tenant_id", "kid"),
    sa.CheckConstraint("algorithm IN ('ES256', 'RS256')", name="algorithm"),
)

webhooks = sa.Table(
    "webhooks",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    _tenant_fk(),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    # The HMAC signing secret, sealed like every other secret.
    sa.Column("secret", sa.Text, nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    # The audit-trail id up to which status changes have been delivered.
    sa.Column("cursor", BigId, nullable=False),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", UtcDateTime),
    sa.Column("last_error", sa.String(500)),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("tenant_id", "name"),
)

credentials = sa.Table(
    "credentials",
    metadata,
    # A UUID made before the insert: the sealed secret is bound to it (adapters/vault.py).
    sa.Column("id", sa.String(36), primary_key=True),
    _tenant_fk(),
    sa.Column("provider", sa.String(16), nullable=False),
    sa.Column("name", sa.String(64), nullable=False),
    # The devices it serves (devices.app_id); null: the tenant's default for the provider.
    sa.Column("app_id", sa.String(255)),
    sa.Column("environment", sa.String(16)),
    # What is not secret: key and team ids, topic, auth kind, certificate subject and expiry.
    sa.Column("metadata", Json, nullable=False),
    # The secret under its own data key, and that key wrapped by the server's key.
    sa.Column("sealed_secret", sa.Text, nullable=False),
    sa.Column("wrapped_key", sa.Text, nullable=False),
    sa.Column("status", sa.String(8), nullable=False),
    sa.Column("paused_reason", sa.String(500)),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("tenant_id", "provider", "name"),
    sa.CheckConstraint("provider IN ('apns', 'fcm', 'wns', 'webpush', 'email')", name="provider"),
    sa.CheckConstraint("status IN ('active', 'paused')", name="status"),
)

templates = sa.Table(
    "templates",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    _tenant_fk(),
    # event_type | category: what `name` is (services/templates.Subject).
    sa.Column("subject", sa.String(16), nullable=False),
    sa.Column("name", Key, nullable=False),
    sa.Column("channel", sa.String(16), nullable=False),
    # BCP 47 as services/templates.normalize_locale writes it.
    sa.Column("locale", sa.String(35), nullable=False),
    # An email's subject line, a push notification's title.
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("html", sa.Text),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("tenant_id", "subject", "name", "channel", "locale"),
    sa.CheckConstraint("subject IN ('event_type', 'category')", name="subject"),
)

email_settings = sa.Table(
    "email_settings",
    metadata,
    sa.Column(
        "tenant_id",
        sa.String(36),
        sa.ForeignKey("tenants.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    # Names of the tenant's email credentials (credentials.provider = 'email'): the one mail
    # goes out through, and the one that takes over while the first is failing.
    sa.Column("provider", sa.String(64), nullable=False),
    sa.Column("fallback", sa.String(64)),
    sa.Column("sender", sa.String(320), nullable=False),
    sa.Column("sender_name", sa.String(200)),
    sa.Column("reply_to", sa.String(320)),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

topic_sends = sa.Table(
    "topic_sends",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    _tenant_fk(),
    sa.Column(
        "notification_id",
        sa.String(36),
        sa.ForeignKey("notifications.id", ondelete="CASCADE"),
        nullable=False,
    ),
    # One send that reaches every device subscribed to a provider topic (FCM), not one user.
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("topic", sa.String(900), nullable=False),
    sa.Column("group_key", Key),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", UtcDateTime),
    sa.Column("lease_expires_at", UtcDateTime),
    sa.Column("fence", sa.Integer, nullable=False),
    sa.Column("reference", sa.String(255)),
    sa.Column("error", sa.String(500)),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("sent_at", UtcDateTime),
    sa.Column("failed_at", UtcDateTime),
    sa.UniqueConstraint("notification_id", "channel", "topic"),
    sa.Index(None, "channel", "status", "next_attempt_at"),
)

rules = sa.Table(
    "rules",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    _tenant_fk(),
    sa.Column("key", Key, nullable=False),
    # The rule as `domain.rules.Rule.to_json` writes it; re-validated when read.
    sa.Column("definition", Json, nullable=False),
    # `Rule.order`, copied out so that rules list in the order routing tries them.
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("tenant_id", "key"),
)

escalations = sa.Table(
    "escalations",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    _tenant_fk(),
    sa.Column(
        "notification_id",
        sa.String(36),
        sa.ForeignKey("notifications.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column(
        "item_id", BigId, sa.ForeignKey("inbox_items.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("user_id", BigId, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    # `resend_push` or `email_if_unread` (revision 0008): a rule's follow-up of one item, due
    # at `due_at`. Rows, not timers in memory, so that they outlive a restart.
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("due_at", UtcDateTime, nullable=False),
    # `pending`, then `done` (fired) or `cancelled` (the item was received or read first).
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("item_id", "kind"),
    sa.Index(None, "status", "due_at"),
)

digests = sa.Table(
    "digests",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    _tenant_fk(),
    sa.Column("user_id", BigId, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    # The rule that batches, and the value of its digest key in the events ('' without a key).
    sa.Column("rule_key", Key, nullable=False),
    sa.Column("key", Key, nullable=False),
    sa.Column("channel", sa.String(16), nullable=False),
    # `open` (collecting until due_at), then `sent` (delivery_id says which) or `empty` (every
    # entry was read first, or the recipient had no address by then). Revision 0010.
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("due_at", UtcDateTime, nullable=False),
    sa.Column("delivery_id", BigId, sa.ForeignKey("deliveries.id", ondelete="SET NULL")),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Index(
        "uq_digests_open",
        "tenant_id",
        "user_id",
        "rule_key",
        "key",
        "channel",
        unique=True,
        sqlite_where=sa.text("status = 'open'"),
        postgresql_where=sa.text("status = 'open'"),
    ),
    sa.Index(None, "status", "due_at"),
    sa.Index(None, "delivery_id"),
)

digest_entries = sa.Table(
    "digest_entries",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("digest_id", BigId, sa.ForeignKey("digests.id", ondelete="CASCADE"), nullable=False),
    sa.Column(
        "item_id", BigId, sa.ForeignKey("inbox_items.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("digest_id", "item_id"),
)
