"""statistics: indexes for producer statistics by group and community

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

READ = sa.text("status = 'read'")


def upgrade() -> None:
    with op.batch_alter_table("inbox_items", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_inbox_items_tenant_id_group_key_status_created_at"),
            ["tenant_id", "group_key", "status", "created_at"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_inbox_items_tenant_id_group_key_created_at_read_at"),
            ["tenant_id", "group_key", "created_at", "read_at"],
            unique=False,
            postgresql_where=READ,
            sqlite_where=READ,
        )

    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_deliveries_tenant_id_group_key_channel_status_created_at"),
            ["tenant_id", "group_key", "channel", "status", "created_at"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index(
            batch_op.f("ix_deliveries_tenant_id_group_key_channel_status_created_at")
        )

    with op.batch_alter_table("inbox_items", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_inbox_items_tenant_id_group_key_created_at_read_at"))
        batch_op.drop_index(batch_op.f("ix_inbox_items_tenant_id_group_key_status_created_at"))
