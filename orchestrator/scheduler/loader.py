"""Host states and request specs from the DB: a fixed number of queries, however many
hosts, so scheduling 10,000 hosts costs two round trips, not 10,000."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import case, func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from orchestrator.db.models import (
    Allocation,
    Host,
    Instance,
    ServerGroup,
    TaskState,
    host_status,
    utcnow,
)
from orchestrator.scheduler.host_state import HostState
from orchestrator.scheduler.request import GroupState, RequestSpec

# Task states in which a host is busy building the instance (Nova's io_ops).
BUILDING_TASKS = (TaskState.BLOCK_DEVICE_MAPPING, TaskState.NETWORKING, TaskState.SPAWNING)


# The columns the scheduler reads, as plain row tuples: hydrating 10,000 ORM objects
# (and decoding each host's whole facts document for its arch) cost more than the
# filters and weighers together.
_HOST_COLUMNS = (
    col(Host.id),
    col(Host.name),
    col(Host.enabled),
    col(Host.libvirt_ok),
    col(Host.libvirt_error),
    func.coalesce(col(Host.override_vcpus), col(Host.vcpus)),
    func.coalesce(col(Host.override_ram_mb), col(Host.ram_mb)),
    func.coalesce(col(Host.override_disk_gb), col(Host.disk_gb)),
    col(Host.cpu_ratio),
    col(Host.ram_ratio),
    col(Host.disk_ratio),
    col(Host.reserved_vcpus),
    col(Host.reserved_ram_mb),
    col(Host.reserved_disk_gb),
    col(Host.generation),
    col(Host.last_seen_at),
    col(Host.availability_zone),
    col(Host.labels),
    col(Host.disabled_reason),
    col(Host.marked_down),
    col(Host.last_error),
    col(Host.failed_builds),
    col(Host.domain_type),
    col(Host.facts)["arch"].as_string(),
)


def _host_state(row: Sequence[Any], now: datetime) -> HostState:
    (
        host_id,
        name,
        enabled,
        libvirt_ok,
        libvirt_error,
        total_vcpus,
        total_ram_mb,
        total_disk_gb,
        cpu_ratio,
        ram_ratio,
        disk_ratio,
        reserved_vcpus,
        reserved_ram_mb,
        reserved_disk_gb,
        generation,
        last_seen_at,
        availability_zone,
        labels,
        disabled_reason,
        marked_down,
        last_error,
        failed_builds,
        domain_type,
        arch,
    ) = row
    seen_seconds_ago = None
    if last_seen_at is not None:
        if last_seen_at.tzinfo is None:  # SQLite drops the zone; we always store UTC
            last_seen_at = last_seen_at.replace(tzinfo=UTC)
        seen_seconds_ago = (now - last_seen_at).total_seconds()
    return HostState(
        id=host_id,
        name=name,
        enabled=enabled,
        libvirt_ok=libvirt_ok,
        libvirt_error=libvirt_error,
        total_vcpus=total_vcpus,
        total_ram_mb=total_ram_mb,
        total_disk_gb=total_disk_gb,
        cpu_ratio=cpu_ratio,
        ram_ratio=ram_ratio,
        disk_ratio=disk_ratio,
        reserved_vcpus=reserved_vcpus,
        reserved_ram_mb=reserved_ram_mb,
        reserved_disk_gb=reserved_disk_gb,
        generation=generation,
        last_seen_at=last_seen_at,
        availability_zone=availability_zone,
        labels=dict(labels or {}),
        disabled_reason=disabled_reason,
        status=host_status(enabled, marked_down, last_seen_at, last_error, libvirt_ok),
        seen_seconds_ago=seen_seconds_ago,
        arch=arch,
        domain_type=domain_type,
        failed_builds=failed_builds,
    )


async def load_host_states(
    session: AsyncSession,
    host_ids: list[int] | None = None,
    servers: Collection[str] | None = None,
) -> list[HostState]:
    """Every host (or those of ``host_ids``) with what is claimed on it, in a fixed
    number of queries: the hosts, then their claims summed by the database (one row a
    host, not one a claim: 20,000 claims are 20,000 rows to decode otherwise).

    ``instance_uuids`` says which servers a host holds, for the same-host and
    different-host hints: only those of ``servers`` when given (the scheduler passes
    the ones its request names, usually none), every one when None."""
    query = select(*_HOST_COLUMNS).order_by(col(Host.name))
    building = [state.value for state in BUILDING_TASKS]
    claimed = (
        select(
            col(Allocation.host_id),
            func.sum(col(Allocation.vcpus)),
            func.sum(col(Allocation.ram_mb)),
            func.sum(col(Allocation.disk_gb)),
            # A volume or a snapshot (a claim of disk alone) is no server.
            func.count(case((col(Allocation.vcpus) > 0, 1))),
            func.count(case((col(Instance.task_state).in_(building), 1))),  # NULL otherwise
        )
        .join(Instance, col(Instance.uuid) == col(Allocation.instance_uuid), isouter=True)
        .group_by(col(Allocation.host_id))
    )
    held = select(col(Allocation.host_id), col(Allocation.instance_uuid))
    if servers is not None:
        held = held.where(col(Allocation.instance_uuid).in_(list(servers)))
    if host_ids is not None:
        query = query.where(col(Host.id).in_(host_ids))
        claimed = claimed.where(col(Allocation.host_id).in_(host_ids))
        held = held.where(col(Allocation.host_id).in_(host_ids))
    now = utcnow()
    rows = (await session.exec(query)).all()
    states = {row[0]: _host_state(row, now) for row in rows}
    for host_id, vcpus, ram_mb, disk_gb, count, builds in (await session.exec(claimed)).all():
        state = states.get(host_id)
        if state is not None:
            state.used_vcpus = int(vcpus)
            state.used_ram_mb = int(ram_mb)
            state.used_disk_gb = int(disk_gb)
            state.instances = count
            state.builds_in_progress = builds
    if servers is None or servers:
        for host_id, instance_uuid in (await session.exec(held)).all():
            state = states.get(host_id)
            if state is not None:
                state.instance_uuids.add(instance_uuid)
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
        volume_host=stored.get("volume_host"),
        volumes=tuple(stored.get("volumes") or ()),
        group=group,
        same_host=frozenset(stored.get("same_host") or ()),
        different_host=frozenset(stored.get("different_host") or ()),
    )
