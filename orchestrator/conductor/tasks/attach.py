"""Attach and detach a volume: Nova's os-volume_attachments, for a host's own volumes.

Each is a task on the server (its task taken, an instance action with one event) and
on the volume (``attaching``/``detaching`` while it runs), journalled before its one
host step. The host's step is idempotent (the disk found already there, or already
gone, is success), so recovery of a task whose herd died simply does it again. A
volume lives on one host: it is attached only to a server on that host.
"""

from __future__ import annotations

from typing import ClassVar

from sqlmodel import select

from orchestrator.conductor import lifecycle
from orchestrator.conductor.actions import finish_action
from orchestrator.conductor.hosts import target_of
from orchestrator.conductor.journal import TaskHandle
from orchestrator.conductor.manager import Conductor
from orchestrator.conductor.outcomes import Outcome, guard_outcome, outcome_of
from orchestrator.conductor.tasks.base import Resumed, Task
from orchestrator.conductor.tasks.volumes import S, settle, take, volume_args
from orchestrator.db.models import Host, Instance, Volume
from orchestrator.errors import Conflict, HerdError, InvalidInput
from orchestrator.guest_config import ROOT_DEVICE

DEVICES = tuple(f"vd{letter}" for letter in "cdefghijklmnopqrstuvwxyz")


class AttachVolumeTask(Task):
    kind = "attach_volume"
    RECOVERY: ClassVar[dict[str, str]] = {
        "attach": "finished: attached again (the host finds it done if it was); if that "
        "fails the volume is available again",
    }

    def __init__(
        self, conductor: Conductor, instance: Instance, volume: Volume, device: str | None
    ) -> None:
        super().__init__(conductor)
        self.instance, self.volume, self.device = instance, volume, device

    async def _execute(self) -> Outcome:
        if self.volume.status != S.AVAILABLE:
            return guard_outcome(
                self.instance, f"volume {self.volume.name} is {self.volume.status}, not available"
            )
        try:
            device = await self._device()
            row, action_id, host = await self.steps.begin(self.instance, "attach_volume")
        except (Conflict, InvalidInput) as exc:
            return guard_outcome(self.instance, str(exc))
        if host is None or host.id != self.volume.host_id:
            where = host.name if host else "no host"
            return await self.steps.abort(
                row, action_id, None,
                f"volume {self.volume.name} is on another host than server {row.name} "
                f"({where}): a volume is attached on its own host only",
            )  # fmt: skip
        try:
            volume = await take(
                self.conductor, self.volume, (S.AVAILABLE,), S.ATTACHING,
                instance_uuid=row.uuid, device=device,
            )  # fmt: skip
        except HerdError as exc:
            return await self.steps.abort(row, action_id, host.name, str(exc))
        await self.open_journal(
            row, action_id, step="attach", source_host_id=host.id,
            inputs={"volume": volume.uuid, "device": device},
        )  # fmt: skip
        return await self._attach(row, action_id, host, volume, device)

    async def _attach(
        self, row: Instance, action_id: int, host: Host, volume: Volume, device: str
    ) -> Outcome:
        args = volume_args(volume, host)
        args["uuid"], args["device"] = row.uuid, device
        self.progress.update(row, f"attaching {volume.name}", host=host.name)
        try:
            await self.steps.stepped(
                action_id, "attach_volume", host.name,
                self.agent.volume_attach(target_of(host), args),
                lambda done: f"{volume.name} as {done['device']}"
                + (" (hot)" if done.get("live") else ""),
            )  # fmt: skip
        except HerdError as exc:
            await settle(self.conductor, volume, S.AVAILABLE, instance_uuid=None, device=None)
            return await self.steps.abort(row, action_id, host.name, str(exc))
        await settle(self.conductor, volume, S.IN_USE)
        return await finish(self, row, action_id, host)

    async def _device(self) -> str:
        """The one asked for, if free, else the first free one after vdb."""
        async with self.db.read() as db:
            used = set(
                (
                    await db.exec(
                        select(Volume.device).where(Volume.instance_uuid == self.instance.uuid)
                    )
                ).all()
            )
        if self.device is None:
            free = [d for d in DEVICES if d not in used]
            if not free:
                raise InvalidInput(f"server {self.instance.name} has no free disk name left")
            return free[0]
        if self.device not in DEVICES:
            raise InvalidInput("--device must be vdc to vdz (vda is the root disk, vdb the seed)")
        if self.device in used:
            raise InvalidInput(f"server {self.instance.name} already has a volume as {self.device}")
        return self.device

    @classmethod
    async def resume(cls, conductor: Conductor, handle: TaskHandle, found: Resumed) -> Outcome:
        volume = await _journalled_volume(conductor, handle)
        task = cls(conductor, found.instance, volume, handle.inputs["device"])
        await task.adopt(handle, found.died)
        assert found.source is not None
        await task.note(f"attaching {volume.name} again on {found.source.name}")
        return await task._attach(
            found.instance, found.action_id, found.source, volume, handle.inputs["device"]
        )


