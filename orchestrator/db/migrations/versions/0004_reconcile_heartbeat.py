"""reconcile heartbeat

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:

    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("missed_surveys", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("marked_down", sa.Boolean(), server_default="0", nullable=False)
        )


def downgrade() -> None:

    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_column("marked_down")
        batch_op.drop_column("missed_surveys")
