"""Make the DB match an inventory: create, update, remove — all or nothing.

Validation happens before any write, and the writes share one transaction, so a
refused change (a host that still has servers) leaves the DB exactly as it was.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import or_
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from orchestrator.db.duplicates import Duplicate, duplicates_conflict
from orchestrator.db.engine import Database
from orchestrator.db.models import (
    OPEN_MIGRATIONS,
    Allocation,
    Flavor,
    Host,
    Image,
    Instance,
    Migration,
    Network,
    Port,
    VmState,
    utcnow,
)
from orchestrator.errors import Conflict, InvalidInput
from orchestrator.image_delivery import unsafe_local_image
from orchestrator.inventory.models import (
    FlavorSpec,
    HostSpec,
    ImageSpec,
    Inventory,
    NetworkSpec,
)

# Image properties that name another image (Nova's AMI triple), and the format it must have.
IMAGE_REFERENCES = {"kernel_id": "aki", "ramdisk_id": "ari"}


@dataclass(frozen=True)
class Change:
    kind: str  # host | flavor | image | network
    name: str
    verb: str  # create | update | remove | unchanged
    fields: tuple[str, ...] = ()


def host_values(spec: HostSpec) -> dict[str, Any]:
    return {
        "address": spec.address,
        "ssh_port": spec.ssh.port,
        "ssh_user": spec.ssh.user,
        "ssh_key": str(spec.ssh.key) if spec.ssh.key else None,
        "known_hosts": str(spec.ssh.known_hosts) if spec.ssh.known_hosts else None,
        "ssh_config": str(spec.ssh.config) if spec.ssh.config else None,
        "ssh_proxy_jump": spec.ssh.proxy_jump,
        "libvirt_uri": spec.libvirt_uri,
        "agent_dir": spec.agent_dir,
        "labels": dict(spec.labels),
        "availability_zone": spec.availability_zone,
        "domain_type_pref": spec.domain_type,
        "override_vcpus": spec.capacity.vcpus,
        "override_ram_mb": spec.capacity.ram_mb,
        "override_disk_gb": spec.capacity.disk_gb,
        "cpu_ratio": spec.allocation_ratios.cpu,
        "ram_ratio": spec.allocation_ratios.ram,
        "disk_ratio": spec.allocation_ratios.disk,
        "reserved_vcpus": spec.reserved.vcpus,
        "reserved_ram_mb": spec.reserved.ram_mb,
        "reserved_disk_gb": spec.reserved.disk_gb,
        "enabled": spec.enabled,
        "image_source_dirs": list(spec.image_source_dirs),
        "max_image_gb": spec.max_image_gb,
        "volume_dir": spec.storage.path,
    }


def flavor_values(spec: FlavorSpec) -> dict[str, Any]:
    return {
        "vcpus": spec.vcpus,
        "ram_mb": spec.ram_mb,
        "disk_gb": spec.disk_gb,
        "extra_specs": dict(spec.extra_specs),
    }


def _checksum(path: Path) -> tuple[str, int]:
    from orchestrator.local_files import sha256_of

    return sha256_of(path), path.stat().st_size


async def image_values(
    spec: ImageSpec, accepted: tuple[str, str, str | None] | None = None
) -> dict[str, Any]:
    """Local image files are hashed here, once, so every host verifies the same bytes.

    `accepted` is the (source, format, sha256) the DB already holds for this image: the
    same bytes under the same format were taken before, so they are not inspected
    again. An image stored before today's inspector, which it might now refuse, must
    not block every later apply while servers use it (and so cannot be removed)."""
    values: dict[str, Any] = {
        "source": spec.source,
        "format": spec.format,
        "sha256": spec.sha256,
        "size": None,
        "min_ram_mb": spec.min_ram_mb,
        "min_disk_gb": spec.min_disk_gb,
        "properties": dict(spec.properties),
    }
    if spec.source_kind == "local":
        path = spec.local_path
        assert path is not None
        if not path.is_file():
            raise InvalidInput(f"{spec.origin}: images ({spec.name}).source: no such file {path}")
        digest, size = await asyncio.to_thread(_checksum, path)
        if accepted != (str(path), spec.format, digest):
            unsafe = await asyncio.to_thread(unsafe_local_image, path, spec.format)
            if unsafe:
                raise InvalidInput(
                    f"{spec.origin}: images ({spec.name}).source: {path} was refused: {unsafe}"
                )
        if spec.sha256 and spec.sha256 != digest:
            raise InvalidInput(
                f"{spec.origin}: images ({spec.name}).sha256: {path} has sha256 {digest}, "
                f"not {spec.sha256}"
            )
        values.update(source=str(path), sha256=digest, size=size)
    elif spec.sha256 is None:
        # A URL or host path without a checksum: the first host to fetch it records
        # one (trust on first use) and every later host is held to it; applying the
        # same file again must not forget it.
        del values["sha256"], values["size"]
    return values


def network_values(spec: NetworkSpec) -> dict[str, Any]:
    subnet = spec.subnet
    pool = spec.allocation_pool
    hosts = list(subnet.hosts()) if subnet is not None and pool is None else []
    if subnet is not None and pool is None:
        # The whole subnet but the gateway, as Neutron's default pool.
        usable = [ip for ip in hosts if ip != spec.gateway]
        start, end = str(usable[0]), str(usable[-1])
    else:
        start = str(pool.start) if pool else None
        end = str(pool.end) if pool else None
    return {
        "kind": spec.type,
        "source": spec.bridge or spec.libvirt_network,
        "cidr": str(subnet) if subnet is not None else None,
        "gateway": str(spec.gateway) if spec.gateway is not None else None,
        "pool_start": start,
        "pool_end": end,
        "dns": [str(d) for d in spec.dns],
        "is_default": spec.default,
    }


def _check_networks(networks: list[NetworkSpec]) -> None:
    defaults = [n for n in networks if n.default]
    if len(defaults) > 1:
        first, second = defaults[0], defaults[1]
        raise InvalidInput(
            f"{second.origin}: networks ({second.name}).default: only one network can be "
            f"the default ({first.name} is, at {first.origin})"
        )


def _check_image_references(images: list[ImageSpec]) -> None:
    formats = {spec.name: spec.format for spec in images}
    for spec in images:
        for key, wanted in IMAGE_REFERENCES.items():
            name = spec.properties.get(key)
            if name is None:
                continue
            if formats.get(name) != wanted:
                found = (
                    f"is a {formats[name]} image" if name in formats else "is not in the inventory"
                )
                raise InvalidInput(
                    f"{spec.origin}: images ({spec.name}).properties.{key}: {name!r} {found}; "
                    f"it must name an image of format {wanted}"
                )


def _diff(row: Any, values: dict[str, Any]) -> tuple[str, ...]:
    return tuple(k for k, v in values.items() if getattr(row, k) != v)


async def _sync(
    session: AsyncSession,
    model: type[Any],
    kind: str,
    wanted: dict[str, dict[str, Any]],
    owned: Any = None,
) -> tuple[list[Change], list[Any]]:
    """Create and update rows to match ``wanted``; rows not wanted are returned for the
    caller to remove, except those ``owned`` (a predicate) says the inventory does not own."""
    rows = {r.name: r for r in (await session.exec(select(model))).all()}
    changes: list[Change] = []
    now = utcnow()
    for name, values in wanted.items():
        row = rows.get(name)
        if row is None:
            session.add(model(name=name, created_at=now, updated_at=now, **values))
            changes.append(Change(kind, name, "create"))
            continue
        changed = _diff(row, values)
        for key in changed:
            setattr(row, key, values[key])
        if changed:
            row.updated_at = now
            session.add(row)
        changes.append(Change(kind, name, "update" if changed else "unchanged", changed))
    removed = [
        row for name, row in rows.items() if name not in wanted and (owned is None or owned(row))
    ]
    changes += [Change(kind, row.name, "remove") for row in removed]
    return changes, removed


class _RollBack(Exception):
    def __init__(self, changes: list[Change]) -> None:
        self.changes = changes


async def apply_inventory(
    db: Database, inventory: Inventory, *, dry_run: bool = False
) -> list[Change]:
    """Apply (or with ``dry_run`` only plan) the inventory; returns every change."""
    try:
        return await _apply(db, inventory, dry_run)
    except _RollBack as planned:
        return planned.changes


# -- what live servers use ------------------------------------------------------
#
# A row that a server not deleted (building, active, error, resized...) depends on is
# neither removed nor changed where the server would notice; every other change is
# free. Each check returns its problems, one line each, so that an apply refused for
# three reasons says all three at once.

# A host's servers have their disks under agent_dir and their domains in libvirt_uri's
# libvirtd, its volumes their files in volume_dir: changing one loses them. The address,
# SSH settings, labels, ratios and reservations may change (a re-IP'd host keeps its guests).
HOST_FIELDS_IN_USE = ("libvirt_uri", "agent_dir", "volume_dir")
# Claims were made with the old sizes, and a flavor name must mean one size (Nova's
# flavors are immutable once used). Extra specs may change: servers carry their own
# copy in their request spec, so only new boots and resizes see the new ones.
FLAVOR_FIELDS_IN_USE = ("vcpus", "ram_mb", "disk_gb")
# Guests were given their addresses, gateway and NIC's bridge when they booted. DNS and
# the default flag affect new servers only; the pool may change if it keeps every
# address already handed out.
NETWORK_FIELDS_IN_USE = ("kind", "source", "cidr", "gateway")


def _names(names: list[str]) -> str:
    """Up to five names, and how many more: enough to find them, still one line."""
    shown = ", ".join(names[:5])
    return f"{shown} and {len(names) - 5} more" if len(names) > 5 else shown


async def _instance_names(session: AsyncSession, uuids: set[str]) -> dict[str, str]:
    """Server names by UUID, a migration's UUID (the consumer of the claim it holds)
    included; deleted servers are left out."""
    if not uuids:
        return {}
    migrations = (await session.exec(select(Migration).where(col(Migration.uuid).in_(uuids)))).all()
    owner = {m.uuid: m.instance_uuid for m in migrations}
    rows = (
        await session.exec(
            select(Instance).where(
                col(Instance.uuid).in_(set(owner.values()) | uuids),
                Instance.vm_state != VmState.DELETED,
            )
        )
    ).all()
    by_uuid = {i.uuid: i.name for i in rows}
    return {
        uuid: by_uuid[owner.get(uuid, uuid)] for uuid in uuids if owner.get(uuid, uuid) in by_uuid
    }


async def servers_on_host(session: AsyncSession, host_id: int | None) -> list[str]:
    """Servers placed on the host, or holding a claim there (a resize's kept disk, a
    move on its way), sorted."""
    placed = (
        await session.exec(
            select(Instance.name).where(
                Instance.host_id == host_id, Instance.vm_state != VmState.DELETED
            )
        )
    ).all()
    consumers = (
        await session.exec(select(Allocation.instance_uuid).where(Allocation.host_id == host_id))
    ).all()
    moving = (
        await session.exec(
            select(Migration.instance_uuid).where(
                col(Migration.status).in_(OPEN_MIGRATIONS),
                or_(Migration.source_host_id == host_id, Migration.dest_host_id == host_id),
            )
        )
    ).all()
    claimed = await _instance_names(session, {*consumers, *moving})
    names = sorted({*placed, *claimed.values()})
    unnamed = len(consumers) - len([c for c in consumers if c in claimed])
    return names + ([f"{unnamed} claim(s) of no live server"] if unnamed else [])


async def servers_using_flavor(session: AsyncSession, name: str) -> list[str]:
    """Live servers of the flavor, and those an open resize may take back to it."""
    live = (
        await session.exec(
            select(Instance.name).where(
                Instance.flavor_name == name, Instance.vm_state != VmState.DELETED
            )
        )
    ).all()
    open_moves = (
        await session.exec(select(Migration).where(col(Migration.status).in_(OPEN_MIGRATIONS)))
    ).all()
    reverting = await _instance_names(
        session,
        {
            m.instance_uuid
            for m in open_moves
            if name in ((m.old_flavor or {}).get("name"), (m.new_flavor or {}).get("name"))
        },
    )
    return sorted({*live, *reverting.values()})


async def servers_using_image(session: AsyncSession, image_id: int | None) -> list[str]:
    """Names of the live servers booted from the image (sorted): it must stay."""
    rows = await session.exec(
        select(Instance.name).where(
            Instance.image_id == image_id, Instance.vm_state != VmState.DELETED
        )
    )
    return sorted(rows.all())


async def _servers_with_ports(session: AsyncSession, network_id: int | None) -> list[Port]:
    return list((await session.exec(select(Port).where(Port.network_id == network_id))).all())


async def _host_problems(
    session: AsyncSession, changes: list[Change], removed: list[Host]
) -> list[str]:
    problems = []
    rows = {h.name: h for h in (await session.exec(select(Host))).all()}
    for change in changes:
        fields = [f for f in HOST_FIELDS_IN_USE if f in change.fields]
        if change.verb == "update" and fields:
            users = await servers_on_host(session, rows[change.name].id)
            if users:
                problems.append(
                    f"host {change.name}: {', '.join(fields)} cannot change while servers are "
                    f"on it ({_names(users)}): their disks and domains stay where they are; "
                    "move or delete them first"
                )
    for host in removed:
        users = await servers_on_host(session, host.id)
        if users:
            problems.append(
                f"host {host.name} is not in the inventory but still has servers "
                f"({_names(users)}); delete or move them before removing the host"
            )
    return problems


async def _flavor_problems(
    session: AsyncSession, changes: list[Change], removed: list[Flavor]
) -> list[str]:
    problems = []
    for change in changes:
        fields = [f for f in FLAVOR_FIELDS_IN_USE if f in change.fields]
        if change.verb == "update" and fields:
            users = await servers_using_flavor(session, change.name)
            if users:
                problems.append(
                    f"flavor {change.name}: {', '.join(fields)} cannot change while servers "
                    f"use it ({_names(users)}): their claims hold the old size; add a new "
                    "flavor and resize them to it"
                )
    for flavor in removed:
        users = await servers_using_flavor(session, flavor.name)
        if users:
            problems.append(
                f"flavor {flavor.name} is not in the inventory but servers still use it "
                f"({_names(users)}); resize or delete them before removing the flavor"
            )
    return problems


async def _image_problems(
    session: AsyncSession,
    changes: list[Change],
    removed: list[Image],
    wanted: dict[str, dict[str, Any]],
) -> list[str]:
    problems = []
    rows = {i.name: i for i in (await session.exec(select(Image))).all()}
    for change in changes:
        if change.verb != "update":
            continue
        data = [f for f in ("format", "sha256") if f in change.fields]
        if "source" in change.fields and "sha256" not in wanted[change.name]:
            data.append("source, with no sha256 to hold it to the same bytes")
        if not data:
            continue
        users = await servers_using_image(session, rows[change.name].id)
        if users:
            problems.append(
                f"image {change.name}: its data ({', '.join(data)}) cannot change while "
                f"servers use it ({_names(users)}): their disks are overlays on the old "
                "bytes; add the new file as a new image"
            )
    gone = {image.name for image in removed}
    for image in removed:
        users = await servers_using_image(session, image.id)
        if users:
            problems.append(
                f"image {image.name} is not in the inventory but servers still use it "
                f"({_names(users)}); delete them before removing the image"
            )
        referrers = sorted(
            f"{other.name} ({key})"
            for other in rows.values()
            if other.name not in gone
            for key in IMAGE_REFERENCES
            if other.properties.get(key) == image.name
        )
        if referrers:
            problems.append(
                f"image {image.name} is not in the inventory but images still name it: "
                f"{_names(referrers)}; change or delete them before removing the image"
            )
    return problems


def _network_fields(spec: NetworkSpec, fields: list[str]) -> list[str]:
    """Column names as the inventory spells them."""
    spelt = {"kind": "type", "cidr": "subnet", "pool_start": "allocation_pool"}
    spelt["pool_end"] = spelt["pool_start"]
    spelt["source"] = "bridge" if spec.type == "bridge" else "libvirt_network"
    return list(dict.fromkeys(spelt.get(f, f) for f in fields))


def _outside_pool(values: dict[str, Any], ports: list[Port]) -> list[Port]:
    if not (values["pool_start"] and values["pool_end"]):
        return [p for p in ports if p.ip]
    start, end = (ipaddress.ip_address(values[k]) for k in ("pool_start", "pool_end"))
    return [p for p in ports if p.ip and not start <= ipaddress.ip_address(p.ip) <= end]


async def _network_problems(
    session: AsyncSession,
    changes: list[Change],
    removed: list[Network],
    specs: dict[str, NetworkSpec],
    wanted: dict[str, dict[str, Any]],
) -> list[str]:
    problems = []
    rows = {n.name: n for n in (await session.exec(select(Network))).all()}
    for change in changes:
        if change.verb != "update":
            continue
        ports = await _servers_with_ports(session, rows[change.name].id)
        if not ports:
            continue
        names = await _instance_names(session, {p.instance_uuid for p in ports})
        users = sorted(set(names.values())) or [f"{len(ports)} port(s)"]
        if any(f in change.fields for f in NETWORK_FIELDS_IN_USE):
            fields = _network_fields(specs[change.name], list(change.fields))
            fields = [f for f in fields if f not in ("dns", "is_default")]
            problems.append(
                f"network {change.name}: {', '.join(fields)} cannot change while servers "
                f"have ports on it ({_names(users)}): their guests were configured with "
                "the old ones; delete them first"
            )
            continue
        outside = _outside_pool(wanted[change.name], ports)
        if {"pool_start", "pool_end"} & set(change.fields) and outside:
            values = wanted[change.name]
            held = sorted(
                f"{names.get(p.instance_uuid, p.instance_uuid)} ({p.ip})" for p in outside
            )
            problems.append(
                f"network {change.name}: the new allocation pool {values['pool_start']}-"
                f"{values['pool_end']} leaves out the addresses of {_names(held)}; "
                "keep them in the pool or delete those servers first"
            )
    for network in removed:
        ports = await _servers_with_ports(session, network.id)
        if ports:
            names = await _instance_names(session, {p.instance_uuid for p in ports})
            problems.append(
                f"network {network.name} is not in the inventory but {len(ports)} server "
                f"port(s) still use it ({_names(sorted(set(names.values())))}); delete "
                "those servers before removing the network"
            )
    return problems


# The tables an apply inserts named rows into, and what each row is called.
_INVENTORY_TABLES = {"hosts": "host", "flavors": "flavor", "images": "image", "networks": "network"}


def _applied_meanwhile(duplicate: Duplicate) -> str:
    """Another apply (or `image create`) inserted the same name between our read and
    our write: nothing of ours was written, and applying again sees theirs."""
    what = _INVENTORY_TABLES.get(duplicate.table or "", "row")
    named = f" {duplicate.value!r}" if duplicate.value else ""
    return f"{what}{named} was created by another herd at the same time; apply again"


async def _apply(db: Database, inventory: Inventory, dry_run: bool) -> list[Change]:
    _check_networks(inventory.networks)
    _check_image_references(inventory.images)
    async with db.read() as session:
        accepted = {
            row.name: (row.source, row.format, row.sha256)
            for row in (await session.exec(select(Image))).all()
        }
    images = {
        spec.name: await image_values(spec, accepted.get(spec.name)) for spec in inventory.images
    }
    for values in images.values():
        values["managed_by"] = "inventory"
    networks = {s.name: network_values(s) for s in inventory.networks}
    async with duplicates_conflict(_INVENTORY_TABLES, _applied_meanwhile), db.session() as session:
        wanted_hosts = {s.name: host_values(s) for s in inventory.hosts}
        for row in (await session.exec(select(Host))).all():
            values = wanted_hosts.get(row.name)
            if values is not None and row.disabled_reason and values["enabled"]:
                del values["enabled"]  # `herd host disable` outlives an apply of the files
        changes, removed_hosts = await _sync(session, Host, "host", wanted_hosts)
        flavor_changes, removed_flavors = await _sync(
            session, Flavor, "flavor", {s.name: flavor_values(s) for s in inventory.flavors}
        )
        image_changes, removed_images = await _sync(
            session, Image, "image", images, owned=lambda row: row.managed_by == "inventory"
        )
        for change in image_changes:
            if change.verb == "update" and "source" in change.fields:
                row = (await session.exec(select(Image).where(Image.name == change.name))).one()
                if "sha256" not in images[change.name]:
                    row.sha256, row.size = None, None  # learnt for the old source only
                    session.add(row)
        network_changes, removed_networks = await _sync(session, Network, "network", networks)
        # Every refusal at once; raising here rolls back everything _sync wrote.
        problems = [
            *await _host_problems(session, changes, removed_hosts),
            *await _flavor_problems(session, flavor_changes, removed_flavors),
            *await _image_problems(session, image_changes, removed_images, images),
            *await _network_problems(
                session,
                network_changes,
                removed_networks,
                {s.name: s for s in inventory.networks},
                networks,
            ),
        ]
        if problems:
            raise Conflict("\n".join(problems))
        changes += flavor_changes + image_changes + network_changes
        if dry_run:
            raise _RollBack(changes)
        for host in removed_hosts:
            # Deleted servers keep their history; they just stop pointing at the host.
            for instance in (
                await session.exec(select(Instance).where(Instance.host_id == host.id))
            ).all():
                instance.host_id = None
                session.add(instance)
            await session.flush()
            await session.delete(host)
        for row in removed_flavors + removed_images + removed_networks:
            await session.delete(row)

    return changes
