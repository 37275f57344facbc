"""outbox due order: every entry has its ``available_at`` (old ones get their ``created_at``),
and the relay's index leads with it, so entries scheduled for later are not scanned past on
every poll

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("UPDATE outbox SET available_at = created_at WHERE available_at IS NULL")
    with op.batch_alter_table("outbox") as batch_op:
        batch_op.alter_column(
            "available_at", existing_type=sa.DateTime(timezone=True), nullable=False
        )
        batch_op.drop_index("ix_outbox_published_at_id")
        batch_op.create_index(
            "ix_outbox_published_at_available_at_id", ["published_at", "available_at", "id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch_op:
        batch_op.drop_index("ix_outbox_published_at_available_at_id")
        batch_op.create_index("ix_outbox_published_at_id", ["published_at", "id"])
        batch_op.alter_column(
            "available_at", existing_type=sa.DateTime(timezone=True), nullable=True
        )
