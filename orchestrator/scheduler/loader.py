"""Host states from the DB: one query per table, however many hosts."""

from __future__ import annotations

from sqlalchemy import func
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from orchestrator.db.models import Allocation, Host
from orchestrator.scheduler.host_state import HostState


async def load_host_states(
    session: AsyncSession, host_ids: list[int] | None = None
) -> list[HostState]:
    query = select(Host).order_by(Host.name)
    if host_ids is not None:
        query = query.where(Host.id.in_(host_ids))  # type: ignore[union-attr]
    hosts = (await session.exec(query)).all()
    states = {h.id: HostState.from_host(h) for h in hosts}
    usage = await session.exec(
        select(
            Allocation.host_id,
            func.sum(Allocation.vcpus),
            func.sum(Allocation.ram_mb),
            func.sum(Allocation.disk_gb),
            func.count(),
        ).group_by(Allocation.host_id)
    )
    for host_id, vcpus, ram_mb, disk_gb, count in usage.all():
        state = states.get(host_id)
        if state is not None:
            state.used_vcpus, state.used_ram_mb, state.used_disk_gb = (
                int(vcpus),
                int(ram_mb),
                int(disk_gb),
            )
            state.instances = int(count)
    return list(states.values())
