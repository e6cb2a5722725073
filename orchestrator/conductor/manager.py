"""Workflows: schedule, claim, cast, follow, record — concurrently for every instance.

The conductor is the only part that both talks to hosts (through the agent pool) and
writes state; it never holds a DB transaction open across a network round trip. A
host that fails fails its own instances: every per-instance workflow catches its own
errors and records them as a fault on that instance.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any, Protocol

from sqlalchemy import update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from orchestrator.conductor import lifecycle
from orchestrator.conductor.actions import (
    finish_action,
    finish_event,
    record_event,
    record_fault,
    start_event,
)
from orchestrator.conductor.hosts import (
    FACTS_MAX_AGE,
    HostContact,
    age_seconds,
    contact_hosts,
    target_of,
)
from orchestrator.conductor.outcomes import Outcome, outcome_of
from orchestrator.conductor.shelve_images import drop_shelve_image
from orchestrator.db.engine import Database
from orchestrator.db.models import (
    AgentJob,
    Host,
    Instance,
    InstanceAction,
    InstanceActionEvent,
    JobState,
    PowerState,
    TaskState,
    VmState,
    Volume,
    VolumeStatus,
    utcnow,
)
from orchestrator.errors import HerdError, HostUnreachable, NoValidHost
from orchestrator.image_delivery import Delivery, ImageDelivery
from orchestrator.networking import release_ports
from orchestrator.rpc.agent_api import AgentAPI
from orchestrator.rpc.pool import AgentPool
from orchestrator.rpc.ssh import HostTarget
from orchestrator.scheduler.claims import release
from orchestrator.scheduler.config import SchedulerConfig
from orchestrator.scheduler.loader import request_specs
from orchestrator.scheduler.request import RequestSpec
from orchestrator.scheduler.scheduler import FilterScheduler, Placement

log = logging.getLogger(__name__)

BUILD_TIMEOUT = 900.0
DELETE_TIMEOUT = 300.0


class Progress(Protocol):
    def update(
        self, instance: Instance, status: str, *, host: str | None = None, detail: str = ""
    ) -> None: ...


class NullProgress:
    def update(
        self, instance: Instance, status: str, *, host: str | None = None, detail: str = ""
    ) -> None:
        return None


class Conductor:
    def __init__(
        self,
        db: Database,
        pool: AgentPool,
        progress: Progress | None = None,
        build_timeout: float = BUILD_TIMEOUT,
        scheduler_config: SchedulerConfig | None = None,
    ) -> None:
        self.db = db
        self.pool = pool
        self.agent = AgentAPI(pool)
        self.progress = progress or NullProgress()
        self.build_timeout = build_timeout
        self.scheduler = FilterScheduler(db, scheduler_config)
        self.images = ImageDelivery(db, pool)

    # -- hosts ---------------------------------------------------------------

    async def contact_hosts(self, hosts: Sequence[Host]) -> list[HostContact]:
        return await contact_hosts(self.db, self.pool, hosts)

    async def hosts_by_id(self, ids: Iterable[int] | None = None) -> dict[int, Host]:
        async with self.db.read() as db:
            query = select(Host)
            if ids is not None:
                query = query.where(col(Host.id).in_(list(ids)))
            return {h.id: h for h in (await db.exec(query)).all() if h.id is not None}

    # -- build ---------------------------------------------------------------

    async def meet_hosts(self) -> None:
        """Refresh the facts of enabled hosts not heard from lately, so the scheduler
        places on what hosts have now (and sees which are down) without a cron job."""
        hosts = await self.hosts_by_id()
        stale = [
            h
            for h in hosts.values()
            if h.enabled and (h.last_seen_at is None or age_seconds(h.last_seen_at) > FACTS_MAX_AGE)
        ]
        if stale:
            await self.contact_hosts(stale)

    async def specs_of(self, instances: Sequence[Instance]) -> list[RequestSpec]:
        async with self.db.read() as db:
            return await request_specs(db, instances)

    async def build(
        self, instances: Sequence[Instance], *, wait: bool = True, min_count: int | None = None
    ) -> list[Outcome]:
        await self.meet_hosts()
        for instance in instances:
            self.progress.update(instance, "scheduling")
        specs = await self.specs_of(instances)
        try:
            plan = await self.scheduler.place(specs, min_count=min_count)
        except NoValidHost as exc:
            return [
                replace(
                    await self.fail(i, str(exc), event="schedule", host=None), failed_at="schedule"
                )
                for i in instances
            ]
        hosts = await self.hosts_by_id()
        placed: list[tuple[Instance, RequestSpec, Placement]] = []
        skipped: list[Outcome] = []
        async with self.db.session() as db:
            for instance, spec in zip(instances, specs, strict=True):
                action = await self.action_of(db, instance.uuid, "create")
                row = await lifecycle.hold(db, instance.uuid, action)
                if row is None:  # deleted while it was scheduled: the claim goes back
                    await release(db, instance.uuid)
                    skipped.append(outcome_of(await self.instance_row(db, instance.uuid), None))
                    continue
                placement = plan.host_of(instance.uuid)
                if placement is None:
                    # --min-count was met without it: like Nova, it is not booted at all.
                    why = plan.unplaced.get(instance.uuid, "no valid host")
                    await record_event(db, action, "schedule", False, None, why)
                    await finish_action(db, action, "not booted")
                    row.vm_state = VmState.DELETED
                    lifecycle.end_task(row)
                    row.deleted_at = row.updated_at = utcnow()
                    await release_ports(db, row.uuid)
                    db.add(row)
                    self.progress.update(row, "not booted", detail=why)
                    skipped.append(outcome_of(row, None))
                    continue
                row.host_id = placement.host_id
                row.task_state = TaskState.BLOCK_DEVICE_MAPPING
                row.updated_at = utcnow()
                db.add(row)
                await record_event(db, action, "schedule", True, placement.host_name)
                placed.append((instance, spec, placement))
        from orchestrator.conductor.tasks.build import BuildTask  # tasks import the manager

        built = await asyncio.gather(
            *(
                BuildTask(self, instance, placement, hosts, wait=wait).execute()
                for instance, _spec, placement in placed
            )
        )
        by_uuid = {o.uuid: o for o in [*built, *skipped]}
        return [by_uuid[i.uuid] for i in instances]

    async def give_up_host(
        self, db: Any, instance: Instance, host_name: str, error: str
    ) -> Outcome:
        """A build failed where it may be retried: record it, free the host, go back to
        scheduling (in the caller's transaction, which holds the task)."""
        row = await self.instance_row(db, instance.uuid)
        record_fault(db, row.uuid, f"{error} (rescheduling)", host=host_name)
        await release(db, row.uuid)
        row.host_id, row.task_state = None, TaskState.SCHEDULING
        row.updated_at = utcnow()
        db.add(row)
        return replace(outcome_of(row, host_name, error), failed_at="retry")

    async def count_build(self, host_id: int | None, *, ok: bool) -> None:
        """Consecutive failures per host, for the build-failure weigher; success resets."""
        async with self.db.session() as db:
            row = await db.get(Host, host_id)
            if row is not None:
                row.failed_builds = 0 if ok else row.failed_builds + 1
                db.add(row)

    async def follow(
        self, job_id: str, target: HostTarget, timeout: float | None = None, *, retry: bool = False
    ) -> Outcome:
        """Follow a cast job to its end and record the result; when the host stops
        answering, the job stays recorded for a later `herd server wait` to collect."""
        try:
            record = await self.agent.job_wait(target, job_id, timeout or self.build_timeout)
        except HostUnreachable as exc:
            async with self.db.read() as db:
                job = await db.get(AgentJob, job_id)
                instance = await self.instance_row(db, job.instance_uuid) if job else None
            message = f"{exc}; the job is still recorded, `herd server wait` collects its result"
            if instance is not None:
                self.progress.update(instance, "unknown", host=target.name, detail=message)
                return outcome_of(instance, target.name, message)
            raise
        return await self.apply_job(job_id, record, retry=retry)

    async def apply_job(
        self, job_id: str, record: dict[str, Any], *, retry: bool = False
    ) -> Outcome:
        """Bring the DB in line with a finished job: the one place results land,
        whether the caster, `herd server wait` or reconcile collected them. With
        ``retry``, a failed build goes back to scheduling instead of ERROR."""
        state = record.get("state")
        error = (record.get("error") or {}).get("message")
        async with self.db.session() as db:
            job = await db.get(AgentJob, job_id)
            if job is None:
                raise HerdError(f"job {job_id} is not known to this database")
            instance = await self.instance_row(db, job.instance_uuid or "")
            host = await db.get(Host, job.host_id)
            host_name = host.name if host else None
            if job.collected_at is not None:
                return outcome_of(instance, host_name)
            job.state = state if state in set(JobState) else JobState.FAILED
            job.result = record.get("result") or {}
            job.error = error
            job.finished_at = utcnow()
            job.collected_at = utcnow()
            db.add(job)
            ok = state == JobState.SUCCEEDED
            if state == JobState.LOST:
                error = "the job's runner on the host died before it finished (host rebooted?)"
            event = await self.open_event(db, job.action_id, job.op)
            await finish_event(db, event, ok, None if ok else error)
            if job.op == "build" and host is not None:
                host.failed_builds = 0 if ok else host.failed_builds + 1
                db.add(host)
            gave_up: Outcome | None = None
            held = await lifecycle.hold(db, instance.uuid, job.action_id)
            if held is None:
                # Another action took the server's task while the job ran (a delete, say):
                # the result is the record of its own action, not the server's state.
                await finish_action(db, job.action_id, None if ok else "error")
            elif job.op == "build" and retry and not ok and held.vm_state == VmState.BUILDING:
                message = f"build failed on {host_name}: {error}"
                gave_up = await self.give_up_host(db, held, host_name or "?", message)
            else:
                instance = held
                if job.op == "build":
                    self._apply_build(instance, ok)
                elif job.op == "delete":
                    self._apply_delete(instance, ok)
                else:  # a lifecycle action: start, stop, reboot, rebuild, evacuate...
                    lifecycle.apply_result(instance, job.op, ok, job.result or {})
                if not ok:
                    message = f"{job.op} failed on {host_name}: {error}"
                    record_fault(db, instance.uuid, message, host=host_name)
                if instance.vm_state in (
                    VmState.ERROR, VmState.DELETED, VmState.SHELVED_OFFLOADED
                ):  # fmt: skip
                    await release(db, instance.uuid)
                if instance.vm_state == VmState.DELETED:
                    await release_ports(db, instance.uuid)
                    await release_volumes(db, instance.uuid)
                    db.add(instance)
                    await db.flush()
                    await drop_shelve_image(db, instance, instance.image_id)
                await finish_action(db, job.action_id, None if ok else "error")
                instance.updated_at = utcnow()
                db.add(instance)
        if host is not None:
            await self._forget(target_of(host), job_id)
        if gave_up is not None:
            return gave_up
        failure = None if ok else f"{job.op} failed on {host_name}: {error}"
        self.progress.update(
            instance, instance.vm_state if ok else "error", host=host_name, detail=failure or ""
        )
        return outcome_of(instance, host_name, failure)

    @staticmethod
    def _apply_build(instance: Instance, ok: bool) -> None:
        lifecycle.end_task(instance)
        if ok:
            instance.vm_state = VmState.ACTIVE
            instance.power_state = PowerState.RUNNING
            instance.launched_at = utcnow()
        else:
            instance.vm_state = VmState.ERROR

    @staticmethod
    def _apply_delete(instance: Instance, ok: bool) -> None:
        lifecycle.end_task(instance)
        if ok:
            instance.vm_state = VmState.DELETED
            instance.power_state = PowerState.NOSTATE
            instance.deleted_at = utcnow()

    async def _forget(self, target: HostTarget, job_id: str) -> None:
        try:
            await self.agent.job_forget(target, job_id, timeout=10)
        except HerdError as exc:
            log.info("host %s: could not forget job %s: %s", target.name, job_id, exc)

    # -- delete --------------------------------------------------------------

    async def delete(self, instances: Sequence[Instance], *, wait: bool = True) -> list[Outcome]:
        from orchestrator.conductor.tasks.delete import DeleteTask  # tasks import the manager

        tasks = [DeleteTask(self, i, wait=wait) for i in instances]
        return list(await asyncio.gather(*(t.execute() for t in tasks)))

    # -- collect -------------------------------------------------------------

    async def collect(
        self, jobs: Sequence[AgentJob], timeout: float | None = None
    ) -> list[Outcome]:
        """Follow jobs that an earlier (maybe killed) herd process cast."""
        hosts = await self.hosts_by_id({j.host_id for j in jobs})
        return list(
            await asyncio.gather(
                *(self.follow(j.id, target_of(hosts[j.host_id]), timeout) for j in jobs)
            )
        )

    # -- helpers -------------------------------------------------------------

    async def record_deliveries(
        self, instance: Instance, host: str, deliveries: Sequence[Delivery]
    ) -> None:
        """An ``image`` event on the create action saying what had to be transferred."""
        async with self.db.session() as db:
            action = await self.action_of(db, instance.uuid, "create")
            details = "; ".join(d.describe(host) for d in deliveries)
            await record_event(db, action, "image", True, host, details)

    async def record_job(
        self, instance: Instance, host: Host, op: str, task_state: str, action_id: int | None = None
    ) -> str:
        """Write the job row before casting, so a crash after the cast loses nothing;
        ``TaskTaken`` if the action no longer holds the server's task."""
        job_id = str(uuid.uuid4())
        async with self.db.session() as db:
            if action_id is None:
                action_id = await self.action_of(
                    db, instance.uuid, "create" if op == "build" else op
                )
            row = await lifecycle.held(db, instance.uuid, action_id, op)
            await start_event(db, action_id, op, host.name)
            row.task_state = task_state
            db.add(row)
            db.add(
                AgentJob(
                    id=job_id,
                    host_id=host.id,
                    instance_uuid=instance.uuid,
                    action_id=action_id,
                    op=op,
                    state=JobState.PENDING,
                    created_at=utcnow(),
                )
            )
        return job_id

    async def mark_job(self, job_id: str, state: JobState) -> None:
        async with self.db.session() as db:
            job = await db.get(AgentJob, job_id)
            if job is not None and job.collected_at is None:
                job.state = state
                db.add(job)

    async def fail(
        self,
        instance: Instance,
        error: str,
        *,
        event: str,
        host: str | None,
        abandoned: lifecycle.TaskSeen | None = None,
    ) -> Outcome:
        """The build failed: the instance goes to ERROR with a fault, and gives back its
        claim, if its create action still holds its task (reconcile passes the
        ``abandoned`` task it saw, to end whichever that was)."""
        async with self.db.session() as db:
            action = await self.action_of(db, instance.uuid, "create")
            open_event = await self.open_event(db, action, event)
            if open_event is not None:
                await finish_event(db, open_event, False, error)
            else:
                await record_event(db, action, event, False, host, error)
            await finish_action(db, action, "error")
            row = await (
                lifecycle.take_over(db, instance.uuid, abandoned)
                if abandoned is not None
                else lifecycle.hold(db, instance.uuid, action)
            )
            if row is None and abandoned is not None:  # alive after all: nothing recorded
                raise lifecycle.TaskTaken(f"server {instance.name}: its task moved on")
            if row is None:  # deleted meanwhile: the delete's outcome says the rest
                return outcome_of(await self.instance_row(db, instance.uuid), host, error)
            record_fault(db, row.uuid, error, host=host)
            await release(db, row.uuid)
            await db.exec(  # a job row that was never cast is over
                AgentJob.__table__.update()  # type: ignore[attr-defined]
                .where(AgentJob.instance_uuid == row.uuid, AgentJob.collected_at.is_(None))  # type: ignore[union-attr]
                .values(
                    state=JobState.FAILED, error=error, finished_at=utcnow(), collected_at=utcnow()
                )
            )
            row.vm_state = VmState.ERROR
            lifecycle.end_task(row)
            db.add(row)
        self.progress.update(row, "error", host=host, detail=error)
        return outcome_of(row, host, error)

    @staticmethod
    async def instance_row(db: Any, instance_uuid: str) -> Instance:
        row = (await db.exec(select(Instance).where(Instance.uuid == instance_uuid))).first()
        if row is None:
            raise HerdError(f"instance {instance_uuid} vanished from the database")
        return row

    @staticmethod
    async def action_of(db: Any, instance_uuid: str, action: str) -> int | None:
        row = (
            await db.exec(
                select(InstanceAction)
                .where(
                    InstanceAction.instance_uuid == instance_uuid, InstanceAction.action == action
                )
                .order_by(col(InstanceAction.id).desc())
            )
        ).first()
        return row.id if row else None

    @staticmethod
    async def open_event(db: Any, action_id: int | None, event: str) -> int | None:
        if action_id is None:
            return None
        row = (
            await db.exec(
                select(InstanceActionEvent)
                .where(
                    InstanceActionEvent.action_id == action_id,
                    InstanceActionEvent.event == event,
                    col(InstanceActionEvent.finish_time).is_(None),
                )
                .order_by(col(InstanceActionEvent.id).desc())
            )
        ).first()
        return row.id if row else None


async def release_volumes(db: AsyncSession, instance_uuid: str) -> None:
    """A deleted server's volumes are detached with it (its domain, and so its disks,
    are gone) and outlive it, available (Nova detaches a server's volumes on delete)."""
    await db.exec(
        update(Volume)  # type: ignore[call-overload]
        .where(col(Volume.instance_uuid) == instance_uuid)
        .values(status=VolumeStatus.AVAILABLE, instance_uuid=None, device=None, task_owner=None)
    )
