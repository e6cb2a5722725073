"""Rescue and unrescue (Nova's): a server that will not boot, booted from a rescue image
with its own root disk attached second, so it can be repaired from inside; unrescue
boots it from its own disk again.

The rescue image is ``--image`` or the server's own image (Nova's default), on a fresh
disk each time. The host does both halves (agent/rescue.py): it keeps the server's
definition aside and defines the rescue one under the same name and UUID, so the server
keeps its host, claim, MACs and addresses throughout. Both host calls repeat safely, so
recovery finishes either forward; a rescue that fails gives the server its own disk
back and starts it again if it ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from typing import ClassVar

from sqlmodel import select

from orchestrator.conductor import lifecycle
from orchestrator.conductor.actions import finish_action
from orchestrator.conductor.hosts import target_of
from orchestrator.conductor.journal import TaskHandle
from orchestrator.conductor.manager import Conductor
from orchestrator.conductor.outcomes import Outcome, guard_outcome, outcome_of
from orchestrator.conductor.steps import check_timeout
from orchestrator.conductor.tasks.base import Resumed, Task
from orchestrator.db.models import POWER_OF, Host, Image, Instance, PowerState, VmState
from orchestrator.errors import Conflict, HerdError, InvalidInput, NotFound
from orchestrator.guest_config import boot_images, load_guest_config
from orchestrator.rpc.agent_api import Rescued

POWER_LIMITS = (0, 3600)


async def settle(
    task: Task, row: Instance, action_id: int, host: Host, state: str, done: Rescued
) -> Outcome:
    """The host call is done: the server in ``state``, its power as the host says."""
    async with task.db.session() as db:
        held = await lifecycle.hold(db, row.uuid, action_id)
        if held is not None:
            held.vm_state = state
            held.power_state = POWER_OF.get(str(done.get("state")), PowerState.NOSTATE)
            lifecycle.end_task(held)
            db.add(held)
            row = held
        await finish_action(db, action_id)
    task.progress.update(row, row.vm_state, host=host.name)
    return outcome_of(row, host.name)


class RescueTask(Task):
    kind = "rescue"
    RECOVERY: ClassVar[dict[str, str]] = {
        "stop": "rolled back: started again if it was running; nothing else had changed",
        "rescue": "finished: the host's rescue is made again (it repeats safely); if it "
        "fails, the server gets its own disk back",
    }

    def __init__(
        self,
        conductor: Conductor,
        instance: Instance,
        image_name: str | None = None,
        *,
        timeout: int = 60,
    ) -> None:
        super().__init__(conductor)
        self.instance, self.image_name, self.timeout = instance, image_name, timeout

    async def _execute(self) -> Outcome:
        try:
            check_timeout(self.timeout, POWER_LIMITS)
            image = await self._image()
            row, action_id, host = await self.steps.begin(self.instance, "rescue")
        except (Conflict, InvalidInput, NotFound) as exc:
            return guard_outcome(self.instance, str(exc))
        if host is None:
            return await self.steps.abort(row, action_id, None, "the server is on no host")
        running = row.vm_state == VmState.ACTIVE
        await self.open_journal(
            row, action_id, step="stop", source_host_id=host.id,
            inputs={"image": image.name, "start": running},
        )  # fmt: skip
        try:
            if running:
                await self.steps.stop_source(row, host, action_id, self.timeout, "stop")
        except HerdError as exc:
            await self.steps.put_back(row, host, running)
            return await self.steps.abort(row, action_id, host.name, f"rescue: {exc}")
        return await self._rescue(row, action_id, host, image, running)

    async def _image(self) -> Image:
        async with self.db.read() as db:
            if self.image_name is None:
                image = (
                    await db.get(Image, self.instance.image_id) if self.instance.image_id else None
                )
                if image is None:
                    raise NotFound(
                        f"server {self.instance.name}'s image {self.instance.image_name!r} is "
                        "gone: name a rescue image with --image"
                    )
                return image
            image = (await db.exec(select(Image).where(Image.name == self.image_name))).first()
        if image is None:
            raise NotFound(f"image {self.image_name!r} not found")
        if image.format in ("aki", "ari"):
            raise InvalidInput(f"image {image.name!r} is a kernel or ramdisk, not a bootable disk")
        return image

    async def _rescue(
        self, row: Instance, action_id: int, host: Host, image: Image, running: bool
    ) -> Outcome:
        target = target_of(host)
        self.progress.update(row, "rescuing", host=host.name, detail=f"from {image.name}")
        try:
            args = await self._args(row, image)
            await asyncio.gather(*(self.conductor.images.ensure(target, i) for i in args[1]))
            done: Rescued = await self.steps.stepped(
                action_id, "rescue", host.name, self.agent.rescue(target, args[0]),
                lambda r: f"booted from {image.name}; its own disk is {r.get('root_device')} "
                "(serial herd-rescued-root)",
            )  # fmt: skip
        except HerdError as exc:
            # Its own definition back, as it was (the host restores it on its own
            # failures; this covers a call that timed out or whose answer was lost).
            with contextlib.suppress(HerdError):
                await self.agent.unrescue(target, row.uuid, start=running)
            return await self.steps.abort(row, action_id, host.name, f"rescue: {exc}")
        return await settle(self, row, action_id, host, VmState.RESCUED, done)

    async def _args(self, row: Instance, image: Image) -> tuple[dict, list[Image]]:
        """The rescue call's arguments (the image as a build carries it) and the images
        the host must have cached first."""
        async with self.db.read() as db:
            config = await load_guest_config(db, row)
            kernel, ramdisk = await boot_images(db, image)
        config = dataclasses.replace(config, image=image, kernel=kernel, ramdisk=ramdisk)
        built = config.build_args(row, "qemu", b"")
        args = {"uuid": row.uuid, "image": built["image"]}
        if "boot" in built:
            args["boot"] = built["boot"]
        return args, config.images

    @classmethod
    async def resume(cls, conductor: Conductor, handle: TaskHandle, found: Resumed) -> Outcome:
        task = cls(conductor, found.instance, handle.inputs.get("image"))
        await task.adopt(handle, found.died)
        row, action_id, host = found.instance, found.action_id, await task.held_host(found)
        if host is None:
            return outcome_of(row, None)
        running = bool(handle.inputs.get("start", False))
        if handle.current_step == "rescue":
            try:
                image = await task._image()
            except (NotFound, InvalidInput) as exc:
                image = None
                why = str(exc)
            if image is not None:
                await task.note(f"rescuing it again from {image.name}")
                return await task._rescue(row, action_id, host, image, running)
            await task.note(f"its rescue image is gone ({why}): its own disk back")
            with contextlib.suppress(HerdError):
                await task.agent.unrescue(target_of(host), row.uuid, start=running)
            return await task.steps.abort(row, action_id, host.name, f"rescue: {why}")
        await task.steps.put_back(row, host, running)
        await task.note("started again" if running else "nothing had changed")
        return await task.steps.abort(
            row, action_id, host.name, "rescue stopped at stop: rolled back"
        )


class UnrescueTask(Task):
    kind = "unrescue"
    RECOVERY: ClassVar[dict[str, str]] = {
        "unrescue": "finished: the host gives the server its own definition back and starts "
        "it (it repeats safely)",
    }

    def __init__(self, conductor: Conductor, instance: Instance) -> None:
        super().__init__(conductor)
        self.instance = instance

    async def _execute(self) -> Outcome:
        try:
            row, action_id, host = await self.steps.begin(self.instance, "unrescue")
        except Conflict as exc:
            return guard_outcome(self.instance, str(exc))
        if host is None:
            return await self.steps.abort(row, action_id, None, "the server is on no host")
        await self.open_journal(row, action_id, step="unrescue", source_host_id=host.id)
        return await self._unrescue(row, action_id, host)

    async def _unrescue(self, row: Instance, action_id: int, host: Host) -> Outcome:
        self.progress.update(row, "unrescuing", host=host.name)
        try:
            done = await self.steps.stepped(
                action_id, "unrescue", host.name, self.agent.unrescue(target_of(host), row.uuid),
                lambda r: f"booted from its own disk, {r.get('state')}",
            )  # fmt: skip
        except HerdError as exc:
            return await self.steps.abort(row, action_id, host.name, f"unrescue: {exc}")
        return await settle(self, row, action_id, host, VmState.ACTIVE, done)

    @classmethod
    async def resume(cls, conductor: Conductor, handle: TaskHandle, found: Resumed) -> Outcome:
        task = cls(conductor, found.instance)
        await task.adopt(handle, found.died)
        host = await task.held_host(found)
        if host is None:
            return outcome_of(found.instance, None)
        await task.note(f"unrescuing it on {host.name}")
        return await task._unrescue(found.instance, found.action_id, host)
