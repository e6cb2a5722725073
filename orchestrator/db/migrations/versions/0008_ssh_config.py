"""ssh user and port may be unset (OpenSSH client config decides); ssh config file and ProxyJump

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Rows written before keep their values: an explicit root@:22 until the next
    # `herd inventory apply` says otherwise.
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.alter_column("ssh_port", existing_type=sa.Integer(), nullable=True)
        batch_op.alter_column(
            "ssh_user", existing_type=sqlmodel.sql.sqltypes.AutoString(), nullable=True
        )
        batch_op.add_column(
            sa.Column("ssh_config", sqlmodel.sql.sqltypes.AutoString(), nullable=True)
        )
        batch_op.add_column(
            sa.Column("ssh_proxy_jump", sqlmodel.sql.sqltypes.AutoString(), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_column("ssh_proxy_jump")
        batch_op.drop_column("ssh_config")
    op.execute("UPDATE hosts SET ssh_port = 22 WHERE ssh_port IS NULL")
    op.execute("UPDATE hosts SET ssh_user = 'root' WHERE ssh_user IS NULL")
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.alter_column("ssh_port", existing_type=sa.Integer(), nullable=False)
        batch_op.alter_column(
            "ssh_user", existing_type=sqlmodel.sql.sqltypes.AutoString(), nullable=False
        )
