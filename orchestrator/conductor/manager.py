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

from sqlmodel import col, select

from orchestrator import cloudinit, lifecycle, migration_records
from orchestrator.actions import (
    finish_action,
    finish_event,
    record_event,
    record_fault,
    start_action,
    start_event,
)
from orchestrator.conductor.hosts import (
    FACTS_MAX_AGE,
    HostContact,
    age_seconds,
    contact_hosts,
    target_of,
)
from orchestrator.db.engine import Database
from orchestrator.db.models import (
    OPEN_MIGRATIONS,
    AgentJob,
    Host,
    Instance,
    InstanceAction,
    InstanceActionEvent,
    JobState,
    Migration,
    MigrationStatus,
    PowerState,
    TaskState,
    VmState,
    utcnow,
)
from orchestrator.errors import Conflict, HerdError, HostUnreachable, NoValidHost
from orchestrator.guest_config import load_guest_config
from orchestrator.image_delivery import Delivery, ImageDelivery
from orchestrator.networking import release_ports
from orchestrator.outcomes import Outcome, guard_outcome, outcome_of
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

    async def _hosts(self, ids: Iterable[int] | None = None) -> dict[int, Host]:
        async with self.db.read() as db:
            query = select(Host)
            if ids is not None:
                query = query.where(col(Host.id).in_(list(ids)))
            return {h.id: h for h in (await db.exec(query)).all() if h.id is not None}

    # -- build ---------------------------------------------------------------

    async def meet_hosts(self) -> None:
        """Refresh the facts of enabled hosts not heard from lately, so the scheduler
        places on what hosts have now (and sees which are down) without a cron job."""
        hosts = await self._hosts()
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
        hosts = await self._hosts()
        placed: list[tuple[Instance, RequestSpec, Placement]] = []
        skipped: list[Outcome] = []
        async with self.db.session() as db:
            for instance, spec in zip(instances, specs, strict=True):
                action = await self._action(db, instance.uuid, "create")
                row = await lifecycle.hold(db, instance.uuid, action)
                if row is None:  # deleted while it was scheduled: the claim goes back
                    await release(db, instance.uuid)
                    skipped.append(outcome_of(await self._instance(db, instance.uuid), None))
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
        built = await asyncio.gather(
            *(
                self._build_with_retries(instance, spec, placement, hosts, wait=wait)
                for instance, spec, placement in placed
            )
        )
        by_uuid = {o.uuid: o for o in [*built, *skipped]}
        return [by_uuid[i.uuid] for i in instances]

    async def _build_with_retries(
        self,
        instance: Instance,
        spec: RequestSpec,
        placement: Placement,
        hosts: dict[int, Host],
        *,
        wait: bool,
    ) -> Outcome:
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
            fresh = await self.specs_of([instance])
            chosen, refused = await self.scheduler.claim_alternate(fresh[0], alternates)
            if chosen is None:
                detail = "; ".join(refused) or "none left"
                return await self.fail(
                    instance,
                    f"{'; '.join(failures)}; no alternate host could take it ({detail})",
                    event="schedule",
                    host=None,
                )
            alternates = alternates[[a[0] for a in alternates].index(chosen.host_id) + 1 :]
            hosts = await self._hosts()
            host = hosts[chosen.host_id]
            async with self.db.session() as db:
                action = await self._action(db, instance.uuid, "create")
                row = await lifecycle.hold(db, instance.uuid, action)
                if row is None:  # deleted while it was rescheduled
                    await release(db, instance.uuid)
                    return outcome_of(await self._instance(db, instance.uuid), None)
                row.host_id, row.task_state = chosen.host_id, TaskState.BLOCK_DEVICE_MAPPING
                db.add(row)
                await record_event(db, action, "schedule", True, host.name)

    async def _give_up_host(
        self, db: Any, instance: Instance, host_name: str, error: str
    ) -> Outcome:
        """A build failed where it may be retried: record it, free the host, go back to
        scheduling (in the caller's transaction, which holds the task)."""
        row = await self._instance(db, instance.uuid)
        record_fault(db, row.uuid, f"{error} (rescheduling)", host=host_name)
        await release(db, row.uuid)
        row.host_id, row.task_state = None, TaskState.SCHEDULING
        row.updated_at = utcnow()
        db.add(row)
        return replace(outcome_of(row, host_name, error), failed_at="retry")

    async def _build_one(
        self, instance: Instance, host: Host, *, wait: bool, can_retry: bool = False
    ) -> Outcome:
        target = target_of(host)
        self.progress.update(instance, "preparing image", host=host.name)
        try:
            async with self.db.read() as db:
                config = await load_guest_config(db, await self._instance(db, instance.uuid))
            deliveries = await asyncio.gather(
                *(self.images.ensure(target, image) for image in config.images)
            )
            await self._record_deliveries(instance, host.name, deliveries)
            seed = await asyncio.to_thread(cloudinit.seed_iso, config.documents)
            args = config.build_args(instance, host.domain_type or "qemu", seed)
            job_id = await self.record_job(instance, host, "build", TaskState.SPAWNING)
            self.progress.update(instance, "spawning", host=host.name)
            await self.agent.build(target, args, job_id=job_id)
        except lifecycle.TaskTaken as exc:  # deleted meanwhile: stop, cast nothing
            async with self.db.session() as db:
                return outcome_of(await self._instance(db, instance.uuid), host.name, str(exc))
        except HerdError as exc:
            if can_retry and wait:
                return await self._retry_before_cast(instance, host, str(exc))
            await self._count_build(host.id, ok=False)
            return await self.fail(instance, str(exc), event="build", host=host.name)
        await self.mark_job(job_id, JobState.RUNNING)
        if not wait:
            self.progress.update(instance, "building", host=host.name, detail="not waiting")
            return Outcome(
                instance.uuid, instance.name, host.name, VmState.BUILDING, TaskState.SPAWNING
            )
        return await self.follow(job_id, target, retry=can_retry)

    async def _retry_before_cast(self, instance: Instance, host: Host, error: str) -> Outcome:
        """The host failed before the job started (unreachable, image refused)."""
        await self._count_build(host.id, ok=False)
        message = f"build failed on {host.name}: {error}"
        async with self.db.session() as db:
            action = await self._action(db, instance.uuid, "create")
            row = await lifecycle.hold(db, instance.uuid, action)
            if row is None:  # deleted meanwhile: nothing to retry
                return outcome_of(await self._instance(db, instance.uuid), host.name, message)
            open_event = await self._open_event(db, action, "build")
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
            return await self._give_up_host(db, instance, host.name, message)

    async def _count_build(self, host_id: int | None, *, ok: bool) -> None:
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
                instance = await self._instance(db, job.instance_uuid) if job else None
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
            instance = await self._instance(db, job.instance_uuid or "")
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
            event = await self._open_event(db, job.action_id, job.op)
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
                gave_up = await self._give_up_host(db, held, host_name or "?", message)
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
                if instance.vm_state in (VmState.ERROR, VmState.DELETED):
                    await release(db, instance.uuid)
                if instance.vm_state == VmState.DELETED:
                    await release_ports(db, instance.uuid)
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
        return list(await asyncio.gather(*(self._delete_one(i, wait=wait) for i in instances)))

    async def _delete_one(self, instance: Instance, *, wait: bool) -> Outcome:
        request_id = f"req-{uuid.uuid4()}"
        try:
            async with self.db.session() as db:
                action = await start_action(db, instance.uuid, "delete", request_id)
                assert action.id is not None
                row = await lifecycle.begin_delete(db, instance, action.id)
                if row is None:  # another delete finished first
                    await finish_action(db, action.id, "already deleted")
                    return outcome_of(await self._instance(db, instance.uuid), None)
                host = await db.get(Host, row.host_id) if row.host_id else None
                if host is None:
                    # Never placed: nothing exists on any host.
                    row.vm_state = VmState.DELETED
                    lifecycle.end_task(row)
                    row.deleted_at = row.updated_at = utcnow()
                    await release(db, row.uuid)
                    await release_ports(db, row.uuid)
                    await finish_action(db, action.id)
                    db.add(row)
                    self.progress.update(row, "deleted")
                    return outcome_of(row, None)
        except Conflict as exc:  # a move runs: refused, and nothing recorded
            return guard_outcome(instance, str(exc))
        if row.vm_state == VmState.RESIZED:
            await self._end_resize(row)
        self.progress.update(instance, "deleting", host=host.name)
        target = target_of(host)
        try:
            job_id = await self.record_job(
                instance, host, "delete", TaskState.DELETING, action_id=action.id
            )
            await self.agent.delete(target, instance.uuid, job_id=job_id)
        except HerdError as exc:
            return await self._fail_delete(instance, host.name, action.id, str(exc))
        await self.mark_job(job_id, JobState.RUNNING)
        if not wait:
            return Outcome(
                instance.uuid, instance.name, host.name, instance.vm_state, TaskState.DELETING
            )
        return await self.follow(job_id, target, DELETE_TIMEOUT)

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
                row = await self._instance(db, instance.uuid)
            await record_event(db, action_id, "delete", False, host, error)
            await finish_action(db, action_id, "error")
            record_fault(db, row.uuid, f"delete failed: {error}", host=host)
        self.progress.update(row, "error", host=host, detail=error)
        return outcome_of(row, host, error)

    # -- collect -------------------------------------------------------------

    async def collect(
        self, jobs: Sequence[AgentJob], timeout: float | None = None
    ) -> list[Outcome]:
        """Follow jobs that an earlier (maybe killed) herd process cast."""
        hosts = await self._hosts({j.host_id for j in jobs})
        return list(
            await asyncio.gather(
                *(self.follow(j.id, target_of(hosts[j.host_id]), timeout) for j in jobs)
            )
        )

    # -- helpers -------------------------------------------------------------

    async def _record_deliveries(
        self, instance: Instance, host: str, deliveries: Sequence[Delivery]
    ) -> None:
        """An ``image`` event on the create action saying what had to be transferred."""
        async with self.db.session() as db:
            action = await self._action(db, instance.uuid, "create")
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
                action_id = await self._action(db, instance.uuid, "create" if op == "build" else op)
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
            action = await self._action(db, instance.uuid, "create")
            open_event = await self._open_event(db, action, event)
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
                return outcome_of(await self._instance(db, instance.uuid), host, error)
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
    async def _instance(db: Any, instance_uuid: str) -> Instance:
        row = (await db.exec(select(Instance).where(Instance.uuid == instance_uuid))).first()
        if row is None:
            raise HerdError(f"instance {instance_uuid} vanished from the database")
        return row

    @staticmethod
    async def _action(db: Any, instance_uuid: str, action: str) -> int | None:
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
    async def _open_event(db: Any, action_id: int | None, event: str) -> int | None:
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
