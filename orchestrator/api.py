"""What Nova's compute/api.py does: validate a request, then write the rows.

Nothing here talks to a host. The conductor takes the rows from here and does the
work; the CLI renders what both return.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import or_
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from orchestrator.conductor.actions import start_action
from orchestrator.db.engine import Database
from orchestrator.db.models import (
    OPEN_MIGRATIONS,
    AgentJob,
    Flavor,
    Host,
    Image,
    Instance,
    InstanceAction,
    InstanceActionEvent,
    InstanceFault,
    JobState,
    KeyPair,
    Migration,
    ServerGroup,
    TaskState,
    VmState,
    utcnow,
)
from orchestrator.errors import Conflict, InvalidInput, NotFound
from orchestrator.names import check_name
from orchestrator.networking import (
    PortView,
    allocate_ports,
    ports_by_instance,
    ports_of,
    resolve_networks,
)
from orchestrator.scheduler.loader import request_specs
from orchestrator.scheduler.request import GROUP_POLICIES
from orchestrator.scheduler.scheduler import FilterScheduler, Plan

MAX_COUNT = 100


@dataclass(frozen=True)
class CreateRequest:
    name: str
    flavor: str
    image: str
    count: int = 1
    # Nova's min_count: boot at least this many of `count`, or none (default: all).
    min_count: int | None = None
    group: str | None = None
    availability_zone: str | None = None
    host: str | None = None
    # Scheduler hints, by server name or UUID: on a host holding one of these servers
    # (same_host) or on none of theirs (different_host).
    same_host: tuple[str, ...] = ()
    different_host: tuple[str, ...] = ()
    # One port per network, in order; none given: the default network, if any.
    networks: tuple[str, ...] = ()
    key_name: str | None = None
    user_data: str | None = None  # already checked by cloudinit.check_user_data


NOT_BOOTABLE = {"aki": "a kernel (aki)", "ari": "a ramdisk (ari)"}


def hostname_of(name: str) -> str:
    """The guest's hostname: the server name made a DNS label (Nova's sanitisation)."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower().replace("_", "-").replace(".", "-"))
    return label.strip("-")[:63] or "server"


async def _key_pair(session: AsyncSession, name: str) -> KeyPair:
    row = (await session.exec(select(KeyPair).where(KeyPair.name == name))).first()
    if row is None:
        known = (await session.exec(select(KeyPair.name))).all()
        raise NotFound(f"key pair {name!r} not found (known: {', '.join(sorted(known)) or 'none'})")
    return row


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
        check_name("server", candidate)
    return names


async def _placement_constraints(
    session: AsyncSession, request: CreateRequest
) -> tuple[int | None, dict[str, Any]]:
    """Check the request's group, zone, host and hints; return the group id and the
    constraints stored with each instance for the scheduler (now and on reschedule)."""
    if request.min_count is not None and not 1 <= request.min_count <= request.count:
        raise InvalidInput(
            f"--min-count must be between 1 and --count ({request.count}), not {request.min_count}"
        )
    group_id = None
    if request.group is not None:
        group = (
            await session.exec(select(ServerGroup).where(ServerGroup.name == request.group))
        ).first()
        if group is None:
            known = (await session.exec(select(ServerGroup.name))).all()
            raise NotFound(f"server group {request.group!r} not found (known: {_names(known)})")
        group_id = group.id
    if request.availability_zone is not None:
        zones = set((await session.exec(select(Host.availability_zone))).all())
        if request.availability_zone not in zones:
            raise NotFound(
                f"availability zone {request.availability_zone!r} not found "
                f"(known: {_names(zones)})"
            )
    if (
        request.host is not None
        and (await session.exec(select(Host).where(Host.name == request.host))).first() is None
    ):
        known = (await session.exec(select(Host.name))).all()
        raise NotFound(f"host {request.host!r} not found (known: {_names(known)})")
    hints: dict[str, list[str]] = {}
    for hint, refs in (
        ("same_host", request.same_host),
        ("different_host", request.different_host),
    ):
        uuids = []
        for ref in refs:
            found = (
                await session.exec(
                    select(Instance.uuid).where(
                        or_(Instance.name == ref, Instance.uuid == ref),
                        Instance.vm_state != VmState.DELETED,
                    )
                )
            ).all()
            if not found:
                raise NotFound(f"{hint} hint: server {ref!r} not found")
            uuids.extend(found)
        hints[hint] = sorted(uuids)
    return group_id, {
        "availability_zone": request.availability_zone,
        "requested_host": request.host,
        **hints,
    }


def _names(names: Any) -> str:
    return ", ".join(sorted(names)) or "none"


