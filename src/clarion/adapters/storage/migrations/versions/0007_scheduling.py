"""scheduling and expiry: events' send_at, expires_at, cancelled_at; outbox available_at;
the expiry of notifications, copied to their items and deliveries

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


EXPIRING = sa.text("status = 'pending' AND expires_at IS NOT NULL")


def _timestamp(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=True)


def upgrade() -> None:
    with op.batch_alter_table("events") as batch_op:
        batch_op.add_column(_timestamp("send_at"))
        batch_op.add_column(_timestamp("expires_at"))
        batch_op.add_column(_timestamp("cancelled_at"))
    with op.batch_alter_table("outbox") as batch_op:
        batch_op.add_column(_timestamp("available_at"))
    with op.batch_alter_table("notifications") as batch_op:
        batch_op.add_column(_timestamp("expires_at"))
    for table in ("inbox_items", "deliveries"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(_timestamp("expires_at"))
        op.create_index(
            f"ix_{table}_expiring",
            table,
            ["expires_at"],
            unique=False,
            postgresql_where=EXPIRING,
            sqlite_where=EXPIRING,
        )


def downgrade() -> None:
    for table in ("deliveries", "inbox_items"):
        op.drop_index(f"ix_{table}_expiring", table_name=table)
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_column("expires_at")
    with op.batch_alter_table("notifications") as batch_op:
        batch_op.drop_column("expires_at")
    with op.batch_alter_table("outbox") as batch_op:
        batch_op.drop_column("available_at")
    with op.batch_alter_table("events") as batch_op:
        batch_op.drop_column("cancelled_at")
        batch_op.drop_column("expires_at")
        batch_op.drop_column("send_at")
