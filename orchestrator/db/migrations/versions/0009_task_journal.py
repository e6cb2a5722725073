"""the durable task journal: one row per multi-step task, its step and its runner

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("instance_uuid", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("action_id", sa.Integer(), nullable=True),
        sa.Column("migration_uuid", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("source_host_id", sa.Integer(), nullable=True),
        sa.Column("dest_host_id", sa.Integer(), nullable=True),
        sa.Column("step", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("claims", sa.JSON(), nullable=False),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("runner_host", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("runner_pid", sa.Integer(), nullable=False),
        sa.Column("runner_boot_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("runner_started", sa.BigInteger(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["dest_host_id"], ["hosts.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["source_host_id"], ["hosts.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tasks_instance_uuid"), ["instance_uuid"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tasks_instance_uuid"))

    op.drop_table("tasks")
