"""Volume snapshots: create, delete and revert (Cinder's, for a host's own disks).

A snapshot is a full, flattened copy of the volume beside it on its host's storage
(agent/volume_snapshots.py): taken while the volume stays attached, from a running guest
without stopping it (crash-consistent), and it claims its size on the host as the
volume does. Its row is its record, with the volume's rules: ``status`` written before
the host step, ``task_owner`` naming the command, every change an atomic ``UPDATE ...
WHERE status IN (expected)``. A revert copies a snapshot back over a volume that is not
attached (as Cinder's revert-to-snapshot wants it ``available``), whole or not at all.

A volume with snapshots is not deleted, and a server whose volumes have snapshots is
not migrated (the copies stay on their host): the refusals say so.
"""

from __future__ import annotations

import uuid as uuid_module
from collections.abc import Collection

from sqlalchemy import update
from sqlmodel import col, select

from orchestrator.conductor.hosts import target_of
from orchestrator.conductor.journal import Runner
from orchestrator.conductor.manager import Conductor
from orchestrator.conductor.tasks.volumes import set_disk_claim, settle, take, volume_args
from orchestrator.db.duplicates import duplicates_conflict
from orchestrator.db.models import (
    Host,
    Instance,
    SnapshotStatus,
    Volume,
    VolumeSnapshot,
    VolumeStatus,
    utcnow,
)
from orchestrator.errors import Conflict, HerdError, NotFound
from orchestrator.names import check_name
from orchestrator.rpc.agent_api import VolumeArgs
from orchestrator.scheduler.claims import release

S = VolumeStatus
SS = SnapshotStatus


def snapshot_args(volume: Volume, snapshot: VolumeSnapshot, host: Host) -> VolumeArgs:
    args = volume_args(volume, host)
    args["snapshot"] = snapshot.uuid
    return args


async def take_snapshot(
    conductor: Conductor, snapshot: VolumeSnapshot, expected: Collection[str], status: str
) -> VolumeSnapshot:
    """``status`` if the snapshot is still in one of ``expected``, or Conflict."""
    async with conductor.db.session() as db:
        result = await db.exec(
            update(VolumeSnapshot)  # type: ignore[call-overload]
            .where(
                col(VolumeSnapshot.uuid) == snapshot.uuid,
                col(VolumeSnapshot.status).in_(list(expected)),
            )
            .values(status=status, task_owner=str(Runner.here()), updated_at=utcnow())
        )
        row = (
            await db.exec(select(VolumeSnapshot).where(VolumeSnapshot.uuid == snapshot.uuid))
        ).first()
    if row is None:
        raise NotFound(f"snapshot {snapshot.name!r} not found")
    if result.rowcount != 1:
        raise Conflict(f"snapshot {snapshot.name} is {row.status}, not {' or '.join(expected)}")
    return row


async def settle_snapshot(
    conductor: Conductor, snapshot: VolumeSnapshot, status: str, **values: object
) -> VolumeSnapshot:
    async with conductor.db.session() as db:
        row = (
            await db.exec(select(VolumeSnapshot).where(VolumeSnapshot.uuid == snapshot.uuid))
        ).one()
        row.status, row.task_owner, row.updated_at = status, None, utcnow()
        for key, value in values.items():
            setattr(row, key, value)
        db.add(row)
    return row


async def drop_snapshot(conductor: Conductor, snapshot: VolumeSnapshot) -> None:
    """The record and its claim go (its file is gone, or was never made)."""
    async with conductor.db.session() as db:
        row = (
            await db.exec(select(VolumeSnapshot).where(VolumeSnapshot.uuid == snapshot.uuid))
        ).first()
        if row is not None:
            await db.delete(row)
        await release(db, snapshot.uuid)


