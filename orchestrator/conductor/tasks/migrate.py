"""Cold migration through the orchestrator.

Stop on the source, carry the disk over SFTP (source → here → destination: the hosts
need not reach each other), start on the destination from the same disk with a fresh
seed, then remove the source copy. Both claims are held while it moves — the source's
by the migration's UUID, as a resize or live migration holds it — so no room the
server may return to is given away; a failure before the destination runs gives the
source claim back to the server (it was never free) and puts the server back.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from agent import specs as agent_specs
from orchestrator.conductor import lifecycle, migration_records
from orchestrator.conductor.actions import finish_action, record_event
from orchestrator.conductor.hosts import target_of
from orchestrator.conductor.manager import Conductor
from orchestrator.conductor.outcomes import Outcome, guard_outcome, outcome_of
from orchestrator.conductor.steps import POWER_TIMEOUT, check_timeout
from orchestrator.conductor.tasks.base import Task
from orchestrator.db.models import (
    POWER_OF,
    Host,
    Instance,
    MigrationStatus,
    PowerState,
    VmState,
)
from orchestrator.errors import Conflict, HerdError, NoValidHost


class MigrateTask(Task):
    kind = "migrate"

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

    async def execute(self) -> Outcome:
        try:
            row, action_id, source = await self.steps.begin(self.instance, "migrate")
        except Conflict as exc:
            return guard_outcome(self.instance, str(exc))
        if source is None:
            return await self.steps.abort(row, action_id, None, "the server is on no host")
        self.row, self.action_id, self.source = row, action_id, source
        self.was_running = row.vm_state == VmState.ACTIVE
        async with self.db.session() as db:
            self.migration = await migration_records.begin(db, row, source, "migration")
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
            result = await self.steps.spawn(
                row, dest, action_id, {"disk_from": disk, "start": self.was_running}
            )
        except HerdError as exc:
            return await self.rollback(dest, exc)
        return await self._switch(dest, result)

    async def rollback(self, dest: Host, exc: HerdError) -> Outcome:
        """Nothing runs on the destination (spawn removes a half-made copy): the server
        starts again on the source, with the claim it held there all along."""
        await self.steps.put_back(self.row, self.source, self.was_running)
        await self.steps.give_back(self.row, self.migration, MigrationStatus.ERROR)
        return await self.steps.abort(
            self.row, self.action_id, self.source.name, f"migrate to {dest.name} failed: {exc}"
        )

    async def _schedule(self) -> Host:
        spec = dataclasses.replace(
            await self.steps.spec(self.row),
            requested_host=self.host_name,
            ignore_hosts=frozenset({self.source.name}),
        )
        self.progress.update(self.row, "scheduling", host=self.source.name)
        plan = await self.conductor.scheduler.place([spec])
        async with self.db.session() as db:
            dest = await db.get(Host, plan.placements[0].host_id)
            assert dest is not None
            await record_event(db, self.action_id, "schedule", True, dest.name)
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

    async def _switch(self, dest: Host, result: dict[str, Any]) -> Outcome:
        """The server is the destination's now: its host, its state, the source claim
        released; then the source copy goes (best effort: reconcile reaps it else)."""
        row, source, action_id = self.row, self.source, self.action_id
        try:
            async with self.db.session() as db:
                fresh = await lifecycle.held(db, row.uuid, action_id, f"migrate to {dest.name}")
                await migration_records.finish(
                    db, self.migration.uuid, MigrationStatus.COMPLETED, dest_id=dest.id
                )
                fresh.host_id = dest.id
                lifecycle.end_task(fresh)
                fresh.power_state = POWER_OF.get(str(result.get("state")), PowerState.NOSTATE)
                db.add(fresh)
                await finish_action(db, action_id)
        except lifecycle.TaskTaken as exc:  # the source copy stays: never lose the only one
            return await self.steps.abort(
                row, action_id, source.name,
                f"{exc}; its copy on {source.name} is kept, the one started on {dest.name} "
                "is left for `herd reconcile`",
            )  # fmt: skip
        await self.steps.remove_source_copy(fresh, source, action_id)
        self.progress.update(
            fresh, fresh.vm_state, host=dest.name, detail=f"moved from {source.name}"
        )
        return outcome_of(fresh, dest.name)
