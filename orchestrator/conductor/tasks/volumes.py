"""Volumes: create, extend and delete one on its host's storage (Cinder's volume manager,
for a host's own disks).

A volume's row is its record: its ``status`` is written before each step's side effect
and names, in ``task_owner``, the command running it, and every status change is one
``UPDATE ... WHERE status IN (expected)``, so two operators cannot both take a volume.
The host's part is idempotent by the volume's UUID (agent/volumes.py): a create or a
delete repeated after a lost answer finds its work done. A failed step is undone
before the command returns: a create that failed gives its claim back and leaves the
volume in ``error`` (its reason kept, `volume delete` clears it), an extend that failed
shrinks its claim back.

Space is claimed as a server's is: the scheduler places the volume (vcpus and RAM 0,
its size as disk) and writes an allocation whose consumer is the volume's UUID, under
the host's generation, so the filter scheduler counts it and two creates racing for the
last room cannot both win.
"""

from __future__ import annotations

import uuid as uuid_module
from collections.abc import Collection

from sqlalchemy import update
from sqlmodel import col, select

from orchestrator.conductor.hosts import target_of
from orchestrator.conductor.journal import Runner
from orchestrator.conductor.manager import Conductor
from orchestrator.db.duplicates import duplicates_conflict
from orchestrator.db.models import (
    Allocation,
    Host,
    Image,
    Instance,
    Volume,
    VolumeSnapshot,
    VolumeStatus,
    utcnow,
)
from orchestrator.db.retry import StaleGeneration, retrying
from orchestrator.errors import Conflict, HerdError, InvalidInput, NotFound
from orchestrator.names import check_name
from orchestrator.rpc.agent_api import VolumeArgs
from orchestrator.scheduler.claims import release
from orchestrator.scheduler.loader import load_host_states
from orchestrator.scheduler.request import RequestSpec
from orchestrator.scheduler.scheduler import Placement

S = VolumeStatus
FORMATS = ("qcow2", "raw")
MAX_VOLUME_GB = 64 * 1024


def volume_args(volume: Volume, host: Host) -> VolumeArgs:
    """What the agent needs to find the volume's file."""
    args: VolumeArgs = {"volume": volume.uuid, "format": volume.format}
    if host.volume_dir:
        args["dir"] = host.volume_dir
    return args


async def take(
    conductor: Conductor, volume: Volume, expected: Collection[str], status: str, **values: object
) -> Volume:
    """Move the volume to ``status`` if it is still in one of ``expected``, or refuse
    (Conflict, naming what it is now): the one way a volume changes hands."""
    async with conductor.db.session() as db:
        result = await db.exec(
            update(Volume)  # type: ignore[call-overload]
            .where(col(Volume.uuid) == volume.uuid, col(Volume.status).in_(list(expected)))
            .values(status=status, task_owner=str(Runner.here()), updated_at=utcnow(), **values)
        )
        row = (await db.exec(select(Volume).where(Volume.uuid == volume.uuid))).first()
    if row is None:
        raise NotFound(f"volume {volume.name!r} not found")
    if result.rowcount != 1:
        raise Conflict(f"volume {volume.name} is {row.status}, not {' or '.join(expected)}")
    return row


async def settle(conductor: Conductor, volume: Volume, status: str, **values: object) -> Volume:
    """End the volume's step: its new status, its owner cleared."""
    async with conductor.db.session() as db:
        row = (await db.exec(select(Volume).where(Volume.uuid == volume.uuid))).one()
        row.status, row.task_owner, row.updated_at = status, None, utcnow()
        for key, value in values.items():
            setattr(row, key, value)
        db.add(row)
    return row


