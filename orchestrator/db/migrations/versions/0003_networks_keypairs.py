"""networks, ports, keypairs, cloud-init fields

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "key_pairs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("fingerprint", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("type", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "networks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("cidr", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("gateway", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("pool_start", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("pool_end", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("dns", sa.JSON(), nullable=False),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "ports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("instance_uuid", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("network_id", sa.Integer(), nullable=False),
        sa.Column("device_index", sa.Integer(), nullable=False),
        sa.Column("mac", sa.String(length=17), nullable=False),
        sa.Column("ip", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["network_id"], ["networks.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("mac"),
        sa.UniqueConstraint("network_id", "ip", name="uq_ports_network_ip"),
    )
    with op.batch_alter_table("ports", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ports_instance_uuid"), ["instance_uuid"], unique=False)

    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "managed_by",
                sqlmodel.sql.sqltypes.AutoString(),
                server_default="inventory",
                nullable=False,
            )
        )

    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("hostname", sqlmodel.sql.sqltypes.AutoString(), nullable=True)
        )
        batch_op.add_column(
            sa.Column("key_name", sqlmodel.sql.sqltypes.AutoString(), nullable=True)
        )
        batch_op.add_column(sa.Column("key_data", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("user_data", sa.Text(), nullable=True))


def downgrade() -> None:

    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_column("user_data")
        batch_op.drop_column("key_data")
        batch_op.drop_column("key_name")
        batch_op.drop_column("hostname")

    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_column("managed_by")

    with op.batch_alter_table("ports", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ports_instance_uuid"))

    op.drop_table("ports")
    op.drop_table("networks")
    op.drop_table("key_pairs")
