"""Servers booted from a volume (`server create --boot-from-volume GB`): the root disk is
a volume of the server's host, made from its image when the server is built there and
attached as vda, instead of an overlay of the cached image. It outlives the server
unless ``--delete-on-termination``, as Nova's block device mapping has it.

The server's own claim holds no disk (its flavor's disk is not used); the volume claims
its size, as any volume does. A build that fails on a host before its job runs there
drops the volume it made, so a reschedule makes one on the next host.
"""

from __future__ import annotations

import contextlib
from typing import Any

from sqlmodel import select

from orchestrator.conductor.manager import Conductor
from orchestrator.conductor.tasks.volumes import (
    S,
    VolumeCreate,
    VolumeDelete,
    settle,
    take,
)
from orchestrator.db.models import Host, Instance, Volume
from orchestrator.errors import HerdError
from orchestrator.guest_config import BOOT_VOLUME, ROOT_DEVICE

# What a server booted from a volume cannot do yet: each would need its disk as a file
# of its own instance directory.
REFUSED = ("migrate", "resize", "rebuild", "shelve", "rescue", "image_create")


def boot_volume_of(instance: Instance) -> dict[str, Any] | None:
    found = (instance.request_spec or {}).get(BOOT_VOLUME)
    return dict(found) if found else None


async def root_volume(conductor: Conductor, instance_uuid: str) -> Volume | None:
    async with conductor.db.read() as db:
        query = select(Volume).where(
            Volume.instance_uuid == instance_uuid, Volume.device == ROOT_DEVICE
        )
        return (await db.exec(query)).first()


async def ensure_root_volume(conductor: Conductor, instance: Instance, host: Host) -> None:
    """The server's root volume on ``host``, made from its image and attached as vda
    (once: a repeated build finds it there)."""
    wanted = boot_volume_of(instance)
    if wanted is None:
        return
    existing = await root_volume(conductor, instance.uuid)
    if existing is not None:
        if existing.host_id != host.id:
            raise HerdError(f"its root volume {existing.name} is on another host")
        return
    name = f"{instance.name}-root-{instance.uuid[:8]}"
    made = await VolumeCreate(
        conductor, name, int(wanted["size_gb"]), host=host.name, image=instance.image_name
    ).execute()
    if made.status != S.AVAILABLE:
        with contextlib.suppress(HerdError):
            await VolumeDelete(conductor, made).execute()
        raise HerdError(f"its root volume: {made.error}")
    taken = await take(
        conductor, made, (S.AVAILABLE,), S.IN_USE, instance_uuid=instance.uuid, device=ROOT_DEVICE
    )
    await settle(conductor, taken, S.IN_USE)
    async with conductor.db.session() as db:
        row = (await db.exec(select(Instance).where(Instance.uuid == instance.uuid))).one()
        spec = dict(row.request_spec or {})
        spec[BOOT_VOLUME] = {**dict(spec.get(BOOT_VOLUME) or {}), "volume": made.uuid}
        row.request_spec = spec
        db.add(row)


async def drop_root_volume(conductor: Conductor, instance: Instance) -> None:
    """A build that failed before its job ran: the root volume made for it goes."""
    volume = await root_volume(conductor, instance.uuid)
    if volume is None:
        return
    with contextlib.suppress(HerdError):
        freed = await take(
            conductor, volume, (S.IN_USE,), S.AVAILABLE, instance_uuid=None, device=None
        )
        await settle(conductor, freed, S.AVAILABLE)
        await VolumeDelete(conductor, freed).execute()


async def delete_on_termination(conductor: Conductor, instance: Instance) -> str | None:
    """After the server's delete: its root volume too, if it was made to go with it.
    The error, if it could not be deleted (it stays available)."""
    wanted = boot_volume_of(instance)
    if not wanted or not wanted.get("delete_on_termination") or not wanted.get("volume"):
        return None
    async with conductor.db.read() as db:
        query = select(Volume).where(Volume.uuid == wanted["volume"])
        volume = (await db.exec(query)).first()
    if volume is None or volume.instance_uuid is not None:
        return None
    try:
        await VolumeDelete(conductor, volume).execute()
    except HerdError as exc:
        return f"its root volume {volume.name} stays: {exc}"
    return None