class VolumeCreate:
    """Place, claim, record, make the file; on failure give the claim back."""

    def __init__(
        self,
        conductor: Conductor,
        name: str,
        size_gb: int,
        *,
        host: str | None = None,
        availability_zone: str | None = None,
        image: str | None = None,
        fmt: str = "qcow2",
    ) -> None:
        self.conductor, self.name, self.size_gb = conductor, name, size_gb
        self.host, self.zone, self.image_name, self.format = host, availability_zone, image, fmt

    async def execute(self) -> Volume:
        image = await self._check()
        volume_uuid = str(uuid_module.uuid4())
        # As a server create does: hosts not heard from lately are asked first, so the
        # scheduler places on what they have now.
        await self.conductor.meet_hosts()
        placement = await self._place(volume_uuid)
        volume, host = await self._record(volume_uuid, placement.host_id)
        try:
            args = volume_args(volume, host)
            args["size_gb"] = self.size_gb
            if image is not None:
                await self.conductor.images.ensure(target_of(host), image)
                args["image_sha256"], args["image_format"] = str(image.sha256), image.format
            made = await self.conductor.agent.volume_create(target_of(host), args)
        except HerdError as exc:
            await self._undo(volume)
            return await settle(
                self.conductor, volume, S.ERROR, error=f"create failed on {host.name}: {exc}"
            )
        return await settle(self.conductor, volume, S.AVAILABLE, path=made["path"], error=None)

    async def _check(self) -> Image | None:
        check_name("volume", self.name)
        if not 1 <= self.size_gb <= MAX_VOLUME_GB:
            raise InvalidInput(f"--size must be from 1 to {MAX_VOLUME_GB} GB")
        if self.format not in FORMATS:
            raise InvalidInput(f"--format must be one of {', '.join(FORMATS)}")
        async with self.conductor.db.read() as db:
            if (await db.exec(select(Volume.id).where(Volume.name == self.name))).first():
                raise Conflict(f"a volume named {self.name!r} already exists")
            if self.image_name is None:
                return None
            image = (await db.exec(select(Image).where(Image.name == self.image_name))).first()
        if image is None:
            raise NotFound(f"image {self.image_name!r} not found")
        if image.format not in FORMATS or not image.sha256:
            raise InvalidInput(
                f"image {image.name!r} is {image.format}: a volume is made from a qcow2 or raw"
                " disk image with a known sha256"
            )
        return image

    async def _place(self, volume_uuid: str) -> Placement:
        spec = RequestSpec(
            instance_uuid=volume_uuid,
            vcpus=0,
            ram_mb=0,
            disk_gb=self.size_gb,
            availability_zone=self.zone,
            requested_host=self.host,
        )
        plan = await self.conductor.scheduler.place([spec])
        (placement,) = plan.placements
        return placement

    async def _record(self, volume_uuid: str, host_id: int) -> tuple[Volume, Host]:
        taken = f"a volume named {self.name!r} already exists"
        try:
            async with duplicates_conflict("volumes", taken), self.conductor.db.session() as db:
                host = await db.get(Host, host_id)
                assert host is not None
                volume = Volume(
                    uuid=volume_uuid, name=self.name, host_id=host_id, size_gb=self.size_gb,
                    format=self.format, image_name=self.image_name, status=S.CREATING,
                    task_owner=str(Runner.here()), created_at=utcnow(), updated_at=utcnow(),
                )  # fmt: skip
                db.add(volume)
        except Conflict:
            async with self.conductor.db.session() as db:
                await release(db, volume_uuid)
            raise
        return volume, host

    async def _undo(self, volume: Volume) -> None:
        async with self.conductor.db.session() as db:
            await release(db, volume.uuid)


class VolumeDelete:
    """Refused while attached; the file, then the row and its claim."""

    def __init__(self, conductor: Conductor, volume: Volume) -> None:
        self.conductor, self.volume = conductor, volume

    async def execute(self) -> None:
        volume = self.volume
        if volume.instance_uuid is not None or volume.status == S.IN_USE:
            raise Conflict(f"volume {volume.name} is in use by server {await self._server()}")
        async with self.conductor.db.read() as db:
            query = select(VolumeSnapshot.name).where(VolumeSnapshot.volume_id == volume.id)
            snapshots = sorted((await db.exec(query)).all())
        if snapshots:
            raise Conflict(
                f"volume {volume.name} has snapshots ({', '.join(snapshots)}): delete them "
                "first (`herd volume snapshot delete`)"
            )
        before = volume.status
        volume = await take(self.conductor, volume, (S.AVAILABLE, S.ERROR), S.DELETING)
        async with self.conductor.db.read() as db:
            host = await db.get(Host, volume.host_id)
        assert host is not None
        try:
            await self.conductor.agent.volume_delete(target_of(host), volume_args(volume, host))
        except HerdError as exc:
            await settle(self.conductor, volume, before, error=f"delete failed: {exc}")
            raise
        async with self.conductor.db.session() as db:
            row = (await db.exec(select(Volume).where(Volume.uuid == volume.uuid))).one()
            await db.delete(row)
            await release(db, volume.uuid)

    async def _server(self) -> str:
        async with self.conductor.db.read() as db:
            name = (
                await db.exec(
                    select(Instance.name).where(Instance.uuid == self.volume.instance_uuid)
                )
            ).first()
        return name or str(self.volume.instance_uuid)


