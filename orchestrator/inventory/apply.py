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
from orchestrator.db.models import Allocation, Flavor, Host, Image, Instance, VmState, utcnow
from orchestrator.errors import Conflict, InvalidInput
from orchestrator.inventory.models import FlavorSpec, HostSpec, ImageSpec, Inventory


@dataclass(frozen=True)
class Change:
    kind: str  # host | flavor | image
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
        digest, size = await asyncio.to_thread(_checksum, path)
        if spec.sha256 and spec.sha256 != digest:
            raise InvalidInput(
                f"{spec.origin}: images ({spec.name}).sha256: {path} has sha256 {digest}, "
                f"not {spec.sha256}"
            )
        values.update(source=str(path), sha256=digest, size=size)
    return values


def _diff(row: Any, values: dict[str, Any]) -> tuple[str, ...]:
    return tuple(k for k, v in values.items() if getattr(row, k) != v)


async def _sync(
    session: AsyncSession, model: type[Any], kind: str, wanted: dict[str, dict[str, Any]]
) -> tuple[list[Change], list[Any]]:
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
    removed = [row for name, row in rows.items() if name not in wanted]
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


async def _apply(db: Database, inventory: Inventory, dry_run: bool) -> list[Change]:
    images = {spec.name: await image_values(spec) for spec in inventory.images}
    async with db.session() as session:
        changes, removed_hosts = await _sync(
            session, Host, "host", {s.name: host_values(s) for s in inventory.hosts}
        )
        await _refuse_busy_hosts(session, removed_hosts)
        flavor_changes, removed_flavors = await _sync(
            session, Flavor, "flavor", {s.name: flavor_values(s) for s in inventory.flavors}
        )
        image_changes, removed_images = await _sync(session, Image, "image", images)
        changes += flavor_changes + image_changes
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
        for row in removed_flavors + removed_images:
            await session.delete(row)

    return changes
