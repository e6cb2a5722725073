"""Host states and request specs from the DB: a fixed number of queries, however many
hosts, so scheduling 10,000 hosts costs three round trips, not 10,000."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from orchestrator.db.models import (
    Allocation,
    Host,
    Instance,
    ServerGroup,
    TaskState,
    utcnow,
)
from orchestrator.scheduler.host_state import HostState
from orchestrator.scheduler.request import GroupState, RequestSpec

# Task states in which a host is busy building the instance (Nova's io_ops).
BUILDING_TASKS = (TaskState.BLOCK_DEVICE_MAPPING, TaskState.NETWORKING, TaskState.SPAWNING)


def host_state_of(host: Host) -> HostState:
    state = HostState.from_host(host)
    state.status = host.status
    state.failed_builds = host.failed_builds
    state.domain_type = host.domain_type
    state.arch = (host.facts or {}).get("arch")
    if host.last_seen_at is not None:
        seen = host.last_seen_at
        if seen.tzinfo is None:  # SQLite drops the zone; we always store UTC
            seen = seen.replace(tzinfo=utcnow().tzinfo)
        state.seen_seconds_ago = (utcnow() - seen).total_seconds()
    return state


async def load_host_states(
    session: AsyncSession, host_ids: list[int] | None = None
) -> list[HostState]:
    query = select(Host).order_by(Host.name)
    if host_ids is not None:
        query = query.where(col(Host.id).in_(host_ids))
    states = {h.id: host_state_of(h) for h in (await session.exec(query)).all()}
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
    placed = await session.exec(
        select(Allocation.host_id, Allocation.instance_uuid, Instance.task_state).join(
            Instance, col(Instance.uuid) == col(Allocation.instance_uuid), isouter=True
        )
    )
    for host_id, instance_uuid, task_state in placed.all():
        state = states.get(host_id)
        if state is not None:
            state.instance_uuids.add(instance_uuid)
            if task_state in BUILDING_TASKS:
                state.builds_in_progress += 1
    return list(states.values())


async def load_group(session: AsyncSession, group_id: int) -> GroupState:
    """The group with where its members hold claims now."""
    group = await session.get(ServerGroup, group_id)
    assert group is not None and group.id is not None
    members = await session.exec(
        select(Allocation.host_id)
        .join(Instance, col(Instance.uuid) == col(Allocation.instance_uuid))
        .where(Instance.group_id == group_id)
    )
    return GroupState(group.id, group.name, group.policy, Counter(members.all()))


async def request_specs(session: AsyncSession, instances: Sequence[Instance]) -> list[RequestSpec]:
    """Specs for instances of one request; they share one GroupState object."""
    groups: dict[int, GroupState] = {}
    specs = []
    for instance in instances:
        group = None
        if instance.group_id is not None:
            if instance.group_id not in groups:
                groups[instance.group_id] = await load_group(session, instance.group_id)
            group = groups[instance.group_id]
        specs.append(spec_of(instance, group))
    return specs


def spec_of(instance: Instance, group: GroupState | None) -> RequestSpec:
    stored: dict[str, Any] = instance.request_spec or {}
    return RequestSpec(
        instance_uuid=instance.uuid,
        vcpus=instance.vcpus,
        ram_mb=instance.ram_mb,
        disk_gb=instance.disk_gb,
        extra_specs=dict(stored.get("extra_specs") or {}),
        image_properties=dict(stored.get("image_properties") or {}),
        availability_zone=stored.get("availability_zone"),
        requested_host=stored.get("requested_host"),
        group=group,
        same_host=frozenset(stored.get("same_host") or ()),
        different_host=frozenset(stored.get("different_host") or ()),
    )