class DetachVolumeTask(Task):
    kind = "detach_volume"
    RECOVERY: ClassVar[dict[str, str]] = {
        "detach": "finished: detached again (the host finds it done if it was); the volume "
        "is available",
    }

    def __init__(self, conductor: Conductor, instance: Instance, volume: Volume) -> None:
        super().__init__(conductor)
        self.instance, self.volume = instance, volume

    async def _execute(self) -> Outcome:
        if self.volume.instance_uuid != self.instance.uuid:
            return guard_outcome(
                self.instance,
                f"volume {self.volume.name} is not attached to server {self.instance.name}",
            )
        if self.volume.device == ROOT_DEVICE:
            return guard_outcome(
                self.instance,
                f"volume {self.volume.name} is server {self.instance.name}'s root disk: it "
                "is detached when the server is deleted",
            )
        try:
            row, action_id, host = await self.steps.begin(self.instance, "detach_volume")
        except Conflict as exc:
            return guard_outcome(self.instance, str(exc))
        try:
            volume = await take(self.conductor, self.volume, (S.IN_USE,), S.DETACHING)
        except HerdError as exc:
            return await self.steps.abort(row, action_id, host.name if host else None, str(exc))
        assert host is not None
        await self.open_journal(
            row, action_id, step="detach", source_host_id=host.id, inputs={"volume": volume.uuid}
        )
        return await self._detach(row, action_id, host, volume)

    async def _detach(self, row: Instance, action_id: int, host: Host, volume: Volume) -> Outcome:
        args = volume_args(volume, host)
        args["uuid"] = row.uuid
        self.progress.update(row, f"detaching {volume.name}", host=host.name)
        try:
            await self.steps.stepped(
                action_id, "detach_volume", host.name,
                self.agent.volume_detach(target_of(host), args),
                lambda done: f"{volume.name}" + (" (hot)" if done.get("live") else ""),
            )  # fmt: skip
        except HerdError as exc:
            await settle(self.conductor, volume, S.IN_USE)
            return await self.steps.abort(row, action_id, host.name, str(exc))
        await settle(self.conductor, volume, S.AVAILABLE, instance_uuid=None, device=None)
        return await finish(self, row, action_id, host)

    @classmethod
    async def resume(cls, conductor: Conductor, handle: TaskHandle, found: Resumed) -> Outcome:
        volume = await _journalled_volume(conductor, handle)
        task = cls(conductor, found.instance, volume)
        await task.adopt(handle, found.died)
        assert found.source is not None
        await task.note(f"detaching {volume.name} again on {found.source.name}")
        return await task._detach(found.instance, found.action_id, found.source, volume)


async def _journalled_volume(conductor: Conductor, handle: TaskHandle) -> Volume:
    """The volume a journalled attach or detach names: its row holds the volume's
    ``attaching``/``detaching`` status, so it cannot have been deleted meanwhile."""
    async with conductor.db.read() as db:
        query = select(Volume).where(Volume.uuid == handle.inputs["volume"])
        return (await db.exec(query)).one()


async def finish(task: Task, row: Instance, action_id: int, host: Host) -> Outcome:
    """The server's task is over, its action done."""
    async with task.db.session() as db:
        held = await lifecycle.hold(db, row.uuid, action_id)
        if held is not None:
            lifecycle.end_task(held)
            db.add(held)
            row = held
        await finish_action(db, action_id)
    task.progress.update(row, row.vm_state, host=host.name)
    return outcome_of(row, host.name)


async def attach_boot_volumes(conductor: Conductor, outcome: Outcome) -> Outcome:
    """`server create --volume`: once the server is built (on its volumes' host, which
    the scheduler held it to), attach them in order, hot; then the request spec
    forgets their host, so a later move is scheduled freely. A volume that cannot be
    attached is the create's error (the server runs without it, and says so)."""
    async with conductor.db.session() as db:
        row = (await db.exec(select(Instance).where(Instance.uuid == outcome.uuid))).one()
        names = list((row.request_spec or {}).get("volumes") or ())
        spec = {k: v for k, v in (row.request_spec or {}).items() if k not in BOOT_KEYS}
        row.request_spec = spec
        db.add(row)
    if not names or outcome.error is not None or outcome.vm_state != "active":
        return outcome
    errors = []
    for name in names:
        async with conductor.db.read() as db:
            volume = (await db.exec(select(Volume).where(Volume.name == name))).first()
            instance = (await db.exec(select(Instance).where(Instance.uuid == outcome.uuid))).one()
        if volume is None:
            errors.append(f"volume {name} is gone")
            continue
        done = await AttachVolumeTask(conductor, instance, volume, None).execute()
        if done.error:
            errors.append(f"volume {name} not attached: {done.error}")
    if not errors:
        return outcome
    return Outcome(
        outcome.uuid, outcome.name, outcome.host, outcome.vm_state, None, "; ".join(errors)
    )


BOOT_KEYS = ("volume_host", "volumes")
