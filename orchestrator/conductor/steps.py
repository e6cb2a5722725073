"""The steps tasks share: take the server's task, record a step before its side effect,
cast a durable job, carry a disk, spawn from a disk already there, put things back.

Tasks compose a ``Steps`` instead of inheriting from one another (Nova's conductor tasks
share helpers the same way), so each task's ``execute()`` shows every step it takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from orchestrator import cloudinit
from orchestrator.conductor import boot_volumes, lifecycle, migration_records
from orchestrator.conductor.actions import (
    finish_action,
    finish_event,
    record_fault,
    start_action,
    start_event,
)
from orchestrator.conductor.hosts import target_of
from orchestrator.conductor.journal import TaskHandle
from orchestrator.conductor.manager import Conductor
from orchestrator.conductor.outcomes import Outcome, outcome_of
from orchestrator.db.models import (
    AgentJob,
    Host,
    Instance,
    InstanceAction,
    InstanceActionEvent,
    JobState,
    Migration,
    Volume,
    utcnow,
)
from orchestrator.errors import Conflict, HerdError, InvalidInput
from orchestrator.guest_config import load_guest_config
from orchestrator.rpc.agent_api import PowerArgs
from orchestrator.rpc.ssh import HostTarget
from orchestrator.scheduler.loader import request_specs
from orchestrator.scheduler.request import RequestSpec

POWER_TIMEOUT = 60  # seconds a guest gets to shut down before it is forced (Nova's default)


def check_timeout(timeout: int, limits: tuple[int, int]) -> int:
    """``--timeout`` within what the agent takes (agent.specs), checked before any task
    is taken or claim moved: the agent would refuse it only once the work had begun."""
    low, high = limits
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not low <= timeout <= high:
        raise InvalidInput(f"--timeout must be {low} to {high} seconds, not {timeout}")
    return timeout


FOLLOW_MARGIN = 180.0
T = TypeVar("T")


class Steps:
    """The shared steps, bound to one conductor (its DB, agent pool and progress)."""

    def __init__(self, conductor: Conductor) -> None:
        self.conductor = conductor
        self.db = conductor.db
        self.pool = conductor.pool
        self.agent = conductor.agent
        self.progress = conductor.progress
        # The task's journal row, once it has one: each step is written there first.
        self.journal: TaskHandle | None = None

    async def begin(self, instance: Instance, action: str) -> tuple[Instance, int, Host | None]:
        """Open the instance action and take the task for it (or raise Conflict, and
        record nothing). A task held by a move whose herd died is recovered first (by
        its step's rule), and then the action is tried again."""
        try:
            return await self._begin(instance, action)
        except Conflict:
            if not await self.recover(instance.uuid):
                raise
        return await self._begin(instance, action)

    async def recover(self, instance_uuid: str) -> bool:
        """Recover the server's orphaned tasks; whether there was one."""
        from orchestrator.conductor import recovery  # it imports the tasks, which import this

        return bool(await recovery.recover(self.conductor, [instance_uuid]))

    async def _begin(self, instance: Instance, action: str) -> tuple[Instance, int, Host | None]:
        if action in boot_volumes.REFUSED and boot_volumes.boot_volume_of(instance):
            raise Conflict(
                f"server {instance.name} boots from a volume: {action.replace('_', ' ')} is "
                "not supported for it yet (its disk is the volume, not a file of its own)"
            )
        if action in lifecycle.REFUSED_WITH_VOLUMES:
            await self._refuse_with_volumes(instance, action)
        async with self.db.session() as db:
            act = await start_action(db, instance.uuid, action, f"req-{uuid.uuid4()}")
            assert act.id is not None
            row = await lifecycle.begin(db, instance, action, act.id)
            host = await db.get(Host, row.host_id) if row.host_id else None
        return row, act.id, host

    async def _refuse_with_volumes(self, instance: Instance, action: str) -> None:
        async with self.db.read() as db:
            names = (
                await db.exec(select(Volume.name).where(Volume.instance_uuid == instance.uuid))
            ).all()
        if not names:
            return
        attached = f"server {instance.name} has volumes attached ({', '.join(sorted(names))})"
        if action == "evacuate":
            raise Conflict(
                f"{attached}: they live on its host's own storage, which a host that is down "
                "cannot give up, so an evacuation would boot it without them; bring the host "
                "back (and migrate), or delete the server and restore its data elsewhere"
            )
        raise Conflict(
            f"{attached}: {action.replace('_', ' ')} does not carry volumes yet; "
            "detach them first, or cold-migrate (`server migrate`) or resize, which carry them"
        )

    async def abort(
        self, instance: Instance, action_id: int, host: str | None, error: str
    ) -> Outcome:
        """The action failed before its job ran: nothing changed on the host. Its task
        ends, if it still holds it; one another action took meanwhile is left alone."""
        async with self.db.session() as db:
            row = await lifecycle.hold(db, instance.uuid, action_id)
            if row is not None:
                lifecycle.end_task(row)
                db.add(row)
                record_fault(db, row.uuid, error, host=host)
            else:
                row = (await db.exec(select(Instance).where(Instance.uuid == instance.uuid))).one()
            await finish_action(db, action_id, "error")
            await self.close_open_events(db, action_id, error)
            for job in (
                await db.exec(
                    select(AgentJob).where(
                        AgentJob.action_id == action_id, col(AgentJob.collected_at).is_(None)
                    )
                )
            ).all():  # recorded but never cast: over, so reconcile does not apply it again
                job.state, job.error = JobState.FAILED, error
                job.finished_at = job.collected_at = utcnow()
                db.add(job)
        self.progress.update(row, "error", host=host, detail=error)
        return outcome_of(row, host, error)

    async def spec(self, row: Instance) -> RequestSpec:
        """What the scheduler is asked for the server, with its group's members where
        they are now: a move keeps the group's (anti-)affinity as a boot does."""
        async with self.db.session() as db:
            (spec,) = await request_specs(db, [row])
        return spec

    @staticmethod
    async def close_open_events(db: AsyncSession, action_id: int, error: str) -> None:
        rows = (
            await db.exec(
                select(InstanceActionEvent).where(
                    InstanceActionEvent.action_id == action_id,
                    col(InstanceActionEvent.finish_time).is_(None),
                )
            )
        ).all()
        for event in rows:
            await finish_event(db, event.id, False, error)

    async def cast(
        self,
        instance: Instance,
        host: Host,
        op: str,
        start_job: Callable[[str], Awaitable[object]],  # under the job id recorded here
        action_id: int,
        *,
        wait: bool,
        timeout: float,
    ) -> Outcome:
        rule = lifecycle.RULES.get(op)
        task = rule.task_state if rule else instance.task_state or op
        target = target_of(host)
        try:
            job_id = await self.conductor.record_job(instance, host, op, task, action_id=action_id)
            await start_job(job_id)
        except HerdError as exc:
            return await self.abort(instance, action_id, host.name, f"{op} failed: {exc}")
        await self.conductor.mark_job(job_id, JobState.RUNNING)
        self.progress.update(instance, task, host=host.name)
        if not wait:
            return Outcome(instance.uuid, instance.name, host.name, instance.vm_state, task)
        return await self.conductor.follow(job_id, target, timeout)

    # -- power ----------------------------------------------------------------

    async def build_on(
        self, instance: Instance, host: Host, op: str, action_id: int, *, start: bool, wait: bool
    ) -> Outcome:
        """Build the server afresh on ``host`` (rebuild, evacuate): its images cached
        there, its seed made again from the DB, anything of it already there replaced.
        Journalled as ``prepare`` then ``cast``: past the cast the job is durable on the
        host, and whoever collects it finishes the task."""
        target = target_of(host)
        self.progress.update(instance, "preparing image", host=host.name)
        if self.journal is not None:
            await self.journal.step("prepare")
        try:
            async with self.db.session() as db:
                row = (await db.exec(select(Instance).where(Instance.uuid == instance.uuid))).one()
                config = await load_guest_config(db, row)
            await asyncio.gather(*(self.conductor.images.ensure(target, i) for i in config.images))
            seed = await asyncio.to_thread(cloudinit.seed_iso, config.documents)
        except HerdError as exc:
            return await self.abort(instance, action_id, host.name, f"{op} failed: {exc}")
        args = config.build_args(row, host.domain_type or "qemu", seed, host.volume_dir)
        args.update(rebuild=True, start=start)
        if self.journal is not None:
            await self.journal.step("cast")
        return await self.cast(
            row, host, op, lambda job_id: self.agent.build(target, args, job_id=job_id),
            action_id, wait=wait,
            timeout=self.conductor.build_timeout,
        )  # fmt: skip

    async def build_on_again(
        self, instance: Instance, host: Host, op: str, action_id: int, *, start: bool
    ) -> Outcome:
        """Recovery of a ``build_on`` whose runner died: the job it cast is followed if
        the host has it; one it recorded but the host never received is closed; then
        the build is made again (a rebuild replaces whatever half of it is there)."""
        target = target_of(host)
        on_host = {j["job_id"] for j in (await self.agent.jobs(target))["jobs"]}
        async with self.db.session() as db:
            jobs = (
                await db.exec(
                    select(AgentJob).where(
                        AgentJob.action_id == action_id, col(AgentJob.collected_at).is_(None)
                    )
                )
            ).all()
        cast = [j for j in jobs if j.id in on_host]
        if cast:
            return await self.conductor.follow(cast[0].id, target, self.conductor.build_timeout)
        async with self.db.session() as db:
            for job in jobs:  # recorded, never received by the host: over
                job.state, job.error = JobState.FAILED, "never received by the host"
                job.finished_at = job.collected_at = utcnow()
                db.add(job)
            await self.close_open_events(db, action_id, f"{op}: its herd died before the cast")
        return await self.build_on(instance, host, op, action_id, start=start, wait=True)

    async def step(self, action_id: int, event: str, host: str, *, owned: bool = True) -> int:
        """Record the step before its side effect. An ``owned`` step is taken only while
        the action still holds the server's task (``TaskTaken`` otherwise): a move whose
        server was taken from it stops there, before it acts again. A journalled task
        writes the step to its journal row first (``TaskTaken`` if recovery took it)."""
        if self.journal is not None:
            await self.journal.step(event)
        async with self.db.session() as db:
            if owned:
                action = await db.get(InstanceAction, action_id)
                assert action is not None
                await lifecycle.held(db, action.instance_uuid, action_id, event.replace("_", " "))
            row = await start_event(db, action_id, event, host)
            assert row is not None and row.id is not None
            return row.id

    async def end_step(self, event_id: int, ok: bool, detail: str | None = None) -> None:
        async with self.db.session() as db:
            await finish_event(db, event_id, ok, detail)

    async def stepped(
        self,
        action_id: int,
        event: str,
        host: str,
        work: Awaitable[T],
        done: Callable[[T], str] | None = None,
    ) -> T:
        """One recorded step of a workflow: its event is closed with the outcome (and
        ``done(result)`` as its detail)."""
        try:
            step = await self.step(action_id, event, host)
        except HerdError:
            if inspect.iscoroutine(work):
                work.close()  # never started
            raise
        try:
            result = await work
        except HerdError as exc:
            await self.end_step(step, False, str(exc))
            raise
        await self.end_step(step, True, done(result) if done else None)
        return result

    async def carry_disk(
        self, row: Instance, src: HostTarget, dst: HostTarget, path: str
    ) -> tuple[str, int]:
        """A disk from one host to another through this machine (the hosts need not
        reach each other), into the destination's incoming directory: its path there
        and its size."""
        async with self.db.session() as db:
            config = await load_guest_config(db, row)
        await asyncio.gather(*(self.conductor.images.ensure(dst, i) for i in config.images))
        remote = f"{dst.agent_dir}/images/incoming/{row.uuid}.migrating"
        with tempfile.TemporaryDirectory(prefix="herd-migrate-") as tmp:
            local = Path(tmp) / "disk"
            size = await (await self.pool.session(src)).download(path, local)
            await (await self.pool.session(dst)).upload(local, remote)
        return remote, size

    async def stop_source(
        self, row: Instance, host: Host, action_id: int, timeout: int, event: str = "stop_source"
    ) -> None:
        """Shut the guest down (ACPI, forced after ``timeout``) as the step ``event``."""
        self.progress.update(row, "stopping", host=host.name)
        args: PowerArgs = {"uuid": row.uuid, "action": "stop", "timeout": timeout}
        work = self.agent.power(target_of(host), args, timeout=timeout + FOLLOW_MARGIN)
        await self.stepped(action_id, event, host.name, work)

    async def spawn(
        self,
        row: Instance,
        host: Host,
        action_id: int,
        extra: dict[str, object],
        *,
        flavor: dict[str, object] | None = None,
        event: str = "spawn",
        cleanup: bool = True,
    ) -> dict:
        """Define (and start) the server on ``host`` from a disk it already has there:
        a fresh seed, the given flavor (default: the server's own). On failure,
        ``cleanup`` removes whatever half-made copy the build left."""
        self.progress.update(row, "spawning", host=host.name)

        async def build() -> dict:
            async with self.db.session() as db:
                config = await load_guest_config(db, row)
            if flavor is not None:
                config = dataclasses.replace(config, flavor=flavor)
            seed = await asyncio.to_thread(cloudinit.seed_iso, config.documents)
            args = config.build_args(row, host.domain_type or "qemu", seed, host.volume_dir)
            args.update(rebuild=True, **extra)
            return await self.agent.build(
                target_of(host), args, timeout=self.conductor.build_timeout
            )

        try:
            return await self.stepped(action_id, event, host.name, build())
        except HerdError:
            if cleanup:
                with contextlib.suppress(HerdError):  # leave no half-made copy behind
                    await self.agent.delete(target_of(host), row.uuid, timeout=FOLLOW_MARGIN)
            raise

    async def put_back(self, row: Instance, source: Host, was_running: bool) -> None:
        if not was_running:
            return
        with contextlib.suppress(HerdError):
            await self.agent.domain_power(target_of(source), row.uuid, "start", timeout=120)

    async def remove_source_copy(self, row: Instance, source: Host, action_id: int) -> None:
        """Best effort: if the source is unreachable now, reconcile reaps the copy later
        (the DB places the server elsewhere)."""
        step = await self.step(action_id, "cleanup_source", source.name, owned=False)
        try:
            await self.agent.delete(target_of(source), row.uuid, timeout=FOLLOW_MARGIN)
        except HerdError as exc:
            await self.end_step(step, False, f"{exc}; `herd reconcile` will remove it")
            return
        await self.end_step(step, True)

    async def give_back(self, row: Instance, migration: Migration, status: str) -> None:
        """The server stays (or is back) where it came from: its old claim is its own
        again and the new one goes (migration_records.give_back)."""
        async with self.db.session() as db:
            await migration_records.give_back(db, row.uuid, migration.uuid, status)

    async def runs_on(self, host: Host, instance_uuid: str) -> bool:
        """Whether ``host`` answers that the guest runs there (no answer: no)."""
        try:
            listed = await self.agent.list_domains(target_of(host))
        except HerdError:
            return False
        return any(
            d.get("uuid") == instance_uuid and d.get("state") == "running"
            for d in listed.get("domains", [])
        )

    async def domain_on(self, host: Host, instance_uuid: str) -> str | None:
        """The state of the server's domain on ``host`` (running, shutoff...), None if
        there is none; ``HostUnreachable`` if the host cannot say, since recovery must
        never take "no answer" for "not there"."""
        listed = await self.agent.list_domains(target_of(host))
        for domain in listed.get("domains", []):
            if domain.get("uuid") == instance_uuid:
                return str(domain.get("state"))
        return None

    async def reread(self, instance_uuid: str) -> Instance:
        async with self.db.read() as db:
            return (await db.exec(select(Instance).where(Instance.uuid == instance_uuid))).one()
