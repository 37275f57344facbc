"""quiet hours: users' and tenants' windows, tenants' default time zone; notifications' push
options

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def _hhmm(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.String(5), nullable=True)


def upgrade() -> None:
    with op.batch_alter_table("users") as batch_op:
        batch_op.add_column(_hhmm("quiet_start"))
        batch_op.add_column(_hhmm("quiet_end"))
    with op.batch_alter_table("tenants") as batch_op:
        batch_op.add_column(_hhmm("quiet_start"))
        batch_op.add_column(_hhmm("quiet_end"))
        batch_op.add_column(sa.Column("default_timezone", sa.String(64), nullable=True))
    with op.batch_alter_table("notifications") as batch_op:
        batch_op.add_column(
            sa.Column(
                "push",
                sa.JSON().with_variant(postgresql.JSONB(), "postgresql"),
                nullable=True,
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("notifications") as batch_op:
        batch_op.drop_column("push")
    with op.batch_alter_table("tenants") as batch_op:
        batch_op.drop_column("default_timezone")
        batch_op.drop_column("quiet_end")
        batch_op.drop_column("quiet_start")
    with op.batch_alter_table("users") as batch_op:
        batch_op.drop_column("quiet_end")
        batch_op.drop_column("quiet_start")
