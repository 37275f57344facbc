"""device side: preferences per channel, email status, token keys, webhooks, statistics indexes

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "token_keys",
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("kid", sa.String(length=64), nullable=False),
        sa.Column("algorithm", sa.String(length=8), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("algorithm IN ('ES256', 'RS256')", name=op.f("ck_token_keys_algorithm")),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_token_keys_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "kid", name=op.f("pk_token_keys")),
    )
    op.create_table(
        "webhooks",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("cursor", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_webhooks_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhooks")),
        sa.UniqueConstraint("tenant_id", "name", name=op.f("uq_webhooks_tenant_id_name")),
    )
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("category", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("group_key", sa.String(length=255), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_deliveries_tenant_id_category_created_at"),
            ["tenant_id", "category", "created_at"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_deliveries_tenant_id_group_key_created_at"),
            ["tenant_id", "group_key", "created_at"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_deliveries_user_id_created_at"), ["user_id", "created_at"], unique=False
        )

    with op.batch_alter_table("inbox_items", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_inbox_items_tenant_id_category_created_at"),
            ["tenant_id", "category", "created_at"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_inbox_items_tenant_id_group_key_created_at"),
            ["tenant_id", "group_key", "created_at"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_inbox_items_user_id_created_at"), ["user_id", "created_at"], unique=False
        )

    # Preferences become one row per channel. Nothing wrote the old table, so it is replaced
    # rather than converted.
    op.drop_table("preferences")
    op.create_table(
        "preferences",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("scope IN ('group', 'category')", name=op.f("ck_preferences_scope")),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_preferences_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_preferences_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_preferences")),
        sa.UniqueConstraint(
            "user_id",
            "scope",
            "key",
            "channel",
            name=op.f("uq_preferences_user_id_scope_key_channel"),
        ),
    )

    with op.batch_alter_table("transitions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_transitions_tenant_id_id"), ["tenant_id", "id"], unique=False
        )

    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "email_status", sa.String(length=16), server_default="subscribed", nullable=False
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("email_status")

    with op.batch_alter_table("transitions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_transitions_tenant_id_id"))

    op.drop_table("preferences")
    op.create_table(
        "preferences",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column(
            "channels",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("scope IN ('group', 'category')", name=op.f("ck_preferences_scope")),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_preferences_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_preferences_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_preferences")),
        sa.UniqueConstraint(
            "user_id", "scope", "key", name=op.f("uq_preferences_user_id_scope_key")
        ),
    )

    with op.batch_alter_table("inbox_items", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_inbox_items_user_id_created_at"))
        batch_op.drop_index(batch_op.f("ix_inbox_items_tenant_id_group_key_created_at"))
        batch_op.drop_index(batch_op.f("ix_inbox_items_tenant_id_category_created_at"))

    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deliveries_user_id_created_at"))
        batch_op.drop_index(batch_op.f("ix_deliveries_tenant_id_group_key_created_at"))
        batch_op.drop_index(batch_op.f("ix_deliveries_tenant_id_category_created_at"))
        batch_op.drop_column("group_key")
        batch_op.drop_column("category")

    op.drop_table("webhooks")
    op.drop_table("token_keys")
