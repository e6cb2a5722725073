"""Lifecycle workflows: power actions, rebuild, evacuate — each an instance action
with events, guarded by state (orchestrator/lifecycle.py), run as a durable job on the
host, and collected through the conductor's one ``apply_job``, so `herd server wait`
and `herd reconcile` finish them too when herd is killed half-way.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from agent import specs as agent_specs
from orchestrator import cloudinit, lifecycle
from orchestrator.actions import (
    finish_action,
    finish_event,
    record_event,
    record_fault,
    start_action,
    start_event,
)
from orchestrator.conductor.hosts import target_of
from orchestrator.conductor.manager import Conductor
from orchestrator.db.models import (
    POWER_OF,
    AgentJob,
    Allocation,
    Host,
    Image,
    Instance,
    InstanceAction,
    InstanceActionEvent,
    JobState,
    PowerState,
    VmState,
    utcnow,
)
from orchestrator.errors import Conflict, HerdError, InvalidInput, NotFound, NoValidHost
from orchestrator.guest_config import load_guest_config
from orchestrator.outcomes import Outcome, guard_outcome, outcome_of
from orchestrator.rpc.agent_api import PowerArgs
from orchestrator.rpc.ssh import HostTarget
from orchestrator.scheduler.claims import release
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


class ServerActions:
    def __init__(self, conductor: Conductor) -> None:
        self.conductor = conductor
        self.db = conductor.db
        self.pool = conductor.pool
        self.agent = conductor.agent
        self.progress = conductor.progress

    # -- shared steps -------------------------------------------------------

    async def _begin(self, instance: Instance, action: str) -> tuple[Instance, int, Host | None]:
        """Open the instance action and take the task for it (or raise Conflict, and
        record nothing)."""
        async with self.db.session() as db:
            act = await start_action(db, instance.uuid, action, f"req-{uuid.uuid4()}")
            assert act.id is not None
            row = await lifecycle.begin(db, instance, action, act.id)
            host = await db.get(Host, row.host_id) if row.host_id else None
        return row, act.id, host

    async def _abort(
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
            await self._close_open_events(db, action_id, error)
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

    async def _spec(self, row: Instance) -> RequestSpec:
        """What the scheduler is asked for the server, with its group's members where
        they are now: a move keeps the group's (anti-)affinity as a boot does."""
        async with self.db.session() as db:
            (spec,) = await request_specs(db, [row])
        return spec

    @staticmethod
    async def _close_open_events(db: AsyncSession, action_id: int, error: str) -> None:
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

    async def _cast(
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
            return await self._abort(instance, action_id, host.name, f"{op} failed: {exc}")
        await self.conductor.mark_job(job_id, JobState.RUNNING)
        self.progress.update(instance, task, host=host.name)
        if not wait:
            return Outcome(instance.uuid, instance.name, host.name, instance.vm_state, task)
        return await self.conductor.follow(job_id, target, timeout)

    # -- power ----------------------------------------------------------------

    async def power(
        self,
        instances: Sequence[Instance],
        action: str,
        *,
        wait: bool = True,
        timeout: int = POWER_TIMEOUT,
    ) -> list[Outcome]:
        """start, stop, reboot, hard_reboot, pause, unpause, suspend, resume — on many
        servers at once; one refused or failing server does not hold up the others."""
        check_timeout(timeout, agent_specs.STOP_TIMEOUT)
        rule = lifecycle.RULES[action]

        async def one(instance: Instance) -> Outcome:
            try:
                row, action_id, host = await self._begin(instance, action)
            except Conflict as exc:
                return guard_outcome(instance, str(exc))
            if host is None:
                return await self._abort(row, action_id, None, "the server is on no host")
            args: PowerArgs = {"uuid": row.uuid, "action": rule.agent_action, "timeout": timeout}
            return await self._cast(
                row, host, action,
                lambda job_id: self.agent.power(target_of(host), args, job_id=job_id),
                action_id, wait=wait,
                timeout=timeout + FOLLOW_MARGIN,
            )  # fmt: skip

        return list(await asyncio.gather(*(one(i) for i in instances)))

    # -- rebuild ---------------------------------------------------------------

    async def rebuild(
        self, instance: Instance, image_name: str | None = None, *, wait: bool = True
    ) -> Outcome:
        """A new root disk from the image (the same, or ``image_name``): same UUID, same
        host, same addresses, same user data; a stopped server stays stopped."""
        image = await self._rebuild_image(instance, image_name) if image_name else None
        try:
            row, action_id, host = await self._begin(instance, "rebuild")
        except Conflict as exc:
            return guard_outcome(instance, str(exc))
        if host is None:
            return await self._abort(row, action_id, None, "the server is on no host")
        if image is not None:
            async with self.db.session() as db:
                fresh = await lifecycle.hold(db, row.uuid, action_id)
                if fresh is None:
                    return await self._abort(row, action_id, host.name, "its task was taken over")
                fresh.image_id, fresh.image_name = image.id, image.name
                fresh.request_spec = {
                    **fresh.request_spec,
                    "image_properties": dict(image.properties),
                }
                db.add(fresh)
        return await self._build_on(
            row, host, "rebuild", action_id, start=row.vm_state != VmState.STOPPED, wait=wait
        )

    async def _rebuild_image(self, instance: Instance, name: str) -> Image:
        async with self.db.session() as db:
            image = (await db.exec(select(Image).where(Image.name == name))).first()
        if image is None:
            raise NotFound(f"image {name!r} not found")
        if image.format in ("aki", "ari"):
            raise InvalidInput(f"image {name!r} is a kernel or ramdisk, not a bootable disk")
        if image.min_ram_mb > instance.ram_mb or (
            instance.disk_gb and image.min_disk_gb > instance.disk_gb
        ):
            raise InvalidInput(
                f"image {name!r} needs {image.min_ram_mb} MiB RAM and {image.min_disk_gb} GiB "
                f"disk; server {instance.name} has {instance.ram_mb} MiB and {instance.disk_gb} GiB"
            )
        return image

    async def _build_on(
        self, instance: Instance, host: Host, op: str, action_id: int, *, start: bool, wait: bool
    ) -> Outcome:
        """Build the server afresh on ``host`` (rebuild, evacuate): its images cached
        there, its seed made again from the DB, anything of it already there replaced."""
        target = target_of(host)
        self.progress.update(instance, "preparing image", host=host.name)
        try:
            async with self.db.session() as db:
                row = (await db.exec(select(Instance).where(Instance.uuid == instance.uuid))).one()
                config = await load_guest_config(db, row)
            await asyncio.gather(*(self.conductor.images.ensure(target, i) for i in config.images))
            seed = await asyncio.to_thread(cloudinit.seed_iso, config.documents)
        except HerdError as exc:
            return await self._abort(instance, action_id, host.name, f"{op} failed: {exc}")
        args = config.build_args(row, host.domain_type or "qemu", seed)
        args.update(rebuild=True, start=start)
        return await self._cast(
            row, host, op, lambda job_id: self.agent.build(target, args, job_id=job_id),
            action_id, wait=wait,
            timeout=self.conductor.build_timeout,
        )  # fmt: skip

    # -- evacuate --------------------------------------------------------------

    async def evacuate(self, host_name: str, *, wait: bool = True) -> list[Outcome]:
        """Rebuild every server of a host that is down on other hosts, through the
        scheduler: same UUIDs, same addresses. The old host is not told (it cannot be);
        when it comes back, `herd reconcile` reaps the stale domains there, whose
        servers the DB now places elsewhere, instead of them ever running twice."""
        async with self.db.session() as db:
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
        await self._refuse_if_alive(host)
        return list(await asyncio.gather(*(self._evacuate_one(i, host) for i in instances)))

    async def _refuse_if_alive(self, host: Host) -> None:
        """Evacuating a host that still runs its guests would run each twice."""
        self.pool.forget_failure(host.name)
        try:
            await asyncio.wait_for(self.agent.ping(target_of(host)), 15)
        except (HerdError, TimeoutError):
            return
        raise Conflict(
            f"host {host.name} answers: evacuate is for hosts that are down "
            "(stop its libvirtd or power it off first)"
        )

    async def _evacuate_one(self, instance: Instance, source: Host) -> Outcome:
        try:
            row, action_id, _ = await self._begin(instance, "evacuate")
        except Conflict as exc:
            return guard_outcome(instance, str(exc))
        was_stopped = row.vm_state == VmState.STOPPED
        async with self.db.session() as db:
            await release(db, row.uuid)  # its claim moves with it
        spec = dataclasses.replace(
            await self._spec(row), requested_host=None, ignore_hosts=frozenset({source.name})
        )
        self.progress.update(row, "scheduling", host=source.name)
        try:
            plan = await self.conductor.scheduler.place([spec])
        except NoValidHost as exc:
            failed = await self._abort(row, action_id, source.name, f"evacuate: {exc}")
            return dataclasses.replace(failed, failed_at="schedule")
        placement = plan.placements[0]
        async with self.db.session() as db:
            fresh = await lifecycle.hold(db, row.uuid, action_id)
            if fresh is None:
                await release(db, row.uuid)  # the claim just made for it on the destination
            else:
                fresh.host_id = placement.host_id
                db.add(fresh)
            dest = await db.get(Host, placement.host_id)
        if fresh is None:
            return await self._abort(row, action_id, source.name, "its task was taken over")
        assert dest is not None
        return await self._build_on(
            fresh, dest, "evacuate", action_id, start=not was_stopped, wait=True
        )

    # -- cold migration ----------------------------------------------------------

    async def migrate(
        self, instance: Instance, host_name: str | None = None, *, timeout: int = POWER_TIMEOUT
    ) -> Outcome:
        """Cold migration through the orchestrator: stop on the source, carry the disk
        over SFTP (source → here → destination; hosts need not reach each other), start
        on the destination from the same disk with a fresh seed, then remove the source
        copy. Any failure before the destination runs puts everything back."""
        check_timeout(timeout, agent_specs.STOP_TIMEOUT)
        try:
            row, action_id, source = await self._begin(instance, "migrate")
        except Conflict as exc:
            return guard_outcome(instance, str(exc))
        if source is None:
            return await self._abort(row, action_id, None, "the server is on no host")
        was_running = row.vm_state == VmState.ACTIVE
        async with self.db.session() as db:
            await release(db, row.uuid)  # the claim moves with the server
        spec = dataclasses.replace(
            await self._spec(row), requested_host=host_name, ignore_hosts=frozenset({source.name})
        )
        self.progress.update(row, "scheduling", host=source.name)
        try:
            plan = await self.conductor.scheduler.place([spec])
        except NoValidHost as exc:
            await self._claim_back(row, source)
            failed = await self._abort(row, action_id, source.name, f"migrate: {exc}")
            return dataclasses.replace(failed, failed_at="schedule")
        async with self.db.session() as db:
            dest = await db.get(Host, plan.placements[0].host_id)
            await record_event(db, action_id, "schedule", True, dest.name if dest else None)
        assert dest is not None
        try:
            result = await self._move(row, source, dest, action_id, was_running, timeout)
        except HerdError as exc:
            await self._put_back(row, source, was_running)
            async with self.db.session() as db:
                await release(db, row.uuid)
            await self._claim_back(row, source)
            return await self._abort(
                row, action_id, source.name, f"migrate to {dest.name} failed: {exc}"
            )
        try:
            async with self.db.session() as db:
                fresh = await lifecycle.held(db, row.uuid, action_id, f"migrate to {dest.name}")
                fresh.host_id = dest.id
                lifecycle.end_task(fresh)
                fresh.power_state = POWER_OF.get(str(result.get("state")), PowerState.NOSTATE)
                db.add(fresh)
                await finish_action(db, action_id)
        except lifecycle.TaskTaken as exc:  # the source copy stays: never lose the only one
            return await self._abort(
                row, action_id, source.name,
                f"{exc}; its copy on {source.name} is kept, the one started on {dest.name} "
                "is left for `herd reconcile`",
            )  # fmt: skip
        await self._remove_source_copy(fresh, source, action_id)
        self.progress.update(
            fresh, fresh.vm_state, host=dest.name, detail=f"moved from {source.name}"
        )
        return outcome_of(fresh, dest.name)

    async def _step(self, action_id: int, event: str, host: str, *, owned: bool = True) -> int:
        """Record the step before its side effect. An ``owned`` step is taken only while
        the action still holds the server's task (``TaskTaken`` otherwise): a move whose
        server was taken from it stops there, before it acts again."""
        async with self.db.session() as db:
            if owned:
                action = await db.get(InstanceAction, action_id)
                assert action is not None
                await lifecycle.held(db, action.instance_uuid, action_id, event.replace("_", " "))
            row = await start_event(db, action_id, event, host)
            assert row is not None and row.id is not None
            return row.id

    async def _end_step(self, event_id: int, ok: bool, detail: str | None = None) -> None:
        async with self.db.session() as db:
            await finish_event(db, event_id, ok, detail)

    async def _stepped(
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
            step = await self._step(action_id, event, host)
        except HerdError:
            if inspect.iscoroutine(work):
                work.close()  # never started
            raise
        try:
            result = await work
        except HerdError as exc:
            await self._end_step(step, False, str(exc))
            raise
        await self._end_step(step, True, done(result) if done else None)
        return result

    async def _carry_disk(
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

    async def _move(
        self, row: Instance, source: Host, dest: Host, action_id: int, was_running: bool,
        timeout: int,
    ) -> dict:  # fmt: skip
        src, dst = target_of(source), target_of(dest)
        if was_running:
            await self._stop_for_move(row, source, action_id, timeout)
        self.progress.update(row, "copying disk", host=dest.name)
        remote, _ = await self._stepped(
            action_id, "copy_disk", dest.name,
            self._carry_disk(row, src, dst, f"{src.agent_dir}/instances/{row.uuid}/disk"),
            lambda carried: f"{carried[1]} bytes from {source.name} to {dest.name}",
        )  # fmt: skip
        return await self._spawn(row, dest, action_id, {"disk_from": remote, "start": was_running})

    async def _stop_for_move(self, row: Instance, host: Host, action_id: int, timeout: int) -> None:
        self.progress.update(row, "stopping", host=host.name)
        args: PowerArgs = {"uuid": row.uuid, "action": "stop", "timeout": timeout}
        work = self.agent.power(target_of(host), args, timeout=timeout + FOLLOW_MARGIN)
        await self._stepped(action_id, "stop_source", host.name, work)

    async def _spawn(
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
            args = config.build_args(row, host.domain_type or "qemu", seed)
            args.update(rebuild=True, **extra)
            return await self.agent.build(
                target_of(host), args, timeout=self.conductor.build_timeout
            )

        try:
            return await self._stepped(action_id, event, host.name, build())
        except HerdError:
            if cleanup:
                with contextlib.suppress(HerdError):  # leave no half-made copy behind
                    await self.agent.delete(target_of(host), row.uuid, timeout=FOLLOW_MARGIN)
            raise

    async def _put_back(self, row: Instance, source: Host, was_running: bool) -> None:
        if not was_running:
            return
        with contextlib.suppress(HerdError):
            await self.agent.domain_power(target_of(source), row.uuid, "start", timeout=120)

    async def _claim_back(self, row: Instance, source: Host) -> None:
        """The server stays where it was: so does its claim (it fitted there already)."""
        async with self.db.session() as db:
            db.add(
                Allocation(
                    instance_uuid=row.uuid, host_id=source.id,  # type: ignore[arg-type]
                    vcpus=row.vcpus, ram_mb=row.ram_mb, disk_gb=row.disk_gb, created_at=utcnow(),
                )
            )  # fmt: skip

    async def _remove_source_copy(self, row: Instance, source: Host, action_id: int) -> None:
        """Best effort: if the source is unreachable now, reconcile reaps the copy later
        (the DB places the server elsewhere)."""
        step = await self._step(action_id, "cleanup_source", source.name, owned=False)
        try:
            await self.agent.delete(target_of(source), row.uuid, timeout=FOLLOW_MARGIN)
        except HerdError as exc:
            await self._end_step(step, False, f"{exc}; `herd reconcile` will remove it")
            return
        await self._end_step(step, True)