async def create_servers(db: Database, request: CreateRequest) -> list[Instance]:
    """Validate, then write the instance rows (building/scheduling) and their actions."""
    request_id = f"req-{uuid.uuid4()}"
    async with db.session() as session:
        instances = await _new_instances(session, request)
        networks = await resolve_networks(session, request.networks)
        for instance in instances:
            action = await start_action(session, instance.uuid, "create", request_id)
            instance.task_action_id = action.id  # the build's task is the create's
            session.add(instance)
            await allocate_ports(session, instance.uuid, networks)
    return instances


async def dry_run_plan(
    db: Database, request: CreateRequest, scheduler: FilterScheduler
) -> tuple[Plan, dict[str, str]]:
    """Where `create` would put the servers, validated the same way, writing nothing."""
    async with db.session() as session:
        instances = await _new_instances(session, request)
        await resolve_networks(session, request.networks)
        specs = await request_specs(session, instances)
    return await scheduler.plan(specs), {i.uuid: i.name for i in instances}


async def hosts_last_seen(db: Database) -> dict[str, datetime | None]:
    """When each host's facts were last read, by name: how old the knowledge is that a
    dry run planned from (None: never reached)."""
    async with db.read() as session:
        rows = (await session.exec(select(Host.name, Host.last_seen_at).order_by(Host.name))).all()
    return {name: seen for name, seen in rows}


async def _new_instances(session: AsyncSession, request: CreateRequest) -> list[Instance]:
    names = instance_names(request.name, request.count)
    flavor = await _flavor(session, request.flavor)
    image = await _image(session, request.image)
    if image.format in NOT_BOOTABLE:
        raise InvalidInput(
            f"image {image.name!r} is {NOT_BOOTABLE[image.format]}, not a bootable disk; "
            "boot the disk image whose kernel_id/ramdisk_id name it"
        )
    key = await _key_pair(session, request.key_name) if request.key_name else None
    group_id, constraints = await _placement_constraints(session, request)
    request_spec = {
        "extra_specs": dict(flavor.extra_specs),
        "image_properties": dict(image.properties),
        **constraints,
    }
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
            group_id=group_id,
            hostname=hostname_of(name),
            key_name=key.name if key else None,
            key_data=key.public_key if key else None,
            user_data=request.user_data,
            request_spec=request_spec,
            vm_state=VmState.BUILDING,
            task_state=TaskState.SCHEDULING,
            created_at=now,
            updated_at=now,
        )
        instances.append(instance)
    return instances


async def find_servers(
    db: Database, refs: list[str], *, include_deleted: bool = False
) -> list[Instance]:
    """Servers by name or UUID, in the order given; every ref must match exactly one."""
    found: list[Instance] = []
    async with db.read() as session:
        for ref in refs:
            query = select(Instance).where(or_(Instance.name == ref, Instance.uuid == ref))
            if not include_deleted:
                query = query.where(Instance.vm_state != VmState.DELETED)
            matches = (await session.exec(query)).all()
            if not matches:
                raise NotFound(f"server {ref!r} not found")
            if len(matches) > 1 and include_deleted:
                # A name reused after a delete means the live server (or the newest).
                live = [m for m in matches if m.vm_state != VmState.DELETED]
                matches = live or sorted(matches, key=lambda m: m.id or 0)[-1:]
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
    group: str | None = None
    ports: list[PortView] = field(default_factory=list)
    resize: dict[str, Any] | None = None  # an open resize: from where, which sizes

    @property
    def addresses(self) -> str:
        """``net=ip`` per port, as `openstack server list` shows them."""
        return ", ".join(f"{p.network}={p.ip or p.mac}" for p in self.ports)


async def host_names(session: AsyncSession) -> dict[int, str]:
    rows = (await session.exec(select(Host.id, Host.name))).all()
    return {host_id: name for host_id, name in rows}


async def list_servers(db: Database, *, include_deleted: bool = False) -> list[ServerView]:
    async with db.read() as session:
        query = select(Instance).order_by(Instance.name, Instance.created_at)
        if not include_deleted:
            query = query.where(Instance.vm_state != VmState.DELETED)
        instances = (await session.exec(query)).all()
        names = await host_names(session)
        ports = await ports_by_instance(session, [i.uuid for i in instances])
    return [
        ServerView(i, names.get(i.host_id) if i.host_id else None, ports=ports.get(i.uuid, []))
        for i in instances
    ]


