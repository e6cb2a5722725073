"""Shelve and unshelve (Nova's shelve offload): a server that keeps its identity but no
host while it is not needed.

Shelve stops the guest, images its root disk into its host's cache (as `server image
create` does, registered ``cache://HOST``, so never pruned there), then offloads it: the
domain and disk go from the host, the claim is released, and the server stays
``shelved_offloaded`` with no host, its ports and so its addresses kept. Unshelve is a
placement through the scheduler (anywhere, or ``--host``) and a build from that image,
with the same UUID, MACs and addresses; the image is relayed to the new host through
this machine if it is another one.

Volumes stay attached while shelved: their files stay on their host, so the unshelve is
placed there (the volume_host filter says so when ``--host`` names another).

Until the offload the server is whole where it was (a rollback starts it again if it
ran); from the image's registration on, the shelve only goes forward.
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import ClassVar

from sqlalchemy import update
from sqlmodel import col, select

from orchestrator.conductor import lifecycle
from orchestrator.conductor.actions import finish_action
from orchestrator.conductor.hosts import target_of
from orchestrator.conductor.journal import TaskHandle
from orchestrator.conductor.manager import Conductor
from orchestrator.conductor.outcomes import Outcome, guard_outcome, outcome_of
from orchestrator.conductor.shelve_images import SHELVED_IMAGE, drop_shelve_image
from orchestrator.conductor.steps import FOLLOW_MARGIN, check_timeout
from orchestrator.conductor.tasks.base import Resumed, Task
from orchestrator.conductor.tasks.image_create import register_image
from orchestrator.db.engine import Database
from orchestrator.db.models import Host, Image, Instance, PowerState, VmState, Volume, utcnow
from orchestrator.errors import Conflict, HerdError, InvalidInput, NoValidHost
from orchestrator.scheduler.claims import release

POWER_LIMITS = (0, 3600)


def shelve_image_name(row: Instance) -> str:
    """Nova names it ``<server>-shelved``; herd's image names are unique, so the time
    and a random suffix tell one shelve of the server from the next (two shelves in one
    second of an unchanged disk would otherwise name, and hash to, the same image)."""
    return f"{row.name}-shelved-{utcnow().strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}"


class ShelveTask(Task):
    kind = "shelve"
    RECOVERY: ClassVar[dict[str, str]] = {
        "stop": "rolled back: started again if it was running; nothing else had changed",
        "snapshot": "rolled back: no image is registered; started again if it was running",
        "register": "finished: the image the host made (its sha256 journalled) is registered, "
        "then the server offloaded; rolled back instead (started again if it ran) if the host "
        "no longer has the image",
        "offload": "finished: its domain and disk removed from the host (or left to "
        "reconcile if the host does not answer), its claim released",
    }

    def __init__(self, conductor: Conductor, instance: Instance, *, timeout: int = 60) -> None:
        super().__init__(conductor)
        self.instance, self.timeout = instance, timeout

    async def _execute(self) -> Outcome:
        try:
            check_timeout(self.timeout, POWER_LIMITS)
            row, action_id, host = await self.steps.begin(self.instance, "shelve")
        except (Conflict, InvalidInput) as exc:
            return guard_outcome(self.instance, str(exc))
        if host is None:
            return await self.steps.abort(row, action_id, None, "the server is on no host")
        running = row.vm_state != VmState.STOPPED
        name = shelve_image_name(row)
        await self.open_journal(
            row, action_id, step="stop", source_host_id=host.id,
            inputs={"name": name, "start": running},
        )  # fmt: skip
        try:
            if running:
                await self.steps.stop_source(row, host, action_id, self.timeout, "stop")
            self.progress.update(row, "imaging its disk", host=host.name)
            made = await self.steps.stepped(
                action_id, "snapshot", host.name,
                self.agent.image_snapshot(target_of(host), row.uuid),
                lambda m: f"image {name}: {m['size']} bytes, sha256 {m['sha256'][:12]}",
            )  # fmt: skip
        except HerdError as exc:
            await self.steps.put_back(row, host, running)
            return await self.steps.abort(row, action_id, host.name, f"shelve: {exc}")
        assert self.journal is not None
        await self.journal.step("register", sha256=made["sha256"], size=made["size"])
        return await self._offload(row, action_id, host, name, made["sha256"], made["size"])

    async def _offload(
        self, row: Instance, action_id: int, host: Host, name: str, sha256: str, size: int
    ) -> Outcome:
        """Register the image, then free the host while the task is still held (so no
        unshelve onto the same host can start before its old domain is gone)."""
        try:
            image_id = await register_image(
                self.db, row, host, name, sha256, size, image_type=SHELVED_IMAGE
            )
        except Conflict as exc:
            await self.steps.put_back(row, host, bool(self.journal_input("start")))
            return await self.steps.abort(row, action_id, host.name, f"shelve: {exc}")
        registered = await self.steps.step(action_id, "register", host.name, owned=False)
        await self.steps.end_step(registered, True, f"image {name} ({sha256[:12]})")
        step = await self.steps.step(action_id, "offload", host.name)
        self.progress.update(row, "offloading", host=host.name)
        try:  # the image must be there before the disk goes (a prune may have run since)
            cached = await self.agent.image_status(target_of(host), sha256)
        except HerdError as exc:
            cached = None
            why = f"{host.name} cannot say whether it has the image: {exc}"
        else:
            why = f"the image {name} is no longer in {host.name}'s cache"
        if cached is None or not cached["present"]:
            await self.steps.end_step(step, False, why)
            await self.steps.put_back(row, host, bool(self.journal_input("start")))
            return await self.steps.abort(row, action_id, host.name, f"shelve: {why}")
        try:
            await self.agent.delete(target_of(host), row.uuid, timeout=FOLLOW_MARGIN)
        except HerdError as exc:  # shelved all the same: its domain is only stopped there
            await self.steps.end_step(step, False, f"{exc}; `herd reconcile` removes it")
        else:
            await self.steps.end_step(step, True, f"{host.name} freed")
        async with self.db.session() as db:
            held = await lifecycle.hold(db, row.uuid, action_id)
            if held is not None:
                before = held.image_id
                held.vm_state, held.power_state = VmState.SHELVED_OFFLOADED, PowerState.NOSTATE
                held.host_id, held.image_id, held.image_name = None, image_id, name
                lifecycle.end_task(held)
                db.add(held)
                await release(db, row.uuid)
                await db.flush()
                await drop_shelve_image(db, held, before)  # an earlier shelve's, now unused
                row = held
            await finish_action(db, action_id)
        self.progress.update(row, row.vm_state, host=host.name)
        return outcome_of(row, None)

    def journal_input(self, key: str) -> object:
        return self.journal.inputs.get(key) if self.journal is not None else None

    @classmethod
    async def resume(cls, conductor: Conductor, handle: TaskHandle, found: Resumed) -> Outcome:
        task = cls(conductor, found.instance)
        await task.adopt(handle, found.died)
        host = await task.held_host(found)
        if host is None:
            return outcome_of(found.instance, None)
        row, action_id, inputs = found.instance, found.action_id, handle.inputs
        if handle.current_step in ("register", "offload") and "sha256" in inputs:
            await task.note(f"shelving it: image {inputs['name']} made on {host.name}")
            return await task._offload(
                row, action_id, host, inputs["name"], inputs["sha256"], inputs["size"]
            )
        running = bool(inputs.get("start", True))
        await task.steps.put_back(row, host, running)
        await task.note("no image registered: " + ("started again" if running else "it stays"))
        return await task.steps.abort(
            row, action_id, host.name, f"shelve stopped at {handle.current_step}: rolled back"
        )


async def unplace(db: Database, instance_uuid: str, dest: Host) -> None:
    """An unshelve that failed before its build ran on ``dest``: the server is shelved
    again, with no host and no claim (a failed build job does the same in apply_job).
    Only if it is still so, idle, on ``dest``: never a server another action has taken."""
    async with db.session() as session:
        result = await session.exec(
            update(Instance)  # type: ignore[call-overload]
            .where(
                col(Instance.uuid) == instance_uuid,
                col(Instance.vm_state) == VmState.SHELVED_OFFLOADED,
                col(Instance.task_state).is_(None),
                col(Instance.host_id) == dest.id,
            )
            .values(host_id=None, updated_at=utcnow())
        )
        if result.rowcount == 1:
            await release(session, instance_uuid)


class UnshelveTask(Task):
    kind = "unshelve"
    RECOVERY: ClassVar[dict[str, str]] = {
        "schedule": "finished: placed again (its claim, if one was made, released first), "
        "then built",
        "prepare": "finished: built on the chosen host",
        "cast": "finished: the build job is followed if the host has it, else built again",
    }

    def __init__(
        self,
        conductor: Conductor,
        instance: Instance,
        host_name: str | None = None,
        zone: str | None = None,
        *,
        wait: bool = True,
    ) -> None:
        super().__init__(conductor)
        self.instance, self.host_name, self.zone, self.wait = instance, host_name, zone, wait

    async def _execute(self) -> Outcome:
        try:
            row, action_id, _ = await self.steps.begin(self.instance, "unshelve")
        except Conflict as exc:
            return guard_outcome(self.instance, str(exc))
        await self.open_journal(
            row, action_id, step="schedule", inputs={"host": self.host_name, "zone": self.zone}
        )
        return await self._place_and_build(row, action_id)

    async def _place_and_build(self, row: Instance, action_id: int) -> Outcome:
        try:
            await self._check_image(row)
            dest = await self._schedule(row, action_id)
        except (NoValidHost, InvalidInput) as exc:
            failed = await self.steps.abort(row, action_id, None, f"unshelve: {exc}")
            return dataclasses.replace(failed, failed_at="schedule")
        if dest is None:
            return await self.steps.abort(row, action_id, None, "its task was taken over")
        outcome = await self.steps.build_on(
            row, dest, "unshelve", action_id, start=True, wait=self.wait
        )
        if outcome.error is not None:
            await unplace(self.db, row.uuid, dest)
        return outcome

    async def _check_image(self, row: Instance) -> None:
        async with self.db.read() as db:
            image = await db.get(Image, row.image_id) if row.image_id else None
        if image is None:
            raise InvalidInput(
                f"server {row.name}'s shelve image {row.image_name!r} is gone: it cannot be "
                "unshelved (delete it, or register the image again under that name)"
            )

    async def _schedule(self, row: Instance, action_id: int) -> Host | None:
        """A host for it, claimed and recorded as its host before the build is cast."""
        async with self.db.read() as db:
            volumes = (
                await db.exec(
                    select(Volume.name, Host.name)
                    .join(Host, Host.id == Volume.host_id)  # type: ignore[arg-type]
                    .where(Volume.instance_uuid == row.uuid)
                )
            ).all()
        spec = await self.steps.spec(row)
        spec = dataclasses.replace(
            spec,
            requested_host=self.host_name,
            availability_zone=self.zone or spec.availability_zone,
            volume_host=volumes[0][1] if volumes else None,
            volumes=tuple(sorted(v for v, _ in volumes)),
        )
        self.progress.update(row, "scheduling")
        async with self.db.session() as db:
            if await lifecycle.hold(db, row.uuid, action_id) is None:
                return None
            await release(db, row.uuid)  # one an earlier, dead try made
        plan = await self.conductor.scheduler.place([spec])
        placement = plan.placements[0]
        async with self.db.session() as db:
            fresh = await lifecycle.hold(db, row.uuid, action_id)
            if fresh is None:
                await release(db, row.uuid)
                return None
            fresh.host_id = placement.host_id
            fresh.updated_at = utcnow()
            db.add(fresh)
            dest = await db.get(Host, placement.host_id)
        assert dest is not None and self.journal is not None
        await self.journal.destination(dest.id)
        return dest

    @classmethod
    async def resume(cls, conductor: Conductor, handle: TaskHandle, found: Resumed) -> Outcome:
        """An unshelve only goes forward: the server is shelved until it runs again."""
        inputs = handle.inputs
        task = cls(conductor, found.instance, inputs.get("host"), inputs.get("zone"))
        await task.adopt(handle, found.died)
        row, action_id, dest = found.instance, found.action_id, found.dest
        if row.task_action_id != action_id:
            await task.note("its action no longer holds the server: nothing to do")
            return outcome_of(row, None)
        if dest is None or row.host_id != dest.id:
            await task.note("placing it again")
            return await task._place_and_build(row, action_id)
        await task.note(f"building it again on {dest.name}")
        return await task.steps.build_on_again(row, dest, "unshelve", action_id, start=True)
