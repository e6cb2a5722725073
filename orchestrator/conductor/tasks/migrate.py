"""Cold migration through the orchestrator.

Stop on the source, carry the disk and the attached volumes over SFTP (source → here →
destination: the hosts need not reach each other; conductor/volume_moves.py), start on
the destination from the same disk with a fresh seed, then remove the source copy.
Both claims are held while it moves — the source's by the migration's UUID, as a
resize or live migration holds it — so no room the server may return to is given
away; a failure before the destination runs gives the source claim back to the server
(it was never free) and puts the server back.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from agent import specs as agent_specs
from orchestrator.conductor import lifecycle, migration_records, volume_moves
from orchestrator.conductor.actions import finish_action, record_event
from orchestrator.conductor.hosts import target_of
from orchestrator.conductor.journal import TaskHandle, TaskTaken
from orchestrator.conductor.manager import Conductor
from orchestrator.conductor.outcomes import Outcome, guard_outcome, outcome_of
from orchestrator.conductor.steps import FOLLOW_MARGIN, POWER_TIMEOUT, check_timeout
from orchestrator.conductor.tasks.base import Resumed, Task
from orchestrator.db.models import (
    POWER_OF,
    Host,
    Instance,
    MigrationStatus,
    PowerState,
    VmState,
    Volume,
)
from orchestrator.errors import Conflict, HerdError, NoValidHost


class MigrateTask(Task):
    kind = "migrate"
    RECOVERY: ClassVar[dict[str, str]] = {
        "schedule": "rolled back: the destination's new claim is released; the server keeps "
        "its claim on the source",
        "stop_source": "rolled back: started again on the source if it was running",
        "copy_disk": "rolled back: the partial copy on the destination is removed; started "
        "again on the source if it was running",
        "copy_volumes": "rolled back: the volumes' copies on the destination are removed "
        "(the source files are the volumes until the switch); started again on the source "
        "if it was running",
        "spawn": "finished if the destination has the domain, else rolled back",
        "switch": "finished if the switch committed or the destination has the domain (the DB "
        "places it there, the source copy is removed), else rolled back",
        "cleanup_source": "finished: the source copy and its volumes' old files are removed "
        "(if the source does not answer, reconcile reaps the domain and reports the files)",
    }

    def __init__(
        self,
        conductor: Conductor,
        instance: Instance,
        host_name: str | None = None,
        *,
        timeout: int = POWER_TIMEOUT,
    ) -> None:
        super().__init__(conductor)
        self.instance, self.host_name = instance, host_name
        self.timeout = check_timeout(timeout, agent_specs.STOP_TIMEOUT)
        self.volumes: list[Volume] = []  # attached: carried along

    async def _execute(self) -> Outcome:
        try:
            row, action_id, source = await self.steps.begin(self.instance, "migrate")
        except Conflict as exc:
            return guard_outcome(self.instance, str(exc))
        if source is None:
            return await self.steps.abort(row, action_id, None, "the server is on no host")
        self.row, self.action_id, self.source = row, action_id, source
        self.was_running = row.vm_state == VmState.ACTIVE
        self.volumes = await volume_moves.attached_volumes(self.steps, row.uuid)
        busy = volume_moves.unsettled(self.volumes) or await volume_moves.snapshotted(
            self.steps, self.volumes
        )
        if busy is not None:
            return await self.steps.abort(row, action_id, source.name, f"migrate: {busy}")
        async with self.db.session() as db:
            self.migration = await migration_records.begin(db, row, source, "migration")
        await self.open_journal(
            row, action_id, step="schedule", source_host_id=source.id,
            migration_uuid=self.migration.uuid,
            inputs={"was_running": self.was_running, "timeout": self.timeout},
            claims={"source": self.migration.uuid, "dest": row.uuid},
        )  # fmt: skip
        try:
            dest = await self._schedule()
        except NoValidHost as exc:
            await self.steps.give_back(row, self.migration, MigrationStatus.ERROR)
            failed = await self.steps.abort(row, action_id, source.name, f"migrate: {exc}")
            return dataclasses.replace(failed, failed_at="schedule")
        try:
            if self.was_running:
                await self.steps.stop_source(row, source, action_id, self.timeout)
            disk = await self._copy_disk(dest)
            paths = await volume_moves.carry(self.steps, action_id, row, self.volumes, source, dest)
            result = await self.steps.spawn(
                row, dest, action_id, {"disk_from": disk, "start": self.was_running}
            )
        except TaskTaken:
            raise  # recovery has it now: this process must not undo anything
        except HerdError as exc:
            return await self.rollback(dest, f"migrate to {dest.name} failed: {exc}")
        power = POWER_OF.get(str(result.get("state")), PowerState.NOSTATE)
        return await self._switch(dest, power, paths=paths)

    async def rollback(self, dest: Host | None, error: str) -> Outcome:
        """Nothing of it stays on the destination; it starts again on the source (if it
        ran), with the claim it held there all along."""
        if dest is not None:
            try:  # a half-copied disk or a half-made domain (the agent's delete takes both)
                await self.agent.delete(target_of(dest), self.row.uuid, timeout=FOLLOW_MARGIN)
            except HerdError as exc:
                error = f"{error}; and {dest.name} kept what it had of it: {exc}"
            else:
                kept = await volume_moves.drop_copies(self.steps, self.volumes, dest)
                if kept:
                    error = f"{error}; and volume copies were kept: {'; '.join(kept)}"
        await self.steps.put_back(self.row, self.source, self.was_running)
        await self.steps.give_back(self.row, self.migration, MigrationStatus.ERROR)
        return await self.steps.abort(self.row, self.action_id, self.source.name, error)

    async def _schedule(self) -> Host:
        spec = await self.steps.spec(self.row)
        spec = dataclasses.replace(
            spec,
            requested_host=self.host_name,
            ignore_hosts=frozenset({self.source.name}),
            # Room for the volumes too: the switch hands that part to their own claims.
            disk_gb=spec.disk_gb + volume_moves.carried_gb(self.volumes),
        )
        self.progress.update(self.row, "scheduling", host=self.source.name)
        plan = await self.conductor.scheduler.place([spec])
        async with self.db.session() as db:
            dest = await db.get(Host, plan.placements[0].host_id)
            assert dest is not None
            await record_event(db, self.action_id, "schedule", True, dest.name)
        assert self.journal is not None
        await self.journal.destination(dest.id)
        return dest

    async def _copy_disk(self, dest: Host) -> str:
        src, dst = target_of(self.source), target_of(dest)
        self.progress.update(self.row, "copying disk", host=dest.name)
        disk = f"{src.agent_dir}/instances/{self.row.uuid}/disk"
        remote, _ = await self.steps.stepped(
            self.action_id, "copy_disk", dest.name,
            self.steps.carry_disk(self.row, src, dst, disk),
            lambda carried: f"{carried[1]} bytes from {self.source.name} to {dest.name}",
        )  # fmt: skip
        return remote

    async def _switch(
        self,
        dest: Host,
        power_state: str,
        *,
        done: bool = False,
        paths: dict[str, str] | None = None,
    ) -> Outcome:
        """The server is the destination's now: its host, its state, its volumes, the
        source claim released; then the source copy goes (best effort: reconcile reaps
        it else). ``done``: recovery found the switch already committed. ``paths``:
        where the destination keeps the volumes (asked again if not given)."""
        row, source, action_id = self.row, self.source, self.action_id
        if not done:
            if paths is None:
                paths = await volume_moves.dest_paths(self.steps, self.volumes, dest)
            assert self.journal is not None
            await self.journal.step("switch")
            try:
                async with self.db.session() as db:
                    fresh = await lifecycle.held(db, row.uuid, action_id, f"migrate to {dest.name}")
                    await migration_records.finish(
                        db, self.migration.uuid, MigrationStatus.COMPLETED, dest_id=dest.id
                    )
                    fresh.host_id = dest.id
                    await volume_moves.switch(db, fresh, self.volumes, dest, paths)
                    lifecycle.end_task(fresh)
                    fresh.power_state = power_state
                    db.add(fresh)
                    await finish_action(db, action_id)
            except lifecycle.TaskTaken as exc:  # the source copy stays: never lose it
                return await self.steps.abort(
                    row, action_id, source.name,
                    f"{exc}; its copy on {source.name} is kept, the one started on "
                    f"{dest.name} is left for `herd reconcile`",
                )  # fmt: skip
        else:
            fresh = await self.steps.reread(row.uuid)
        await self.steps.remove_source_copy(fresh, source, action_id)
        kept = await volume_moves.drop_copies(self.steps, self.volumes, source)
        detail = f"moved from {source.name}" + (
            f"; old volume files kept: {'; '.join(kept)}" if kept else ""
        )
        self.progress.update(fresh, fresh.vm_state, host=dest.name, detail=detail)
        return outcome_of(fresh, dest.name)

    # -- recovery ------------------------------------------------------------------

    @classmethod
    async def resume(cls, conductor: Conductor, handle: TaskHandle, found: Resumed) -> Outcome:
        """Finish or undo a cold migration whose runner died at ``handle``'s step."""
        task = cls(conductor, found.instance, timeout=int(handle.inputs.get("timeout", 60)))
        await task.adopt(handle, found.died)
        assert found.source is not None and found.migration is not None
        task.row, task.source, task.migration = found.instance, found.source, found.migration
        task.action_id = found.action_id
        task.was_running = bool(handle.inputs.get("was_running"))
        task.volumes = await volume_moves.attached_volumes(task.steps, found.instance.uuid)
        dest, step = found.dest, handle.current_step
        if found.migration.status == MigrationStatus.COMPLETED and dest is not None:
            await task.note(f"the switch to {dest.name} had committed: finishing forward")
            return await task._switch(dest, found.instance.power_state, done=True)
        if step in ("spawn", "switch", "cleanup_source") and dest is not None:
            domain = await task.steps.domain_on(dest, found.instance.uuid)
            if domain is not None:
                await task.note(f"{dest.name} has the server: finishing forward")
                return await task._switch(dest, POWER_OF.get(domain, PowerState.NOSTATE))
        await task.note(f"rolling back to {found.source.name}")
        return await task.rollback(dest, f"migrate stopped at {step}: rolled back by recovery")