async def show_server(db: Database, ref: str) -> ServerView:
    (instance,) = await find_servers(db, [ref], include_deleted=True)
    async with db.read() as session:
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
        group = await session.get(ServerGroup, instance.group_id) if instance.group_id else None
        ports = await ports_of(session, instance.uuid)
        migration = (
            await session.exec(
                select(Migration).where(
                    Migration.instance_uuid == instance.uuid,
                    col(Migration.status).in_(OPEN_MIGRATIONS),
                )
            )
        ).first()
    resize = None
    if migration is not None:
        resize = {
            "status": migration.status,
            "source": names.get(migration.source_host_id or -1),
            "old_flavor": migration.old_flavor.get("name"),
            "new_flavor": migration.new_flavor.get("name"),
        }
    return ServerView(
        resize=resize,
        ports=ports,
        instance=instance,
        group=group.name if group else None,
        host=names.get(instance.host_id) if instance.host_id else None,
        faults=list(faults),
        actions=[(a, [e for e in events if e.action_id == a.id]) for a in actions],
        jobs=list(jobs),
    )


async def pending_jobs(db: Database, instance_uuids: list[str] | None = None) -> list[AgentJob]:
    """Jobs cast but not yet collected: what a killed orchestrator left behind."""
    async with db.read() as session:
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
        "group": view.group,
        "hostname": i.hostname,
        "key_name": i.key_name,
        "addresses": [p.to_dict() for p in view.ports],
        "request_spec": i.request_spec,
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

    async with db.read() as session:
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
    async with db.read() as session:
        hosts = list((await session.exec(select(Host).order_by(Host.name))).all())
    if not names:
        return hosts
    by_name = {h.name: h for h in hosts}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise NotFound(f"host {missing[0]!r} not found (known: {_choices(list(by_name))})")
    return [by_name[n] for n in names]


def host_status(host: Host) -> str:
    return host.status


def host_dict(view: HostView) -> dict[str, Any]:
    h = view.host
    return {
        "name": h.name,
        "address": h.address,
        "port": h.ssh_port,
        "status": host_status(h),
        "enabled": h.enabled,
        "disabled_reason": None if h.enabled else h.disabled_reason,
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
    async with db.read() as session:
        return list(
            (
                await session.exec(
                    select(Flavor).order_by(Flavor.vcpus, Flavor.ram_mb, Flavor.name)
                )
            ).all()
        )


async def list_images(db: Database) -> list[Image]:
    async with db.read() as session:
        return list((await session.exec(select(Image).order_by(Image.name))).all())


# -- server groups -------------------------------------------------------------


@dataclass(frozen=True)
class GroupView:
    group: ServerGroup
    members: list[tuple[str, str | None]]  # (server name, host name)


async def create_group(db: Database, name: str, policy: str) -> ServerGroup:
    check_name("group", name)
    if policy not in GROUP_POLICIES:
        raise InvalidInput(f"policy {policy!r} is not one of {', '.join(GROUP_POLICIES)}")
    async with db.session() as session:
        exists = (await session.exec(select(ServerGroup).where(ServerGroup.name == name))).first()
        if exists is not None:
            raise Conflict(f"a server group named {name!r} already exists")
        group = ServerGroup(name=name, policy=policy, created_at=utcnow())
        session.add(group)
    return group


async def list_groups(db: Database, names: list[str] | None = None) -> list[GroupView]:
    async with db.read() as session:
        query = select(ServerGroup).order_by(ServerGroup.name)
        if names:
            query = query.where(col(ServerGroup.name).in_(names))
        groups = (await session.exec(query)).all()
        missing = set(names or ()) - {g.name for g in groups}
        if missing:
            raise NotFound(f"server group {sorted(missing)[0]!r} not found")
        rows = (
            await session.exec(
                select(Instance.group_id, Instance.name, Host.name)
                .join(Host, col(Host.id) == col(Instance.host_id), isouter=True)
                .where(Instance.group_id.is_not(None), Instance.vm_state != VmState.DELETED)  # type: ignore[union-attr]
                .order_by(Instance.name)
            )
        ).all()
    members: dict[int, list[tuple[str, str | None]]] = {}
    for group_id, server, host in rows:
        members.setdefault(group_id, []).append((server, host))
    return [GroupView(g, members.get(g.id or 0, [])) for g in groups]


async def delete_group(db: Database, name: str) -> None:
    (view,) = await list_groups(db, [name])
    if view.members:
        raise Conflict(
            f"server group {name!r} still has {len(view.members)} server(s): "
            f"{', '.join(m for m, _ in view.members[:5])}; delete them first"
        )
    async with db.session() as session:
        group = await session.get(ServerGroup, view.group.id)
        if group is not None:
            await session.delete(group)


def group_dict(view: GroupView) -> dict[str, Any]:
    return {
        "name": view.group.name,
        "policy": view.group.policy,
        "members": [{"server": s, "host": h} for s, h in view.members],
        "created_at": view.group.created_at,
    }
