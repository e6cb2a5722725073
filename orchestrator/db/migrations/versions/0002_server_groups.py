"""server groups, request specs, build failures

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 09:13:42.875944
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "server_groups",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("policy", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("failed_builds", sa.Integer(), server_default="0", nullable=False)
        )

    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("group_id", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("request_spec", sa.JSON(), server_default="{}", nullable=False)
        )
        batch_op.create_foreign_key(
            "fk_instances_group_id", "server_groups", ["group_id"], ["id"], ondelete="RESTRICT"
        )


def downgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_constraint("fk_instances_group_id", type_="foreignkey")
        batch_op.drop_column("request_spec")
        batch_op.drop_column("group_id")

    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_column("failed_builds")

    op.drop_table("server_groups")
