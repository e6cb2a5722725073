"""What Nova's compute/api.py does: validate a request, then write the rows.

Nothing here talks to a host. The conductor takes the rows from here and does the
work; the CLI renders what both return.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import or_
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from orchestrator.actions import start_action
from orchestrator.db.engine import Database
from orchestrator.db.models import (
    AgentJob,
    Flavor,
    Host,
    Image,
    Instance,
    InstanceAction,
    InstanceActionEvent,
    InstanceFault,
    JobState,
    TaskState,
    VmState,
    utcnow,
)
from orchestrator.errors import Conflict, InvalidInput, NotFound

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
MAX_COUNT = 100


@dataclass(frozen=True)
class CreateRequest:
    name: str
    flavor: str
    image: str
    count: int = 1


def _choices(names: list[str]) -> str:
    return ", ".join(sorted(names)) if names else "none defined; run `herd inventory apply`"


async def _flavor(session: AsyncSession, name: str) -> Flavor:
    flavor = (await session.exec(select(Flavor).where(Flavor.name == name))).first()
    if flavor is None:
        known = (await session.exec(select(Flavor.name))).all()
        raise NotFound(f"flavor {name!r} not found (known: {_choices(list(known))})")
    return flavor


async def _image(session: AsyncSession, name: str) -> Image:
    image = (await session.exec(select(Image).where(Image.name == name))).first()
    if image is None:
        known = (await session.exec(select(Image.name))).all()
        raise NotFound(f"image {name!r} not found (known: {_choices(list(known))})")
    return image


def instance_names(name: str, count: int) -> list[str]:
    """`openstack server create --max N` naming: NAME-1..N for many, NAME for one."""
    if count < 1 or count > MAX_COUNT:
        raise InvalidInput(f"--count must be between 1 and {MAX_COUNT}, not {count}")
    names = [name] if count == 1 else [f"{name}-{i}" for i in range(1, count + 1)]
    for candidate in names:
        if not NAME.match(candidate):
            raise InvalidInput(
                f"server name {candidate!r} is invalid: use letters, digits, '.', '_' or '-', "
                "start with a letter or digit, at most 63 characters"
            )
    return names


async def create_servers(db: Database, request: CreateRequest) -> list[Instance]:
    """Validate, then write the instance rows (building/scheduling) and their actions."""
    names = instance_names(request.name, request.count)
    request_id = f"req-{uuid.uuid4()}"
    async with db.session() as session:
        flavor = await _flavor(session, request.flavor)
        image = await _image(session, request.image)
        if image.min_ram_mb > flavor.ram_mb:
            raise InvalidInput(
                f"image {image.name!r} needs at least {image.min_ram_mb} MiB of RAM; "
                f"flavor {flavor.name!r} has {flavor.ram_mb}"
            )
        if image.min_disk_gb > flavor.disk_gb:
            raise InvalidInput(
                f"image {image.name!r} needs at least {image.min_disk_gb} GiB of disk; "
                f"flavor {flavor.name!r} has {flavor.disk_gb}"
            )
        taken = (
            await session.exec(
                select(Instance.name).where(
                    col(Instance.name).in_(names), Instance.vm_state != VmState.DELETED
                )
            )
        ).all()
        if taken:
            raise Conflict(f"a server named {sorted(taken)[0]!r} already exists")
        now = utcnow()
        instances = []
        for name in names:
            instance = Instance(
                uuid=str(uuid.uuid4()),
                name=name,
                flavor_name=flavor.name,
                vcpus=flavor.vcpus,
                ram_mb=flavor.ram_mb,
                disk_gb=flavor.disk_gb,
                image_name=image.name,
                image_id=image.id,
                vm_state=VmState.BUILDING,
                task_state=TaskState.SCHEDULING,
                created_at=now,
                updated_at=now,
            )
            session.add(instance)
            await start_action(session, instance.uuid, "create", request_id)
            instances.append(instance)
    return instances


async def find_servers(
    db: Database, refs: list[str], *, include_deleted: bool = False
) -> list[Instance]:
    """Servers by name or UUID, in the order given; every ref must match exactly one."""
    found: list[Instance] = []
    async with db.session() as session:
        for ref in refs:
            query = select(Instance).where(or_(Instance.name == ref, Instance.uuid == ref))
            if not include_deleted:
                query = query.where(Instance.vm_state != VmState.DELETED)
            matches = (await session.exec(query)).all()
            if not matches:
                raise NotFound(f"server {ref!r} not found")
            if len(matches) > 1:
                raise Conflict(f"{len(matches)} servers are named {ref!r}; use the UUID")
            found.append(matches[0])
    return found


@dataclass
class ServerView:
    instance: Instance
    host: str | None
    faults: list[InstanceFault] = field(default_factory=list)
    actions: list[tuple[InstanceAction, list[InstanceActionEvent]]] = field(default_factory=list)
    jobs: list[AgentJob] = field(default_factory=list)


async def host_names(session: AsyncSession) -> dict[int, str]:
    rows = (await session.exec(select(Host.id, Host.name))).all()
    return {host_id: name for host_id, name in rows}


async def list_servers(db: Database, *, include_deleted: bool = False) -> list[ServerView]:
    async with db.session() as session:
        query = select(Instance).order_by(Instance.name, Instance.created_at)
        if not include_deleted:
            query = query.where(Instance.vm_state != VmState.DELETED)
        instances = (await session.exec(query)).all()
        names = await host_names(session)
    return [ServerView(i, names.get(i.host_id) if i.host_id else None) for i in instances]


async def show_server(db: Database, ref: str) -> ServerView:
    (instance,) = await find_servers(db, [ref], include_deleted=True)
    async with db.session() as session:
        names = await host_names(session)
        faults = (
            await session.exec(
                select(InstanceFault)
                .where(InstanceFault.instance_uuid == instance.uuid)
                .order_by(col(InstanceFault.id).desc())
            )
        ).all()
        actions = (
            await session.exec(
                select(InstanceAction)
                .where(InstanceAction.instance_uuid == instance.uuid)
                .order_by(col(InstanceAction.id))
            )
        ).all()
        events = (
            await session.exec(
                select(InstanceActionEvent)
                .where(col(InstanceActionEvent.action_id).in_([a.id for a in actions]))
                .order_by(col(InstanceActionEvent.id))
            )
        ).all()
        jobs = (
            await session.exec(
                select(AgentJob)
                .where(AgentJob.instance_uuid == instance.uuid)
                .order_by(col(AgentJob.created_at))
            )
        ).all()
    return ServerView(
        instance=instance,
        host=names.get(instance.host_id) if instance.host_id else None,
        faults=list(faults),
        actions=[(a, [e for e in events if e.action_id == a.id]) for a in actions],
        jobs=list(jobs),
    )


async def pending_jobs(db: Database, instance_uuids: list[str] | None = None) -> list[AgentJob]:
    """Jobs cast but not yet collected: what a killed orchestrator left behind."""
    async with db.session() as session:
        query = select(AgentJob).where(
            col(AgentJob.collected_at).is_(None),
            col(AgentJob.state).in_([JobState.PENDING, JobState.RUNNING]),
        )
        if instance_uuids is not None:
            query = query.where(col(AgentJob.instance_uuid).in_(instance_uuids))
        return list((await session.exec(query)).all())


def server_dict(view: ServerView) -> dict[str, Any]:
    i = view.instance
    return {
        "uuid": i.uuid,
        "name": i.name,
        "host": view.host,
        "vm_state": i.vm_state,
        "task_state": i.task_state,
        "power_state": i.power_state,
        "flavor": i.flavor_name,
        "image": i.image_name,
        "vcpus": i.vcpus,
        "ram_mb": i.ram_mb,
        "disk_gb": i.disk_gb,
        "created_at": i.created_at.isoformat() if i.created_at else None,
        "launched_at": i.launched_at.isoformat() if i.launched_at else None,
        "deleted_at": i.deleted_at.isoformat() if i.deleted_at else None,
    }


@dataclass
class HostView:
    host: Host
    used_vcpus: int
    used_ram_mb: int
    used_disk_gb: int
    instances: int


async def list_hosts(db: Database) -> list[HostView]:
    from orchestrator.scheduler.loader import load_host_states

    async with db.session() as session:
        hosts = {h.id: h for h in (await session.exec(select(Host).order_by(Host.name))).all()}
        states = {s.id: s for s in await load_host_states(session)}
    return [
        HostView(
            host,
            states[host_id].used_vcpus,
            states[host_id].used_ram_mb,
            states[host_id].used_disk_gb,
            states[host_id].instances,
        )
        for host_id, host in hosts.items()
        if host_id is not None
    ]


async def find_hosts(db: Database, names: list[str] | None) -> list[Host]:
    async with db.session() as session:
        hosts = list((await session.exec(select(Host).order_by(Host.name))).all())
    if not names:
        return hosts
    by_name = {h.name: h for h in hosts}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise NotFound(f"host {missing[0]!r} not found (known: {_choices(list(by_name))})")
    return [by_name[n] for n in names]


def host_status(host: Host) -> str:
    if not host.enabled:
        return "disabled"
    if host.last_seen_at is None:
        return "unknown" if host.last_error is None else "down"
    if host.last_error:
        return "down"
    if host.libvirt_ok is False:
        return "no-libvirt"
    return "up"


def host_dict(view: HostView) -> dict[str, Any]:
    h = view.host
    return {
        "name": h.name,
        "address": h.address,
        "port": h.ssh_port,
        "status": host_status(h),
        "enabled": h.enabled,
        "availability_zone": h.availability_zone,
        "labels": h.labels,
        "domain_type": h.domain_type,
        "vcpus": {
            "total": h.total_vcpus,
            "ratio": h.cpu_ratio,
            "reserved": h.reserved_vcpus,
            "used": view.used_vcpus,
        },
        "ram_mb": {
            "total": h.total_ram_mb,
            "ratio": h.ram_ratio,
            "reserved": h.reserved_ram_mb,
            "used": view.used_ram_mb,
        },
        "disk_gb": {
            "total": h.total_disk_gb,
            "ratio": h.disk_ratio,
            "reserved": h.reserved_disk_gb,
            "used": view.used_disk_gb,
        },
        "instances": view.instances,
        "libvirt_ok": h.libvirt_ok,
        "libvirt_error": h.libvirt_error,
        "agent_version": h.agent_version,
        "last_seen_at": h.last_seen_at.isoformat() if h.last_seen_at else None,
        "last_error": h.last_error,
    }


async def list_flavors(db: Database) -> list[Flavor]:
    async with db.session() as session:
        return list(
            (
                await session.exec(
                    select(Flavor).order_by(Flavor.vcpus, Flavor.ram_mb, Flavor.name)
                )
            ).all()
        )


async def list_images(db: Database) -> list[Image]:
    async with db.session() as session:
        return list((await session.exec(select(Image).order_by(Image.name))).all())
