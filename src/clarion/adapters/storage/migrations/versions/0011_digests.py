"""digests: rules' batches of a recipient's events, one open digest per user, rule, key and
channel, and its entries

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        "digests",
        sa.Column("id", big_id, autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("user_id", big_id, nullable=False),
        sa.Column("rule_key", sa.String(length=255), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivery_id", big_id, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_digests_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_digests_user_id_users"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["deliveries.id"],
            name=op.f("fk_digests_delivery_id_deliveries"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_digests")),
    )
    op.create_index(
        "uq_digests_open",
        "digests",
        ["tenant_id", "user_id", "rule_key", "key", "channel"],
        unique=True,
        sqlite_where=sa.text("status = 'open'"),
        postgresql_where=sa.text("status = 'open'"),
    )
    op.create_index(op.f("ix_digests_status_due_at"), "digests", ["status", "due_at"])
    op.create_index(op.f("ix_digests_delivery_id"), "digests", ["delivery_id"])
    op.create_table(
        "digest_entries",
        sa.Column("id", big_id, autoincrement=True, nullable=False),
        sa.Column("digest_id", big_id, nullable=False),
        sa.Column("item_id", big_id, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["digest_id"],
            ["digests.id"],
            name=op.f("fk_digest_entries_digest_id_digests"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["item_id"],
            ["inbox_items.id"],
            name=op.f("fk_digest_entries_item_id_inbox_items"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_digest_entries")),
        sa.UniqueConstraint(
            "digest_id", "item_id", name=op.f("uq_digest_entries_digest_id_item_id")
        ),
    )


def downgrade() -> None:
    op.drop_table("digest_entries")
    op.drop_index(op.f("ix_digests_delivery_id"), table_name="digests")
    op.drop_index(op.f("ix_digests_status_due_at"), table_name="digests")
    op.drop_index("uq_digests_open", table_name="digests")
    op.drop_table("digests")
