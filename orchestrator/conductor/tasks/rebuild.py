"""Rebuild: a new root disk from the image (the same, or another), on the same host.

Same UUID, same addresses, same user data; a stopped server stays stopped. Its one
host step is a durable ``rebuild`` job (the build op with ``rebuild``), so it is
finished by whoever collects the job; before the job runs nothing has changed.
"""

from __future__ import annotations

from typing import ClassVar

from sqlmodel import select

from orchestrator.conductor import lifecycle
from orchestrator.conductor.journal import TaskHandle
from orchestrator.conductor.manager import Conductor
from orchestrator.conductor.outcomes import Outcome, guard_outcome
from orchestrator.conductor.tasks.base import Resumed, Task
from orchestrator.db.models import Image, Instance, VmState
from orchestrator.errors import Conflict, InvalidInput, NotFound


class RebuildTask(Task):
    kind = "rebuild"
    RECOVERY: ClassVar[dict[str, str]] = {
        "prepare": "finished: built again on its host",
        "cast": "finished: the rebuild job is followed if the host has it, else built again",
    }

    def __init__(
        self,
        conductor: Conductor,
        instance: Instance,
        image_name: str | None = None,
        *,
        wait: bool = True,
    ) -> None:
        super().__init__(conductor)
        self.instance, self.image_name, self.wait = instance, image_name, wait

    async def _execute(self) -> Outcome:
        image = await self._image(self.image_name) if self.image_name else None
        try:
            row, action_id, host = await self.steps.begin(self.instance, "rebuild")
        except Conflict as exc:
            return guard_outcome(self.instance, str(exc))
        if host is None:
            return await self.steps.abort(row, action_id, None, "the server is on no host")
        start = row.vm_state != VmState.STOPPED
        await self.open_journal(
            row, action_id, step="prepare", source_host_id=host.id, inputs={"start": start}
        )
        if image is not None and not await self._wear_image(row, action_id, image):
            return await self.steps.abort(row, action_id, host.name, "its task was taken over")
        return await self.steps.build_on(
            row, host, "rebuild", action_id, start=start, wait=self.wait
        )

    @classmethod
    async def resume(cls, conductor: Conductor, handle: TaskHandle, found: Resumed) -> Outcome:
        """A rebuild only goes forward: the disk may be half replaced already."""
        task = cls(conductor, found.instance)
        await task.adopt(handle, found.died)
        assert found.source is not None
        await task.note(f"building it again on {found.source.name}")
        return await task.steps.build_on_again(
            found.instance, found.source, "rebuild", found.action_id,
            start=bool(handle.inputs.get("start", True)),
        )  # fmt: skip

    async def _wear_image(self, row: Instance, action_id: int, image: Image) -> bool:
        async with self.db.session() as db:
            fresh = await lifecycle.hold(db, row.uuid, action_id)
            if fresh is None:
                return False
            fresh.image_id, fresh.image_name = image.id, image.name
            fresh.request_spec = {**fresh.request_spec, "image_properties": dict(image.properties)}
            db.add(fresh)
        return True

    async def _image(self, name: str) -> Image:
        instance = self.instance
        async with self.db.session() as db:
            image = (await db.exec(select(Image).where(Image.name == name))).first()
        if image is None:
            raise NotFound(f"image {name!r} not found")
        if image.format in ("aki", "ari"):
            raise InvalidInput(f"image {name!r} is a kernel or ramdisk, not a bootable disk")
        if image.min_ram_mb > instance.ram_mb or (
            instance.disk_gb and image.min_disk_gb > instance.disk_gb
        ):
            raise InvalidInput(
                f"image {name!r} needs {image.min_ram_mb} MiB RAM and {image.min_disk_gb} GiB "
                f"disk; server {instance.name} has {instance.ram_mb} MiB and {instance.disk_gb} GiB"
            )
        return image
