"""outbox due order: every entry has its ``available_at`` (old ones get their ``created_at``),
and the relay's index leads with it, so entries scheduled for later are not scanned past on
every poll

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-21
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Only the index changes: a NOT NULL on the column would make SQLite copy the table (on
    # every fresh database too); Clarion has always written available_at since 0007.
    op.execute("UPDATE outbox SET available_at = created_at WHERE available_at IS NULL")
    op.drop_index("ix_outbox_published_at_id", table_name="outbox")
    op.create_index(
        "ix_outbox_published_at_available_at_id", "outbox", ["published_at", "available_at", "id"]
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_published_at_available_at_id", table_name="outbox")
    op.create_index("ix_outbox_published_at_id", "outbox", ["published_at", "id"])