class SnapshotCreate:
    """Claim, record, copy on the host; on failure the claim and the record go."""

    def __init__(self, conductor: Conductor, volume: Volume, name: str) -> None:
        self.conductor, self.volume, self.name = conductor, volume, name

    async def execute(self) -> VolumeSnapshot:
        volume = self.volume
        check_name("snapshot", self.name)
        await self._check(volume)
        snapshot_uuid = str(uuid_module.uuid4())
        host = await set_disk_claim(self.conductor, volume.host_id, snapshot_uuid, volume.size_gb)
        try:
            snapshot = await self._record(snapshot_uuid, volume)
        except HerdError:
            async with self.conductor.db.session() as db:
                await release(db, snapshot_uuid)
            raise
        args = snapshot_args(volume, snapshot, host)
        if volume.instance_uuid is not None:
            args["uuid"] = volume.instance_uuid
        try:
            made = await self.conductor.agent.volume_snapshot_create(target_of(host), args)
        except HerdError as exc:
            await drop_snapshot(self.conductor, snapshot)
            raise HerdError(
                f"snapshot of volume {volume.name} failed on {host.name}: {exc}"
            ) from None
        return await settle_snapshot(self.conductor, snapshot, SS.AVAILABLE, path=made["path"])

    async def _check(self, volume: Volume) -> None:
        async with self.conductor.db.read() as db:
            taken = select(VolumeSnapshot.id).where(VolumeSnapshot.name == self.name)
            if (await db.exec(taken)).first():
                raise Conflict(f"a snapshot named {self.name!r} already exists")
            fresh = await db.get(Volume, volume.id)
            server = (
                (
                    await db.exec(select(Instance).where(Instance.uuid == volume.instance_uuid))
                ).first()
                if volume.instance_uuid
                else None
            )
        if fresh is None:
            raise NotFound(f"volume {volume.name!r} not found")
        if fresh.status not in (S.AVAILABLE, S.IN_USE):
            raise Conflict(f"volume {volume.name} is {fresh.status}, not available or in-use")
        if server is not None and server.task_state is not None:
            raise Conflict(
                f"volume {volume.name} is attached to server {server.name}, which is "
                f"{server.task_state}: snapshot it when that is done"
            )

    async def _record(self, snapshot_uuid: str, volume: Volume) -> VolumeSnapshot:
        taken = f"a snapshot named {self.name!r} already exists"
        db_session = self.conductor.db.session()
        async with duplicates_conflict("volume_snapshots", taken), db_session as db:
            snapshot = VolumeSnapshot(
                uuid=snapshot_uuid, name=self.name, volume_id=volume.id, size_gb=volume.size_gb,
                status=SS.CREATING, task_owner=str(Runner.here()),
                created_at=utcnow(), updated_at=utcnow(),
            )  # fmt: skip
            db.add(snapshot)
            await db.flush()
        return snapshot


async def _volume_and_host(conductor: Conductor, snapshot: VolumeSnapshot) -> tuple[Volume, Host]:
    async with conductor.db.read() as db:
        volume = await db.get(Volume, snapshot.volume_id)
        host = await db.get(Host, volume.host_id) if volume is not None else None
    assert volume is not None and host is not None
    return volume, host


class SnapshotDelete:
    """The file, then the record and its claim; a failure leaves it as it was."""

    def __init__(self, conductor: Conductor, snapshot: VolumeSnapshot) -> None:
        self.conductor, self.snapshot = conductor, snapshot

    async def execute(self) -> None:
        before = self.snapshot.status
        snapshot = await take_snapshot(
            self.conductor, self.snapshot, (SS.AVAILABLE, SS.ERROR), SS.DELETING
        )
        volume, host = await _volume_and_host(self.conductor, snapshot)
        try:
            await self.conductor.agent.volume_snapshot_delete(
                target_of(host), snapshot_args(volume, snapshot, host)
            )
        except HerdError as exc:
            await settle_snapshot(self.conductor, snapshot, before, error=f"delete failed: {exc}")
            raise
        await drop_snapshot(self.conductor, snapshot)


class SnapshotRevert:
    """The volume, detached, takes the snapshot's content (and keeps its snapshots)."""

    def __init__(self, conductor: Conductor, snapshot: VolumeSnapshot) -> None:
        self.conductor, self.snapshot = conductor, snapshot

    async def execute(self) -> Volume:
        snapshot = self.snapshot
        volume, host = await _volume_and_host(self.conductor, snapshot)
        if snapshot.status != SS.AVAILABLE:
            raise Conflict(f"snapshot {snapshot.name} is {snapshot.status}, not available")
        if volume.size_gb != snapshot.size_gb:
            raise Conflict(
                f"volume {volume.name} was extended to {volume.size_gb} GB after snapshot "
                f"{snapshot.name} ({snapshot.size_gb} GB) was taken: a revert would shrink it"
            )
        if volume.status == S.IN_USE:
            raise Conflict(
                f"volume {volume.name} is attached to a server: detach it (`herd server "
                "remove volume`) before reverting it"
            )
        volume = await take(self.conductor, volume, (S.AVAILABLE,), S.REVERTING)
        try:
            await self.conductor.agent.volume_snapshot_revert(
                target_of(host), snapshot_args(volume, snapshot, host)
            )
        except HerdError as exc:
            await settle(self.conductor, volume, S.AVAILABLE)
            raise HerdError(
                f"revert of volume {volume.name} failed on {host.name}: {exc}"
            ) from None
        return await settle(self.conductor, volume, S.AVAILABLE, error=None)


async def snapshot_names(conductor: Conductor, volume: Volume) -> list[str]:
    async with conductor.db.read() as db:
        query = select(VolumeSnapshot.name).where(VolumeSnapshot.volume_id == volume.id)
        return sorted((await db.exec(query)).all())
