"""email and topic sends: templates, per-tenant email settings and default locale, FCM topics

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


UNROUTED = sa.text("state = 'accepted'")


def upgrade() -> None:
    with op.batch_alter_table("events") as batch_op:
        batch_op.add_column(sa.Column("redelivered_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("redeliveries", sa.Integer(), server_default="0", nullable=False)
        )
    op.create_index(
        "ix_events_unrouted",
        "events",
        ["created_at"],
        unique=False,
        postgresql_where=UNROUTED,
        sqlite_where=UNROUTED,
    )
    op.create_table(
        "email_settings",
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("fallback", sa.String(length=64), nullable=True),
        sa.Column("sender", sa.String(length=320), nullable=False),
        sa.Column("sender_name", sa.String(length=200), nullable=True),
        sa.Column("reply_to", sa.String(length=320), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_email_settings_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_email_settings")),
    )
    op.create_table(
        "templates",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("subject", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("locale", sa.String(length=35), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("html", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "subject IN ('event_type', 'category')", name=op.f("ck_templates_subject")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_templates_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_templates")),
        sa.UniqueConstraint(
            "tenant_id",
            "subject",
            "name",
            "channel",
            "locale",
            name=op.f("uq_templates_tenant_id_subject_name_channel_locale"),
        ),
    )
    op.create_table(
        "topic_sends",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("notification_id", sa.String(length=36), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("topic", sa.String(length=900), nullable=False),
        sa.Column("group_key", sa.String(length=255), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("fence", sa.Integer(), nullable=False),
        sa.Column("reference", sa.String(length=255), nullable=True),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["notification_id"],
            ["notifications.id"],
            name=op.f("fk_topic_sends_notification_id_notifications"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_topic_sends_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_topic_sends")),
        sa.UniqueConstraint(
            "notification_id",
            "channel",
            "topic",
            name=op.f("uq_topic_sends_notification_id_channel_topic"),
        ),
    )
    op.create_index(
        op.f("ix_topic_sends_channel_status_next_attempt_at"),
        "topic_sends",
        ["channel", "status", "next_attempt_at"],
        unique=False,
    )
    with op.batch_alter_table("groups") as batch_op:
        batch_op.add_column(sa.Column("fcm_topic", sa.String(length=900), nullable=True))
    with op.batch_alter_table("tenants") as batch_op:
        batch_op.add_column(
            sa.Column("default_locale", sa.String(length=35), server_default="en", nullable=False)
        )


def downgrade() -> None:
    op.drop_index("ix_events_unrouted", table_name="events")
    with op.batch_alter_table("events") as batch_op:
        batch_op.drop_column("redeliveries")
        batch_op.drop_column("redelivered_at")
    with op.batch_alter_table("tenants") as batch_op:
        batch_op.drop_column("default_locale")
    with op.batch_alter_table("groups") as batch_op:
        batch_op.drop_column("fcm_topic")
    op.drop_index(op.f("ix_topic_sends_channel_status_next_attempt_at"), table_name="topic_sends")
    op.drop_table("topic_sends")
    op.drop_table("templates")
    op.drop_table("email_settings")