class VolumeExtend:
    """Grow the claim under the host's generation, then the file; shrink it back on
    failure."""

    def __init__(self, conductor: Conductor, volume: Volume, size_gb: int) -> None:
        self.conductor, self.volume, self.size_gb = conductor, volume, size_gb

    async def execute(self) -> Volume:
        volume = self.volume
        if not volume.size_gb < self.size_gb <= MAX_VOLUME_GB:
            raise InvalidInput(
                f"--size must be more than the volume's {volume.size_gb} GB (volumes only grow)"
            )
        if volume.instance_uuid is not None:
            await self._refuse_while_busy(volume)
        before = volume.status
        volume = await take(self.conductor, volume, (S.AVAILABLE, S.IN_USE), S.EXTENDING)
        try:
            host = await self._claim(volume, self.size_gb)
        except HerdError:
            await settle(self.conductor, volume, before)
            raise
        args = volume_args(volume, host)
        args["size_gb"] = self.size_gb
        if volume.instance_uuid is not None:
            args["uuid"] = volume.instance_uuid
        try:
            await self.conductor.agent.volume_extend(target_of(host), args)
        except HerdError as exc:
            await self._claim(volume, volume.size_gb)
            await settle(self.conductor, volume, before, error=f"extend failed: {exc}")
            raise
        return await settle(self.conductor, volume, before, size_gb=self.size_gb, error=None)

    async def _refuse_while_busy(self, volume: Volume) -> None:
        """Not while its server has a task: a move copies the file, and growing the
        source meanwhile would be lost on the destination."""
        async with self.conductor.db.read() as db:
            query = select(Instance).where(Instance.uuid == volume.instance_uuid)
            server = (await db.exec(query)).first()
        if server is not None and server.task_state is not None:
            raise Conflict(
                f"volume {volume.name} is attached to server {server.name}, which is "
                f"{server.task_state}: extend it when that is done"
            )

    async def _claim(self, volume: Volume, size_gb: int) -> Host:
        return await set_disk_claim(self.conductor, volume.host_id, volume.uuid, size_gb)


async def set_disk_claim(conductor: Conductor, host_id: int, consumer: str, size_gb: int) -> Host:
    """``consumer``'s allocation on the host set to ``size_gb`` of disk (made if it has
    none), if the host has room for the difference, under the generation the check read
    (StaleGeneration: read again)."""

    async def attempt() -> Host:
        async with conductor.db.session() as db:
            (state,) = await load_host_states(db, [host_id])
            claim = (
                await db.exec(select(Allocation).where(Allocation.instance_uuid == consumer))
            ).first()
            more = size_gb - (claim.disk_gb if claim is not None else 0)
            if more > 0 and state.free_disk_gb < more:
                raise Conflict(
                    f"host {state.name} has {state.free_disk_gb:g} GB of disk free,"
                    f" {more} GB more is needed"
                )
            bumped = await db.exec(
                update(Host)  # type: ignore[call-overload]
                .where(col(Host.id) == host_id, col(Host.generation) == state.generation)
                .values(generation=col(Host.generation) + 1)
            )
            if bumped.rowcount != 1:
                raise StaleGeneration(state.name)
            if claim is None:
                claim = Allocation(
                    instance_uuid=consumer, host_id=host_id, vcpus=0, ram_mb=0,
                    disk_gb=size_gb, created_at=utcnow(),
                )  # fmt: skip
            claim.disk_gb = size_gb
            db.add(claim)
            host = await db.get(Host, host_id)
            assert host is not None
            return host

    return await retrying(attempt)
