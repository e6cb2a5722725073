"""Delete: the server's domain and files go from its host, its claim and ports from the DB.

One durable ``delete`` job on the host, collected by ``apply_job``; a server never placed
is deleted in the DB alone, and one whose resize waits has its kept disk dropped first.
Deletes are refused while a move runs (lifecycle.begin_delete).
"""

from __future__ import annotations

import logging
import uuid

from sqlmodel import col, select

from orchestrator.conductor import boot_volumes, lifecycle, migration_records
from orchestrator.conductor.actions import finish_action, record_event, record_fault, start_action
from orchestrator.conductor.hosts import target_of
from orchestrator.conductor.manager import DELETE_TIMEOUT, Conductor, release_volumes
from orchestrator.conductor.outcomes import Outcome, guard_outcome, outcome_of
from orchestrator.conductor.shelve_images import drop_shelve_image
from orchestrator.conductor.tasks.base import Task
from orchestrator.db.models import (
    OPEN_MIGRATIONS,
    Host,
    Instance,
    JobState,
    Migration,
    MigrationStatus,
    TaskState,
    VmState,
    utcnow,
)
from orchestrator.errors import Conflict, HerdError
from orchestrator.networking import release_ports
from orchestrator.scheduler.claims import release

log = logging.getLogger(__name__)


class DeleteTask(Task):
    kind = "delete"

    def __init__(self, conductor: Conductor, instance: Instance, *, wait: bool = True) -> None:
        super().__init__(conductor)
        self.instance, self.wait = instance, wait
        self.recovered = False

    async def _execute(self) -> Outcome:
        instance, wait = self.instance, self.wait
        request_id = f"req-{uuid.uuid4()}"
        try:
            async with self.db.session() as db:
                action = await start_action(db, instance.uuid, "delete", request_id)
                assert action.id is not None
                row = await lifecycle.begin_delete(db, instance, action.id)
                if row is None:  # another delete finished first
                    await finish_action(db, action.id, "already deleted")
                    return outcome_of(await self.conductor.instance_row(db, instance.uuid), None)
                host = await db.get(Host, row.host_id) if row.host_id else None
                if host is None:
                    # Never placed, or shelved: nothing exists on any host.
                    shelved = row.vm_state == VmState.SHELVED_OFFLOADED
                    row.vm_state = VmState.DELETED
                    lifecycle.end_task(row)
                    row.deleted_at = row.updated_at = utcnow()
                    await release(db, row.uuid)
                    await release_ports(db, row.uuid)
                    await release_volumes(db, row.uuid)
                    if shelved:
                        await drop_shelve_image(db, row, row.image_id)
                    await finish_action(db, action.id)
                    db.add(row)
                    self.progress.update(row, "deleted")
                    return outcome_of(row, None)
        except Conflict as exc:  # a move runs: refused, and nothing recorded
            if not self.recovered and await self.steps.recover(instance.uuid):
                self.recovered = True  # its herd had died: recovered, so try once more
                return await self._execute()
            return guard_outcome(instance, str(exc))
        if row.vm_state == VmState.RESIZED:
            await self._end_resize(row)
        self.progress.update(instance, "deleting", host=host.name)
        target = target_of(host)
        try:
            job_id = await self.conductor.record_job(
                instance, host, "delete", TaskState.DELETING, action_id=action.id
            )
            await self.agent.delete(target, instance.uuid, job_id=job_id)
        except HerdError as exc:
            return await self._fail_delete(instance, host.name, action.id, str(exc))
        await self.conductor.mark_job(job_id, JobState.RUNNING)
        if not wait:
            return Outcome(
                instance.uuid, instance.name, host.name, instance.vm_state, TaskState.DELETING
            )
        outcome = await self.conductor.follow(job_id, target, DELETE_TIMEOUT)
        if outcome.error is None and outcome.vm_state == VmState.DELETED:
            kept = await boot_volumes.delete_on_termination(self.conductor, row)
            if kept is not None:
                log.warning("%s: %s", row.name, kept)
        return outcome

    async def _end_resize(self, instance: Instance) -> None:
        """A server deleted while its resize waits: the disk kept on the source and the
        claim held there go too (Nova confirms the resize first)."""
        async with self.db.session() as db:
            migration = (
                await db.exec(
                    select(Migration).where(
                        Migration.instance_uuid == instance.uuid,
                        col(Migration.status).in_(OPEN_MIGRATIONS),
                    )
                )
            ).first()
            source = await db.get(Host, migration.source_host_id) if migration else None
        if migration is None:
            return
        if source is not None and source.id != instance.host_id:
            try:
                await self.agent.resize_drop(target_of(source), instance.uuid, timeout=120)
            except HerdError as exc:
                log.warning(
                    "%s: the resize's kept disk on %s stays: %s", instance.name, source.name, exc
                )
        async with self.db.session() as db:
            await migration_records.finish(db, migration.uuid, MigrationStatus.DELETED)

    async def _fail_delete(
        self, instance: Instance, host: str, action_id: int | None, error: str
    ) -> Outcome:
        async with self.db.session() as db:
            row = await lifecycle.hold(db, instance.uuid, action_id)
            if row is not None:  # only the task this delete took, never another's
                lifecycle.end_task(row)
                db.add(row)
            else:
                row = await self.conductor.instance_row(db, instance.uuid)
            await record_event(db, action_id, "delete", False, host, error)
            await finish_action(db, action_id, "error")
            record_fault(db, row.uuid, f"delete failed: {error}", host=host)
        self.progress.update(row, "error", host=host, detail=error)
        return outcome_of(row, host, error)
