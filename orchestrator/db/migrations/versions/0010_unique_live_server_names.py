"""a live server's name is unique: a partial unique index on instances(name)

Two operators creating one name at once both passed the "is it taken" check on
PostgreSQL; the index makes the second insert fail, and `server create` reports it as
a conflict.

A database written before this revision may already hold live servers sharing a name
(made by such a race). The migration does not refuse (herd could then not be used to
fix it): the oldest server keeps the name, each later one is renamed
``NAME-<first 8 characters of its UUID>`` (its UUID, hostname and guest are unchanged;
only herd's label moves), and the upgrade's log says which.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

LIVE = "vm_state != 'deleted'"
log = logging.getLogger("alembic.runtime.migration")


def rename_duplicates(connection: sa.Connection) -> list[tuple[str, str]]:
    """Give every live server but the oldest of each shared name a name of its own;
    returns (old, new) for each renamed."""
    rows = connection.execute(
        sa.text(f"SELECT id, uuid, name FROM instances WHERE {LIVE} ORDER BY name, id")
    ).all()
    taken = {name for _, _, name in rows}
    seen: set[str] = set()
    renamed = []
    for row_id, uuid, name in rows:
        if name not in seen:
            seen.add(name)
            continue
        new = f"{name}-{uuid[:8]}"
        while new in taken:
            new += "x"
        taken.add(new)
        connection.execute(
            sa.text("UPDATE instances SET name = :new WHERE id = :id"), {"new": new, "id": row_id}
        )
        renamed.append((name, new))
    return renamed


def upgrade() -> None:
    for old, new in rename_duplicates(op.get_bind()):
        log.warning("server name %r was shared by live servers: one is now %r", old, new)
    op.create_index(
        "uq_instances_live_name",
        "instances",
        ["name"],
        unique=True,
        sqlite_where=sa.text(LIVE),
        postgresql_where=sa.text(LIVE),
    )


def downgrade() -> None:
    op.drop_index("uq_instances_live_name", table_name="instances")
