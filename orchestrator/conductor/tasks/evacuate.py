"""Evacuate: rebuild every server of a host that is down on other hosts.

Through the scheduler, same UUIDs, same addresses. The old host is not told (it cannot
be); when it comes back, `herd reconcile` reaps the stale domains there, whose servers
the DB now places elsewhere, instead of them ever running twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import ClassVar

from sqlalchemy import delete
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from orchestrator.conductor import lifecycle
from orchestrator.conductor.hosts import target_of
from orchestrator.conductor.journal import TaskHandle
from orchestrator.conductor.manager import Conductor
from orchestrator.conductor.outcomes import Outcome, guard_outcome
from orchestrator.conductor.tasks.base import Resumed, Task
from orchestrator.db.models import Allocation, Host, Instance, VmState
from orchestrator.errors import Conflict, HerdError, NotFound, NoValidHost
from orchestrator.scheduler.claims import hand_over, release

_ASIDE = uuid.UUID("6d1c2f0e-8a51-4c1e-9f3a-5e0b7a2d4c18")


def set_aside(instance_uuid: str) -> str:
    """The consumer the dead host's claim is kept under while the server is placed again
    (its own UUID takes the destination's claim): given back to the server if no host has
    room, so an evacuation that goes nowhere leaves the server its claim where it is."""
    return str(uuid.uuid5(_ASIDE, instance_uuid))


async def _put_aside(db: AsyncSession, row: Instance, source: Host) -> None:
    """Any destination claim an earlier try left goes; the source's is set aside (once:
    a resumed evacuation finds it there already)."""
    await db.exec(
        delete(Allocation).where(
            Allocation.instance_uuid == row.uuid,  # type: ignore[arg-type]
            Allocation.host_id != source.id,  # type: ignore[arg-type]
        )
    )
    aside = select(Allocation).where(Allocation.instance_uuid == set_aside(row.uuid))
    if (await db.exec(aside)).first() is None:
        await hand_over(db, row.uuid, set_aside(row.uuid))


async def _take_back(db: AsyncSession, row: Instance) -> None:
    """No host had room: the server keeps its claim on the host it is recorded on."""
    await hand_over(db, set_aside(row.uuid), row.uuid)


class EvacuateTask(Task):
    kind = "evacuate"
    RECOVERY: ClassVar[dict[str, str]] = {
        "schedule": "finished: placed again (the dead host's claim set aside, and handed back "
        "if no host has room), then built",
        "prepare": "finished: built again on the destination",
        "cast": "finished: the build job is followed if the destination has it, else built again",
    }

    def __init__(self, conductor: Conductor, instance: Instance, source: Host) -> None:
        super().__init__(conductor)
        self.instance, self.source = instance, source

    async def _execute(self) -> Outcome:
        try:
            row, action_id, _ = await self.steps.begin(self.instance, "evacuate")
        except Conflict as exc:
            return guard_outcome(self.instance, str(exc))
        was_stopped = row.vm_state == VmState.STOPPED
        await self.open_journal(
            row, action_id, step="schedule", source_host_id=self.source.id,
            inputs={"start": not was_stopped},
        )  # fmt: skip
        async with self.db.session() as db:
            await _put_aside(db, row, self.source)
        try:
            dest = await self._schedule(row, action_id)
        except NoValidHost as exc:
            async with self.db.session() as db:
                await _take_back(db, row)
            failed = await self.steps.abort(row, action_id, self.source.name, f"evacuate: {exc}")
            return dataclasses.replace(failed, failed_at="schedule")
        if dest is None:
            return await self.steps.abort(
                row, action_id, self.source.name, "its task was taken over"
            )
        return await self.steps.build_on(
            row, dest, "evacuate", action_id, start=not was_stopped, wait=True
        )

    async def _schedule(self, row: Instance, action_id: int) -> Host | None:
        """A new host for it, recorded as its host before the build there is cast."""
        spec = dataclasses.replace(
            await self.steps.spec(row),
            requested_host=None,
            ignore_hosts=frozenset({self.source.name}),
        )
        self.progress.update(row, "scheduling", host=self.source.name)
        plan = await self.conductor.scheduler.place([spec])
        placement = plan.placements[0]
        async with self.db.session() as db:
            fresh = await lifecycle.hold(db, row.uuid, action_id)
            if fresh is None:
                await release(db, row.uuid)  # the claim just made for it on the destination
                return None
            fresh.host_id = placement.host_id
            db.add(fresh)
            await release(db, set_aside(row.uuid))  # placed: the dead host's claim goes
            dest = await db.get(Host, placement.host_id)
        assert dest is not None and self.journal is not None
        await self.journal.destination(dest.id)
        return dest

    @classmethod
    async def resume(cls, conductor: Conductor, handle: TaskHandle, found: Resumed) -> Outcome:
        """An evacuation only goes forward: its source is down, so back is nowhere."""
        assert found.source is not None
        task = cls(conductor, found.instance, found.source)
        await task.adopt(handle, found.died)
        row, action_id, dest = found.instance, found.action_id, found.dest
        start = bool(handle.inputs.get("start", True))
        if dest is None or row.host_id != dest.id:
            await task.note("placing it again")
            async with task.db.session() as db:
                await _put_aside(db, row, found.source)
            try:
                dest = await task._schedule(row, action_id)
            except NoValidHost as exc:
                async with task.db.session() as db:
                    await _take_back(db, row)
                return await task.steps.abort(row, action_id, found.source.name, f"evacuate: {exc}")
            if dest is None:
                return await task.steps.abort(row, action_id, found.source.name, "task taken over")
            return await task.steps.build_on(
                row, dest, "evacuate", action_id, start=start, wait=True
            )
        await task.note(f"building it again on {dest.name}")
        return await task.steps.build_on_again(row, dest, "evacuate", action_id, start=start)


async def evacuate(conductor: Conductor, host_name: str, *, wait: bool = True) -> list[Outcome]:
    """Every server of ``host_name`` onto other hosts, refused while the host answers."""
    async with conductor.db.session() as db:
        host = (await db.exec(select(Host).where(Host.name == host_name))).first()
        if host is None:
            raise NotFound(f"host {host_name!r} not found")
        instances = list(
            (
                await db.exec(
                    select(Instance).where(
                        Instance.host_id == host.id,
                        Instance.vm_state != VmState.DELETED,
                        Instance.vm_state != VmState.BUILDING,
                    )
                )
            ).all()
        )
    await _refuse_if_alive(conductor, host)
    tasks = [EvacuateTask(conductor, i, host) for i in instances]
    return list(await asyncio.gather(*(t.execute() for t in tasks)))


async def _refuse_if_alive(conductor: Conductor, host: Host) -> None:
    """Evacuating a host that still runs its guests would run each twice."""
    conductor.pool.forget_failure(host.name)
    try:
        await asyncio.wait_for(conductor.agent.ping(target_of(host)), 15)
    except (HerdError, TimeoutError):
        return
    raise Conflict(
        f"host {host.name} answers: evacuate is for hosts that are down "
        "(stop its libvirtd or power it off first)"
    )
