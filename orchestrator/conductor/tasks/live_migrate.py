"""Live migration: a running server moves to another host without stopping.

The destination is prepared first (images cached, an empty overlay, kernel, seed: the
same files at the same paths, but no domain). Then the source's libvirtd migrates the
guest peer-to-peer over a tunnel herd holds between its SSH connections
(orchestrator/rpc/tunnel.py), copying the disk's overlay as the guest runs. libvirt
keeps the guest on the source until the destination has it, so a failure leaves it
running where it was. Both claims are held while it moves (the old one by the
migration's UUID, as for a resize); one is given back at the end.

Not every pair of hosts can do it, and herd says which and why before anything
moves: the guests must be of the same kind (KVM or TCG) and the agent directory the
same (the domain keeps its disk paths). The source must also reach the destination's
libvirtd through herd's tunnel, and its address on two ports of its migration range,
which the migration then uses (migration_reach.py). libvirt's own refusals (a CPU the
destination lacks) are passed on as they come.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from typing import ClassVar

from agent import specs as agent_specs
from orchestrator import cloudinit
from orchestrator.conductor import lifecycle, migration_reach, migration_records
from orchestrator.conductor.actions import finish_action, record_event
from orchestrator.conductor.hosts import target_of
from orchestrator.conductor.journal import TaskHandle, TaskTaken
from orchestrator.conductor.manager import Conductor
from orchestrator.conductor.outcomes import Outcome, guard_outcome, outcome_of
from orchestrator.conductor.steps import FOLLOW_MARGIN, check_timeout
from orchestrator.conductor.tasks.base import Resumed, Task
from orchestrator.db.models import (
    Host,
    Instance,
    Migration,
    MigrationStatus,
    PowerState,
    VmState,
)
from orchestrator.errors import Conflict, HerdError, NoValidHost
from orchestrator.guest_config import load_guest_config
from orchestrator.rpc.agent_api import Built, LiveMigrateArgs
from orchestrator.rpc.tunnel import libvirt_tunnel
from orchestrator.scheduler.claims import release

MIGRATION_TIMEOUT = 300  # seconds of pre-copy before a busy guest is paused to finish
MAX_TRIES = 5  # hosts the scheduler may offer before herd gives up finding a fit


def incompatibility(source: Host, dest: Host) -> str | None:
    """Why a running guest cannot move from ``source`` to ``dest`` live, or None."""
    if dest.id == source.id:
        return "it is already there"
    if (source.domain_type or "qemu") != (dest.domain_type or "qemu"):
        return (
            f"{source.name} runs {source.domain_type} guests and {dest.name} runs "
            f"{dest.domain_type}: a live guest cannot change accelerator"
        )
    if target_of(source).agent_dir != target_of(dest).agent_dir:
        return (
            f"their agent directories differ ({target_of(source).agent_dir} and "
            f"{target_of(dest).agent_dir}): the guest's disk paths must stay the same"
        )
    return None


class LiveMigrateTask(Task):
    kind = "live_migrate"
    RECOVERY: ClassVar[dict[str, str]] = {
        "schedule": "rolled back: the destination's new claim is released; the server keeps "
        "its claim on the source",
        "prepare_dest": "rolled back: the files prepared on the destination are removed",
        "live_migrate": "both hosts asked: running on the destination, finished; on the "
        "source, rolled back; on neither, ERROR; a host that does not answer: left open "
        "for the next recovery (reconcile holds its domains)",
        "switch": "as at live_migrate (both hosts asked): running on the destination, "
        "finished, the DB placing it there",
    }

    def __init__(
        self,
        conductor: Conductor,
        instance: Instance,
        host_name: str | None = None,
        *,
        timeout: int = MIGRATION_TIMEOUT,
    ) -> None:
        super().__init__(conductor)
        self.instance, self.host_name = instance, host_name
        self.timeout = check_timeout(timeout, agent_specs.MIGRATION_TIMEOUT)
        self.pool = conductor.pool

    async def _execute(self) -> Outcome:
        instance, host_name, timeout = self.instance, self.host_name, self.timeout
        try:
            row, action_id, source = await self.steps.begin(instance, "live_migrate")
        except Conflict as exc:
            return guard_outcome(instance, str(exc))
        if source is None:
            return await self.steps.abort(row, action_id, None, "the server is on no host")
        async with self.db.session() as db:
            migration = await migration_records.begin(db, row, source, "live-migration")
        journal = await self.open_journal(
            row, action_id, step="schedule", source_host_id=source.id,
            migration_uuid=migration.uuid, inputs={"timeout": timeout},
            claims={"source": migration.uuid, "dest": row.uuid},
        )  # fmt: skip
        self.progress.update(row, "scheduling", host=source.name)
        try:
            dest, ports = await self._destination(row, source, host_name)
        except NoValidHost as exc:
            await self.steps.give_back(row, migration, MigrationStatus.ERROR)
            failed = await self.steps.abort(row, action_id, source.name, f"live-migrate: {exc}")
            return dataclasses.replace(failed, failed_at="schedule")
        await journal.destination(dest.id)
        async with self.db.session() as db:
            reached = f"{source.name} reaches it on migration ports {ports}"
            await record_event(db, action_id, "schedule", True, dest.name, reached)
        try:
            await self.steps.stepped(action_id, "prepare_dest", dest.name, self._prepare(row, dest))
            self.progress.update(row, "migrating live", host=dest.name)
            await self.steps.stepped(
                action_id, "live_migrate", source.name,
                self._migrate(row, source, dest, ports, timeout),
                lambda _: f"from {source.name} to {dest.name}",
            )  # fmt: skip
        except TaskTaken:
            raise  # recovery has it now: this process must not undo anything
        except HerdError as exc:
            return await self._failed(row, migration, source, dest, action_id, exc)
        return await self._moved(row, migration, source, dest, action_id)

    async def _moved(
        self,
        row: Instance,
        migration: Migration,
        source: Host,
        dest: Host,
        action_id: int,
        *,
        tidy_source: bool = False,
    ) -> Outcome:
        """The guest runs on the destination: the DB says so, the source claim goes.
        ``tidy_source``: the source's job never said it finished (its answer was lost,
        or its herd died), so its directory may still be there: it goes too."""
        if self.journal is not None:
            await self.journal.step("switch")
        try:
            async with self.db.session() as db:
                fresh = await lifecycle.held(
                    db, row.uuid, action_id, f"live-migrate to {dest.name}"
                )
                await migration_records.finish(
                    db, migration.uuid, MigrationStatus.COMPLETED, dest_id=dest.id
                )
                fresh.host_id, fresh.power_state = dest.id, PowerState.RUNNING
                lifecycle.end_task(fresh)
                db.add(fresh)
                await finish_action(db, action_id)
        except lifecycle.TaskTaken as exc:
            return await self.steps.abort(
                row, action_id, source.name, f"{exc}; it runs on {dest.name}"
            )
        if tidy_source:
            await self._tidy_source(row, source, action_id)
        self.progress.update(fresh, fresh.vm_state, host=dest.name, detail=f"from {source.name}")
        return outcome_of(fresh, dest.name)

    async def _tidy_source(self, row: Instance, source: Host, action_id: int) -> None:
        """Best effort, after the switch: the guest's files on the source (no domain is
        left there; the agent's delete then only removes the directory)."""
        try:
            await self.agent.delete(target_of(source), row.uuid, timeout=FOLLOW_MARGIN)
        except HerdError as exc:
            detail: str | None = f"{exc}; its files stay on {source.name}"
            ok = False
        else:
            detail, ok = None, True
        async with self.db.session() as db:
            await record_event(db, action_id, "cleanup_source", ok, source.name, detail)

    async def _destination(
        self, row: Instance, source: Host, host_name: str | None
    ) -> tuple[Host, migration_reach.Ports]:
        """A host the scheduler accepts and the pair checks too, with the ports the
        source reaches it on: ``host_name`` only, or the scheduler's choices in turn,
        each unfit one set aside."""
        ignored = {source.name}
        reasons: list[str] = []
        for _ in range(1 if host_name else MAX_TRIES):
            spec = dataclasses.replace(
                await self.steps.spec(row),
                requested_host=host_name,
                ignore_hosts=frozenset(ignored),
            )
            try:
                plan = await self.conductor.scheduler.place([spec])
            except NoValidHost:
                if reasons:
                    break
                raise
            async with self.db.session() as db:
                dest = await db.get(Host, plan.placements[0].host_id)
            assert dest is not None
            why = incompatibility(source, dest)
            if why is None:
                found = await self._reach(source, dest)
                if isinstance(found, migration_reach.Ports):
                    return dest, found
                why = found
            async with self.db.session() as db:
                await release(db, row.uuid)
            reasons.append(f"{dest.name}: {why}")
            ignored.add(dest.name)
        raise NoValidHost(
            f"cannot live-migrate {row.name} from {source.name}: {'; '.join(reasons)}"
        )

    async def _reach(self, source: Host, dest: Host) -> migration_reach.Ports | str:
        """The ports the migration will use, or why the source cannot reach ``dest``;
        a host whose agent cannot be asked is as unfit as one it cannot reach."""
        try:
            return await migration_reach.check(self.pool, target_of(source), target_of(dest))
        except HerdError as exc:
            return f"cannot check that {source.name} reaches it: {exc}"

    async def _prepare(self, row: Instance, dest: Host) -> Built:
        target = target_of(dest)
        async with self.db.session() as db:
            config = await load_guest_config(db, row)
        for image in config.images:
            await self.conductor.images.ensure(target, image)
        seed = await asyncio.to_thread(cloudinit.seed_iso, config.documents)
        args = config.build_args(row, dest.domain_type or "qemu", seed, dest.volume_dir)
        args.update(rebuild=True, define=False)
        return await self.agent.build(target, args, timeout=self.conductor.build_timeout)

    async def _migrate(
        self, row: Instance, source: Host, dest: Host, ports: migration_reach.Ports, timeout: int
    ) -> None:
        src, dst = target_of(source), target_of(dest)
        source_conn = (await self.pool.session(src)).conn
        dest_conn = (await self.pool.session(dst)).conn
        listen = f"{src.agent_dir}/migrate-{uuid.uuid4().hex[:12]}.sock"
        async with libvirt_tunnel(source_conn, dest_conn, listen):
            args: LiveMigrateArgs = {
                "uuid": row.uuid, "socket": listen, "address": dest.address, "timeout": timeout,
                "port": ports.memory, "disks_port": ports.disks,
            }  # fmt: skip
            await self.agent.live_migrate(src, args, timeout=timeout + FOLLOW_MARGIN)

    async def _failed(
        self,
        row: Instance,
        migration: Migration,
        source: Host,
        dest: Host,
        action_id: int,
        exc: HerdError,
    ) -> Outcome:
        """libvirt leaves the guest on the source when a migration fails; herd looks
        before it removes what it prepared on the destination, so that a migration
        which did finish, but whose answer was lost, never loses the guest."""
        if await self.steps.runs_on(source, row.uuid):
            try:
                await self.agent.delete(target_of(dest), row.uuid, timeout=FOLLOW_MARGIN)
            except HerdError as cleanup:
                exc = HerdError(f"{exc}; and {dest.name} kept its prepared files: {cleanup}")
            await self.steps.give_back(row, migration, MigrationStatus.ERROR)
            return await self.steps.abort(
                row, action_id, source.name,
                f"live migration to {dest.name} failed, the server still runs on "
                f"{source.name}: {exc}",
            )  # fmt: skip
        if await self.steps.runs_on(dest, row.uuid):  # it moved; only the answer was lost
            return await self._moved(row, migration, source, dest, action_id, tidy_source=True)
        async with self.db.session() as db:
            fresh = await lifecycle.hold(db, row.uuid, action_id)
            if fresh is not None:  # else the taker (reconcile) closed the migration already
                fresh.vm_state, fresh.power_state = VmState.ERROR, PowerState.NOSTATE
                db.add(fresh)
                await migration_records.give_back(
                    db, row.uuid, migration.uuid, MigrationStatus.ERROR
                )
        return await self.steps.abort(
            row, action_id, source.name,
            f"live migration to {dest.name} failed and neither host shows the guest "
            f"running: {exc}",
        )  # fmt: skip

    # -- recovery ------------------------------------------------------------------

    @classmethod
    async def resume(cls, conductor: Conductor, handle: TaskHandle, found: Resumed) -> Outcome:
        """Finish or undo a live migration whose runner died at ``handle``'s step. After
        libvirt moved the guest but before the DB knew, the guest runs on the
        destination only: that is where it is recorded, never reaped."""
        task = cls(conductor, found.instance, timeout=int(handle.inputs.get("timeout", 300)))
        await task.adopt(handle, found.died)
        row, source, dest, migration = found.instance, found.source, found.dest, found.migration
        assert source is not None and migration is not None
        step, action_id = handle.current_step, found.action_id
        if migration.status == MigrationStatus.COMPLETED:
            await task.note("the DB had recorded the move: nothing left to do")
            return outcome_of(await task.steps.reread(row.uuid), dest.name if dest else None)
        if dest is not None and step in ("live_migrate", "switch"):
            on_dest = await task.steps.domain_on(dest, row.uuid)  # no answer: left open
            if on_dest == "running":
                await task.note(f"the guest runs on {dest.name}: recorded there")
                return await task._moved(row, migration, source, dest, action_id, tidy_source=True)
            on_source = await task.steps.domain_on(source, row.uuid)
            if on_source != "running":
                await task.note("the guest runs on neither host")
                return await task._failed(
                    row, migration, source, dest, action_id,
                    HerdError(f"live migration stopped at {step}"),
                )  # fmt: skip
        await task.note(f"the guest stays on {source.name}: rolled back")
        if dest is not None:
            with contextlib.suppress(HerdError):  # reconcile removes the rest later
                await task.agent.delete(target_of(dest), row.uuid, timeout=FOLLOW_MARGIN)
        await task.steps.give_back(row, migration, MigrationStatus.ERROR)
        return await task.steps.abort(
            row, action_id, source.name,
            f"live migration stopped at {step}: rolled back by recovery, it runs on {source.name}",
        )  # fmt: skip
