"""Migration records and the claims they hold, shared by resize and live migration.

While a server moves, its old claim belongs to the migration (Nova's migration-based
allocations): ``begin`` hands it over, ``finish`` releases it once the move is kept,
``give_back`` returns it to the server (and releases the new one) when the server
stays or comes back where it was.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from orchestrator.db.models import Host, Instance, Migration, utcnow
from orchestrator.scheduler.claims import hand_over, release


async def begin(
    db: AsyncSession, instance: Instance, source: Host, kind: str, **fields: Any
) -> Migration:
    migration = Migration(
        uuid=str(uuid.uuid4()), instance_uuid=instance.uuid, kind=kind,
        source_host_id=source.id, old_vm_state=instance.vm_state,
        created_at=utcnow(), updated_at=utcnow(), **fields,
    )  # fmt: skip
    db.add(migration)
    await hand_over(db, instance.uuid, migration.uuid)
    return migration


async def mark(
    db: AsyncSession, migration_uuid: str, status: str, *, dest_id: int | None = None
) -> None:
    row = (await db.exec(select(Migration).where(Migration.uuid == migration_uuid))).one()
    row.status, row.updated_at = status, utcnow()
    if dest_id is not None:
        row.dest_host_id = dest_id
    db.add(row)


async def finish(
    db: AsyncSession, migration_uuid: str, status: str, *, dest_id: int | None = None
) -> None:
    """The move is kept: the old claim goes."""
    await release(db, migration_uuid)
    await mark(db, migration_uuid, status, dest_id=dest_id)


async def give_back(db: AsyncSession, instance_uuid: str, migration_uuid: str, status: str) -> None:
    """The server is where it came from: its new claim (if any) is released and its
    old one handed back from the migration."""
    await release(db, instance_uuid)
    await hand_over(db, migration_uuid, instance_uuid)
    await mark(db, migration_uuid, status)
