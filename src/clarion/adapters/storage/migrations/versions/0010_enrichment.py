"""enrichment: the tenant's enrichment webhook (URL and sealed secret)

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch_op:
        batch_op.add_column(sa.Column("enrichment_url", sa.String(2000), nullable=True))
        batch_op.add_column(sa.Column("enrichment_secret", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tenants") as batch_op:
        batch_op.drop_column("enrichment_secret")
        batch_op.drop_column("enrichment_url")
