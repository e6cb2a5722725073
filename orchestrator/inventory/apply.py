"""Make the DB match an inventory: create, update, remove — all or nothing.

Validation happens before any write, and the writes share one transaction, so a
refused change (a host that still has servers) leaves the DB exactly as it was.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from orchestrator.db.engine import Database
from orchestrator.db.models import (
    Allocation,
    Flavor,
    Host,
    Image,
    Instance,
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
    }


def flavor_values(spec: FlavorSpec) -> dict[str, Any]:
    return {
        "vcpus": spec.vcpus,
        "ram_mb": spec.ram_mb,
        "disk_gb": spec.disk_gb,
        "extra_specs": dict(spec.extra_specs),
    }


def _checksum(path: Path) -> tuple[str, int]:
    from orchestrator.conductor import sha256_of

    return sha256_of(path), path.stat().st_size


async def image_values(spec: ImageSpec) -> dict[str, Any]:
    """Local image files are hashed here, once, so every host verifies the same bytes."""
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
        unsafe = await asyncio.to_thread(unsafe_local_image, path, spec.format)
        if unsafe:
            raise InvalidInput(
                f"{spec.origin}: images ({spec.name}).source: {path} was refused: {unsafe}"
            )
        digest, size = await asyncio.to_thread(_checksum, path)
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


async def _refuse_busy_hosts(session: AsyncSession, hosts: list[Host]) -> None:
    for host in hosts:
        live = (
            await session.exec(
                select(Instance.name).where(
                    Instance.host_id == host.id, Instance.vm_state != VmState.DELETED
                )
            )
        ).all()
        claims = (
            await session.exec(select(Allocation.id).where(Allocation.host_id == host.id))
        ).all()
        if live or claims:
            names = ", ".join(sorted(live)[:5]) or f"{len(claims)} claims"
            raise Conflict(
                f"host {host.name} is not in the inventory but still has servers ({names}); "
                "delete or move them before removing the host"
            )


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


async def _refuse_busy_networks(session: AsyncSession, networks: list[Network]) -> None:
    for network in networks:
        ports = (await session.exec(select(Port.id).where(Port.network_id == network.id))).all()
        if ports:
            raise Conflict(
                f"network {network.name} is not in the inventory but {len(ports)} server "
                "port(s) still use it; delete those servers before removing the network"
            )


async def servers_using_image(session: AsyncSession, image_id: int | None) -> list[str]:
    """Names of the live servers booted from the image (sorted): it must stay."""
    rows = await session.exec(
        select(Instance.name).where(
            Instance.image_id == image_id, Instance.vm_state != VmState.DELETED
        )
    )
    return sorted(rows.all())


async def _refuse_busy_images(session: AsyncSession, images: list[Image]) -> None:
    for image in images:
        live = await servers_using_image(session, image.id)
        if live:
            raise Conflict(
                f"image {image.name} is not in the inventory but servers still use it "
                f"({', '.join(live[:5])}); delete them before removing the image"
            )


async def _apply(db: Database, inventory: Inventory, dry_run: bool) -> list[Change]:
    _check_networks(inventory.networks)
    _check_image_references(inventory.images)
    images = {spec.name: await image_values(spec) for spec in inventory.images}
    for values in images.values():
        values["managed_by"] = "inventory"
    async with db.session() as session:
        wanted_hosts = {s.name: host_values(s) for s in inventory.hosts}
        for row in (await session.exec(select(Host))).all():
            values = wanted_hosts.get(row.name)
            if values is not None and row.disabled_reason and values["enabled"]:
                del values["enabled"]  # `herd host disable` outlives an apply of the files
        changes, removed_hosts = await _sync(session, Host, "host", wanted_hosts)
        await _refuse_busy_hosts(session, removed_hosts)
        flavor_changes, removed_flavors = await _sync(
            session, Flavor, "flavor", {s.name: flavor_values(s) for s in inventory.flavors}
        )
        image_changes, removed_images = await _sync(
            session, Image, "image", images, owned=lambda row: row.managed_by == "inventory"
        )
        await _refuse_busy_images(session, removed_images)
        for change in image_changes:
            if change.verb == "update" and "source" in change.fields:
                row = (await session.exec(select(Image).where(Image.name == change.name))).one()
                if "sha256" not in images[change.name]:
                    row.sha256, row.size = None, None  # learnt for the old source only
                    session.add(row)
        network_changes, removed_networks = await _sync(
            session,
            Network,
            "network",
            {s.name: network_values(s) for s in inventory.networks},
        )
        await _refuse_busy_networks(session, removed_networks)
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
