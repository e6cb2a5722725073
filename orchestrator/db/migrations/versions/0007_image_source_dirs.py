"""image source dirs and maximum image size per host

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("image_source_dirs", sa.JSON(), server_default="[]", nullable=False)
        )
        batch_op.add_column(
            sa.Column("max_image_gb", sa.Integer(), server_default="64", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_column("max_image_gb")
        batch_op.drop_column("image_source_dirs")
