"""Servers: create (validated, rows written, actions opened), find, list and show.

Nothing here talks to a host: the conductor takes the rows and does the work.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import or_
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from orchestrator.conductor.actions import start_action
from orchestrator.db.duplicates import Duplicate, duplicates_conflict
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
    Volume,
    VolumeStatus,
    utcnow,
)
from orchestrator.db.retry import RetriesExhausted, retrying
from orchestrator.errors import Conflict, InvalidInput, NotFound
from orchestrator.guest_config import BOOT_VOLUME
from orchestrator.names import check_name, choices
from orchestrator.networking import (
    PortView,
    allocate_ports,
    ports_by_instance,
    ports_of,
    resolve_networks,
)
from orchestrator.scheduler.loader import request_specs
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
    # Volumes (by name or UUID) attached once the server is built: it is placed on
    # their host.
    volumes: tuple[str, ...] = ()
    # Boot from a new volume of this size made from the image (its root disk), kept
    # after the server unless delete_on_termination.
    boot_volume_gb: int | None = None
    delete_on_termination: bool = False


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


async def _flavor(session: AsyncSession, name: str) -> Flavor:
    flavor = (await session.exec(select(Flavor).where(Flavor.name == name))).first()
    if flavor is None:
        known = (await session.exec(select(Flavor.name))).all()
        raise NotFound(f"flavor {name!r} not found (known: {choices(list(known))})")
    return flavor


async def _image(session: AsyncSession, name: str) -> Image:
    image = (await session.exec(select(Image).where(Image.name == name))).first()
    if image is None:
        known = (await session.exec(select(Image.name))).all()
        raise NotFound(f"image {name!r} not found (known: {choices(list(known))})")
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
    names = instance_names(request.name, request.count)

    async def write() -> list[Instance]:
        async with (
            duplicates_conflict("instances", lambda dup: _name_taken(names, dup)),
            db.session() as session,
        ):
            instances = await _new_instances(session, request)
            networks = await resolve_networks(session, request.networks)
            for instance in instances:
                action = await start_action(session, instance.uuid, "create", request_id)
                instance.task_action_id = action.id  # the build's task is the create's
                session.add(instance)
                # Now, not inside a port's savepoint: a name another operator took
                # meanwhile is a conflict, not a port that failed to allocate.
                await session.flush()
                await allocate_ports(session, instance.uuid, networks)
        return instances

    try:
        return await retrying(write)  # a deadlock (PostgreSQL 40P01) is retried
    except RetriesExhausted as exc:
        raise Conflict(f"server create kept colliding with others; retry ({exc.last})") from None


def _name_taken(names: list[str], duplicate: Duplicate) -> str:
    """The loser of a race for a name: PostgreSQL says which name, SQLite only that one."""
    name = duplicate.value if duplicate.value in names else None
    if name is None and len(names) == 1:
        name = names[0]
    shown = repr(name) if name else f"one of {', '.join(names)}"
    return f"a server named {shown} already exists (created by another operator just now)"


async def dry_run_plan(
    db: Database, request: CreateRequest, scheduler: FilterScheduler
) -> tuple[Plan, dict[str, str]]:
    """Where `create` would put the servers, validated the same way, writing nothing."""
    async with db.session() as session:
        instances = await _new_instances(session, request)
        await resolve_networks(session, request.networks)
        specs = await request_specs(session, instances)
    return await scheduler.plan(specs), {i.uuid: i.name for i in instances}


async def _boot_volumes(session: AsyncSession, request: CreateRequest) -> dict[str, Any]:
    """The request spec's part for `--volume`: their host (the scheduler's
    VolumeHostFilter holds the server to it) and their names."""
    if not request.volumes:
        return {}
    if request.count != 1:
        raise InvalidInput("--volume attaches a volume to one server: boot with --count 1")
    rows = (
        await session.exec(
            select(Volume, Host.name)
            .join(Host, col(Host.id) == col(Volume.host_id))
            .where(
                or_(col(Volume.name).in_(request.volumes), col(Volume.uuid).in_(request.volumes))
            )
        )
    ).all()
    for wanted in request.volumes:
        if not any(wanted in (v.name, v.uuid) for v, _ in rows):
            raise NotFound(f"volume {wanted!r} not found")
    for volume, _ in rows:
        if volume.status != VolumeStatus.AVAILABLE:
            raise Conflict(f"volume {volume.name} is {volume.status}, not available")
    hosts = sorted({host for _, host in rows})
    if len(hosts) != 1:
        raise InvalidInput(
            "--volume: the volumes are on different hosts ("
            + ", ".join(f"{v.name} on {h}" for v, h in rows)
            + "); a server can only have the local volumes of its own host"
        )
    if request.host is not None and request.host != hosts[0]:
        raise InvalidInput(f"--host {request.host}: the volumes are on {hosts[0]}")
    return {"volume_host": hosts[0], "volumes": sorted(v.name for v, _ in rows)}


MAX_BOOT_VOLUME_GB = 64 * 1024


def _boot_volume(request: CreateRequest, image: Image) -> dict[str, Any]:
    size = request.boot_volume_gb
    assert size is not None
    if isinstance(size, bool) or not 1 <= size <= MAX_BOOT_VOLUME_GB:
        raise InvalidInput(f"--boot-from-volume must be 1 to {MAX_BOOT_VOLUME_GB} GB")
    if image.format not in ("qcow2", "raw") or not image.sha256:
        raise InvalidInput(
            f"--boot-from-volume: image {image.name!r} is {image.format}; a volume is made "
            "from a qcow2 or raw disk image with a known sha256"
        )
    if image.min_disk_gb > size:
        raise InvalidInput(
            f"image {image.name!r} needs at least {image.min_disk_gb} GiB of disk; "
            f"--boot-from-volume {size} is smaller"
        )
    return {"size_gb": size, "delete_on_termination": request.delete_on_termination}


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
        **await _boot_volumes(session, request),
    }
    if image.min_ram_mb > flavor.ram_mb:
        raise InvalidInput(
            f"image {image.name!r} needs at least {image.min_ram_mb} MiB of RAM; "
            f"flavor {flavor.name!r} has {flavor.ram_mb}"
        )
    disk_gb = flavor.disk_gb
    if request.boot_volume_gb is not None:
        request_spec[BOOT_VOLUME] = _boot_volume(request, image)
        disk_gb = 0  # the root disk is the volume, which claims its own size
    elif request.delete_on_termination:
        raise InvalidInput("--delete-on-termination goes with --boot-from-volume")
    elif image.min_disk_gb > flavor.disk_gb:
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
            disk_gb=disk_gb,
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
