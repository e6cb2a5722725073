"""A server's volumes carried along a cold move (Nova's volume-backed migration, for
volumes on a host's own storage).

The files go as the root disk goes, through this machine (the hosts need not reach
each other), into the destination's incoming directory, and the destination's agent
takes each into its volume directory (``volume_adopt``, idempotent). The volume
records change hosts in the move's switch transaction, with their claims; until then
the source files are the volumes, and a rollback removes only the destination's
copies. The source files go after the switch, with the source's domain.

Their room on the destination is claimed with the server's: the move is scheduled
for the flavor's disk plus the volumes', so the filters judge the whole, and the
switch hands the volumes' part to their own claims.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from orchestrator.conductor.hosts import target_of
from orchestrator.conductor.steps import Steps
from orchestrator.conductor.tasks.volumes import volume_args
from orchestrator.db.models import Allocation, Host, Instance, Volume, VolumeSnapshot, VolumeStatus
from orchestrator.errors import HerdError


async def attached_volumes(steps: Steps, instance_uuid: str) -> list[Volume]:
    """Every volume the server has, whatever its status (see ``unsettled``)."""
    async with steps.db.read() as db:
        query = (
            select(Volume).where(Volume.instance_uuid == instance_uuid).order_by(col(Volume.device))
        )
        return list((await db.exec(query)).all())


def unsettled(volumes: Sequence[Volume]) -> str | None:
    """Why a move cannot carry these now: one is being attached, detached or extended
    (a move would leave it behind, or carry a file that is still changing)."""
    busy = [f"{v.name} is {v.status}" for v in volumes if v.status != VolumeStatus.IN_USE]
    return (
        f"its volumes are busy ({', '.join(busy)}): try again when that is done" if busy else None
    )


async def snapshotted(steps: Steps, volumes: Sequence[Volume]) -> str | None:
    """Why a move cannot carry these: a volume's snapshots are copies on its host that
    the move would leave behind, out of reach of a revert."""
    if not volumes:
        return None
    async with steps.db.read() as db:
        query = select(Volume.name, VolumeSnapshot.name).join(
            VolumeSnapshot, col(VolumeSnapshot.volume_id) == col(Volume.id)
        )
        rows = (await db.exec(query.where(col(Volume.id).in_([v.id for v in volumes])))).all()
    if not rows:
        return None
    held = ", ".join(f"{v} ({s})" for v, s in sorted(rows))
    return (
        f"its volumes have snapshots on this host ({held}), which a move would leave "
        "behind: delete them first (`herd volume snapshot delete`)"
    )


def carried_gb(volumes: Sequence[Volume]) -> int:
    return sum(v.size_gb for v in volumes)


async def carry(
    steps: Steps, action_id: int, row: Instance, volumes: Sequence[Volume], source: Host, dest: Host
) -> dict[str, str]:
    """Each volume's file from the source to the destination's volume directory: where
    the destination keeps each, by volume UUID (for the switch: no host is asked
    anything between the destination's start and the switch)."""
    if not volumes:
        return {}
    src, dst = target_of(source), target_of(dest)
    steps.progress.update(row, "copying volumes", host=dest.name)
    paths: dict[str, str] = {}

    async def work() -> int:
        total = 0
        with tempfile.TemporaryDirectory(prefix="herd-volume-") as tmp:
            for volume in volumes:
                local = Path(tmp) / volume.uuid
                remote = f"{dst.agent_dir}/images/incoming/{volume.uuid}.volume"
                total += await (await steps.pool.session(src)).download(str(volume.path), local)
                await (await steps.pool.session(dst)).upload(local, remote)
                local.unlink()
                made = await steps.agent.volume_adopt(dst, volume_args(volume, dest))
                paths[volume.uuid] = made["path"]
        return total

    await steps.stepped(
        action_id, "copy_volumes", dest.name, work(),
        lambda total: f"{', '.join(v.name for v in volumes)}: {total} bytes from {source.name}",
    )  # fmt: skip
    return paths


async def dest_paths(steps: Steps, volumes: Sequence[Volume], dest: Host) -> dict[str, str]:
    """Where the destination keeps each carried file, asked again before the switch
    (adopt is idempotent: it answers for a file taken in already)."""
    paths = {}
    for volume in volumes:
        made = await steps.agent.volume_adopt(target_of(dest), volume_args(volume, dest))
        paths[volume.uuid] = made["path"]
    return paths


async def switch(
    db: AsyncSession,
    row: Instance,
    volumes: Sequence[Volume],
    dest: Host,
    paths: dict[str, str],
) -> None:
    """In the move's switch transaction: the volumes are the destination's, with their
    claims, and the server's claim there is its flavor's again."""
    if not volumes:
        return
    moved_from: set[int] = set()
    for volume in volumes:
        fresh = (await db.exec(select(Volume).where(Volume.uuid == volume.uuid))).one()
        moved_from.add(fresh.host_id)
        fresh.host_id, fresh.path = dest.id, paths[volume.uuid]  # type: ignore[assignment]
        db.add(fresh)
        claim = (
            await db.exec(select(Allocation).where(Allocation.instance_uuid == volume.uuid))
        ).first()
        if claim is not None:
            claim.host_id = dest.id  # type: ignore[assignment]
            db.add(claim)
    own = (await db.exec(select(Allocation).where(Allocation.instance_uuid == row.uuid))).first()
    if own is not None:
        own.disk_gb = row.disk_gb
        db.add(own)
    for host_id in {*moved_from, dest.id}:  # a claim made on the old view retries
        host = await db.get(Host, host_id)
        if host is not None:
            host.generation += 1
            db.add(host)


def path_on(host: Host, volume: Volume) -> str:
    """Where ``host`` keeps the volume's file (agent/volumes.py's rule): its inventory's
    volume directory, else its agent directory's ``volumes``."""
    directory = host.volume_dir or f"{target_of(host).agent_dir}/volumes"
    return f"{directory}/{volume.uuid}.{volume.format}"


async def drop_copies(steps: Steps, volumes: Sequence[Volume], host: Host) -> list[str]:
    """Remove the volumes' files on ``host``, which must not be where their records
    place them (a rollback's destination, a finished move's source). Best effort: what
    fails is returned, and reconcile reports the file as a copy left behind."""
    failed = []
    async with steps.db.read() as db:
        query = select(Volume).where(col(Volume.uuid).in_([v.uuid for v in volumes]))
        fresh = list((await db.exec(query)).all())
    for volume in fresh:
        if volume.host_id == host.id:
            continue  # never the volume itself
        try:
            await steps.agent.volume_delete(target_of(host), volume_args(volume, host))
        except HerdError as exc:
            failed.append(f"{volume.name} on {host.name}: {exc}")
    return failed
