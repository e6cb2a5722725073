"""Claims: an instance's allocation, written only if the host still has room.

The check and the write share one transaction guarded by the host's generation
number (Placement's resource-provider generation): if another process claimed on
the host since we read it, the generation moved, our update matches no row, and the
caller re-reads and tries again. Two operators booting at once can never
oversubscribe a host.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sqlalchemy import delete, insert, select, tuple_, update
from sqlmodel.ext.asyncio.session import AsyncSession

from orchestrator.db.models import Allocation, Host, utcnow
from orchestrator.scheduler.request import RequestSpec

if TYPE_CHECKING:
    from orchestrator.scheduler.engine import Choice


async def try_claim(
    session: AsyncSession, host_id: int, generation: int, spec: RequestSpec
) -> bool:
    """Claim on the host as the scheduler saw it (at ``generation``); False when that
    view was stale."""
    bumped = await session.exec(
        update(Host)
        .where(Host.id == host_id, Host.generation == generation)  # type: ignore[arg-type]
        .values(generation=Host.generation + 1)
    )
    if bumped.rowcount != 1:
        return False
    session.add(
        Allocation(
            instance_uuid=spec.instance_uuid,
            host_id=host_id,
            vcpus=spec.vcpus,
            ram_mb=spec.ram_mb,
            disk_gb=spec.disk_gb,
            created_at=utcnow(),
        )
    )
    return True


async def claim_all(
    session: AsyncSession,
    generations: dict[int, int],
    chosen: Sequence[tuple[Choice, RequestSpec]],
) -> bool:
    """A whole request's claims, in the caller's transaction: every host in
    ``generations`` (host id -> the generation the scheduler saw) is bumped once if it
    is still at that generation. False when one moved; the caller then rolls the
    transaction back, so nothing of the request is written.

    Three statements whatever the request's size (a thousand servers on a thousand
    hosts is not a thousand round trips): lock the hosts still at the generation seen,
    in id order so two requests never wait for each other's hosts in opposite orders
    (a deadlock on PostgreSQL; SQLite's BEGIN IMMEDIATE already runs one writer at a
    time), bump them, insert the allocations in one multi-row INSERT."""
    seen = sorted(generations.items())
    still = await session.exec(
        select(Host.id)
        .where(tuple_(Host.id, Host.generation).in_(seen))  # type: ignore[arg-type]
        .order_by(Host.id)  # type: ignore[arg-type]
        .with_for_update()
    )
    if len(still.all()) != len(seen):
        return False
    await session.exec(
        update(Host)
        .where(Host.id.in_(generations))  # type: ignore[union-attr]
        .values(generation=Host.generation + 1)
    )
    now = utcnow()
    rows = [
        {
            "instance_uuid": spec.instance_uuid,
            "host_id": choice.host.id,
            "vcpus": spec.vcpus,
            "ram_mb": spec.ram_mb,
            "disk_gb": spec.disk_gb,
            "created_at": now,
        }
        for choice, spec in chosen
        if choice.host is not None
    ]
    if rows:
        await session.exec(insert(Allocation), params=rows)
    return True


async def release(session: AsyncSession, instance_uuid: str) -> None:
    """Give back what an instance held; bumping the generation tells concurrent
    schedulers their view of the host changed."""
    result = await session.exec(
        delete(Allocation)
        .where(Allocation.instance_uuid == instance_uuid)
        .returning(Allocation.host_id)  # type: ignore[arg-type]
    )
    for (host_id,) in result.all():
        await session.exec(
            update(Host).where(Host.id == host_id).values(generation=Host.generation + 1)  # type: ignore[arg-type]
        )


async def hand_over(session: AsyncSession, from_consumer: str, to_consumer: str) -> None:
    """Move a claim to another consumer on the same host, unchanged: a server's old size
    to its migration while a resize is open, and back on revert (Nova's migration
    allocations). The host's usage does not change, so neither does its generation."""
    await session.exec(
        update(Allocation)
        .where(Allocation.instance_uuid == from_consumer)  # type: ignore[arg-type]
        .values(instance_uuid=to_consumer)
    )
