"""task owner: the instance action that holds a server's task

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("task_action_id", sa.Integer(), nullable=True))
    # A task running while herd is upgraded belongs to the server's newest action.
    op.execute(
        "UPDATE instances SET task_action_id = (SELECT max(id) FROM instance_actions "
        "WHERE instance_actions.instance_uuid = instances.uuid) WHERE task_state IS NOT NULL"
    )


def downgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_column("task_action_id")
