"""Build: one server onto the host the build manager placed it on, rescheduled onto the
next alternate that still passes the filters when that host fails (Nova's reschedule).

The manager (conductor/manager.py) schedules a whole request at once and claims; this
task is one server's part after that: prepare its images, cast the durable ``build``
job, follow it. A host that fails before the job starts gives its claim back and the
next alternate is claimed; a job that fails is collected by ``apply_job``.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from orchestrator import cloudinit
from orchestrator.conductor import boot_volumes, lifecycle
from orchestrator.conductor.actions import finish_event, record_event
from orchestrator.conductor.hosts import target_of
from orchestrator.conductor.manager import Conductor
from orchestrator.conductor.outcomes import Outcome, outcome_of
from orchestrator.conductor.tasks.base import Task
from orchestrator.db.models import AgentJob, Host, Instance, JobState, TaskState, VmState, utcnow
from orchestrator.errors import HerdError
from orchestrator.guest_config import load_guest_config
from orchestrator.scheduler.claims import release
from orchestrator.scheduler.scheduler import Placement


class BuildTask(Task):
    kind = "build"

    def __init__(
        self,
        conductor: Conductor,
        instance: Instance,
        placement: Placement,
        hosts: dict[int, Host],
        *,
        wait: bool = True,
    ) -> None:
        super().__init__(conductor)
        self.instance, self.placement, self.hosts, self.wait = instance, placement, hosts, wait

    async def _execute(self) -> Outcome:
        instance, placement, hosts, wait = self.instance, self.placement, self.hosts, self.wait
        """Build on the chosen host; when that fails, on the next alternate that still
        passes the filters (Nova's reschedule), until the attempts run out."""
        alternates = list(placement.alternates)
        failures: list[str] = []
        host = hosts[placement.host_id]
        while True:
            outcome = await self._build_one(instance, host, wait=wait, can_retry=bool(alternates))
            if outcome.failed_at != "retry":
                if outcome.error and failures:
                    outcome = replace(outcome, error="; ".join([*failures, outcome.error]))
                return outcome
            failures.append(outcome.error or f"build failed on {host.name}")
            self.progress.update(
                instance, "rescheduling", host=host.name, detail=outcome.error or ""
            )
            fresh = await self.conductor.specs_of([instance])
            chosen, refused = await self.conductor.scheduler.claim_alternate(fresh[0], alternates)
            if chosen is None:
                detail = "; ".join(refused) or "none left"
                return await self.conductor.fail(
                    instance,
                    f"{'; '.join(failures)}; no alternate host could take it ({detail})",
                    event="schedule",
                    host=None,
                )
            alternates = alternates[[a[0] for a in alternates].index(chosen.host_id) + 1 :]
            hosts = await self.conductor.hosts_by_id()
            host = hosts[chosen.host_id]
            async with self.db.session() as db:
                action = await self.conductor.action_of(db, instance.uuid, "create")
                row = await lifecycle.hold(db, instance.uuid, action)
                if row is None:  # deleted while it was rescheduled
                    await release(db, instance.uuid)
                    return outcome_of(await self.conductor.instance_row(db, instance.uuid), None)
                row.host_id, row.task_state = chosen.host_id, TaskState.BLOCK_DEVICE_MAPPING
                db.add(row)
                await record_event(db, action, "schedule", True, host.name)

    async def _build_one(
        self, instance: Instance, host: Host, *, wait: bool, can_retry: bool = False
    ) -> Outcome:
        target = target_of(host)
        self.progress.update(instance, "preparing image", host=host.name)
        try:
            async with self.db.read() as db:
                fresh = await self.conductor.instance_row(db, instance.uuid)
            if boot_volumes.boot_volume_of(fresh):
                self.progress.update(instance, "making its root volume", host=host.name)
                await boot_volumes.ensure_root_volume(self.conductor, fresh, host)
            async with self.db.read() as db:
                config = await load_guest_config(
                    db, await self.conductor.instance_row(db, instance.uuid)
                )
            deliveries = await asyncio.gather(
                *(self.conductor.images.ensure(target, image) for image in config.images)
            )
            await self.conductor.record_deliveries(instance, host.name, deliveries)
            seed = await asyncio.to_thread(cloudinit.seed_iso, config.documents)
            args = config.build_args(instance, host.domain_type or "qemu", seed, host.volume_dir)
            job_id = await self.conductor.record_job(instance, host, "build", TaskState.SPAWNING)
            self.progress.update(instance, "spawning", host=host.name)
            await self.agent.build(target, args, job_id=job_id)
        except lifecycle.TaskTaken as exc:  # deleted meanwhile: stop, cast nothing
            async with self.db.session() as db:
                return outcome_of(
                    await self.conductor.instance_row(db, instance.uuid), host.name, str(exc)
                )
        except HerdError as exc:
            await boot_volumes.drop_root_volume(self.conductor, instance)  # none: no-op
            if can_retry and wait:
                return await self._retry_before_cast(instance, host, str(exc))
            await self.conductor.count_build(host.id, ok=False)
            return await self.conductor.fail(instance, str(exc), event="build", host=host.name)
        await self.conductor.mark_job(job_id, JobState.RUNNING)
        if not wait:
            self.progress.update(instance, "building", host=host.name, detail="not waiting")
            return Outcome(
                instance.uuid, instance.name, host.name, VmState.BUILDING, TaskState.SPAWNING
            )
        return await self.conductor.follow(job_id, target, retry=can_retry)

    async def _retry_before_cast(self, instance: Instance, host: Host, error: str) -> Outcome:
        """The host failed before the job started (unreachable, image refused)."""
        await self.conductor.count_build(host.id, ok=False)
        message = f"build failed on {host.name}: {error}"
        async with self.db.session() as db:
            action = await self.conductor.action_of(db, instance.uuid, "create")
            row = await lifecycle.hold(db, instance.uuid, action)
            if row is None:  # deleted meanwhile: nothing to retry
                return outcome_of(
                    await self.conductor.instance_row(db, instance.uuid), host.name, message
                )
            open_event = await self.conductor.open_event(db, action, "build")
            if open_event is not None:
                await finish_event(db, open_event, False, error)
            else:
                await record_event(db, action, "build", False, host.name, error)
            await db.exec(  # a job row that was never cast is over
                AgentJob.__table__.update()  # type: ignore[attr-defined]
                .where(AgentJob.instance_uuid == instance.uuid, AgentJob.collected_at.is_(None))  # type: ignore[union-attr]
                .values(
                    state=JobState.FAILED, error=error, finished_at=utcnow(), collected_at=utcnow()
                )
            )
            return await self.conductor.give_up_host(db, instance, host.name, message)
