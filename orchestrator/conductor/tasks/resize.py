"""Resize: a server onto another flavor, kept aside until the operator confirms.

Nova's resize in herd's terms. The new size is claimed on the server's own host when
it fits there (both sizes held at once, as Nova's allow_resize_to_same_host), else
through the scheduler on another host. The source's domain goes, but its directory
is kept whole as ``<uuid>.resize`` (Nova's ``_resize`` directory) and its claim moves
to the migration's UUID, so the source keeps the room the server may return to.
The server then runs at the new size in vm_state ``resized`` until:

- ``--confirm``: the kept directory and the old claim go;
- ``--revert``: the new copy goes and the server is built again on the source from
  the kept disk, at the old size, with its old claim.

A failure anywhere before the server runs at its new size is a revert done at once:
the new claim is released and the server is back on its source, as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, ClassVar

from sqlmodel import col, select

from orchestrator.conductor import lifecycle, migration_records, volume_moves
from orchestrator.conductor.actions import finish_action, record_event
from orchestrator.conductor.hosts import target_of
from orchestrator.conductor.journal import TaskHandle, TaskTaken
from orchestrator.conductor.manager import Conductor
from orchestrator.conductor.outcomes import Outcome, guard_outcome, outcome_of
from orchestrator.conductor.steps import FOLLOW_MARGIN, POWER_TIMEOUT, Steps
from orchestrator.conductor.tasks.base import Resumed, Task
from orchestrator.db.models import (
    POWER_OF,
    Flavor,
    Host,
    Image,
    Instance,
    Migration,
    MigrationStatus,
    PowerState,
    VmState,
    Volume,
)
from orchestrator.errors import Conflict, HerdError, InvalidInput, NotFound, NoValidHost
from orchestrator.guest_config import load_guest_config


def flavor_record(flavor: Flavor) -> dict[str, Any]:
    """A flavor as the build job and the migration row carry it."""
    return {
        "name": flavor.name,
        "vcpus": flavor.vcpus,
        "ram_mb": flavor.ram_mb,
        "disk_gb": flavor.disk_gb,
        "extra_specs": dict(flavor.extra_specs),
    }


def wear(instance: Instance, flavor: dict[str, Any]) -> None:
    """The server takes on a flavor: the copy embedded in it, and what the scheduler
    will ask for it from now on."""
    instance.flavor_name = flavor["name"]
    instance.vcpus, instance.ram_mb, instance.disk_gb = (
        flavor["vcpus"],
        flavor["ram_mb"],
        flavor["disk_gb"],
    )
    instance.request_spec = {**instance.request_spec, "extra_specs": dict(flavor["extra_specs"])}


def stash_disk(host: Host, instance_uuid: str) -> str:
    return f"{target_of(host).agent_dir}/instances/{instance_uuid}.resize/disk"


@dataclasses.dataclass(frozen=True)
class WaitingResize:
    """A resize waiting for the operator's answer, its server's task now held."""

    row: Instance
    action_id: int
    host: Host | None  # where the resized server runs now
    migration: Migration
    source: Host  # where its old disk is kept


class SourceRestore:
    """Putting a server back on its resize source at its old size, from the disk kept
    there: what a failed resize does at once and what a revert does on request."""

    def __init__(self, steps: Steps) -> None:
        self.steps = steps
        self.db, self.agent, self.progress = steps.db, steps.agent, steps.progress

    async def undo(
        self,
        row: Instance,
        migration: Migration,
        source: Host,
        dest: Host | None,
        action_id: int,
        stashed: bool,
        error: str | None,
        *,
        rebuilt: bool = False,
    ) -> Outcome:
        """Put the server back on its source at its old size: after a failed resize
        (``error``), or as a revert. The new copy is already gone from another host;
        on the same host the rebuild replaces it. ``rebuilt``: recovery found the source
        built again already (its runner died after that step), so only the rest is done."""
        old_running = migration.old_vm_state == VmState.ACTIVE
        volumes = await volume_moves.attached_volumes(self.steps, row.uuid)
        result: dict[str, Any] = {}
        if rebuilt:
            with contextlib.suppress(HerdError):
                await self.agent.resize_drop(target_of(source), row.uuid, timeout=FOLLOW_MARGIN)
            state = await self.steps.domain_on(source, row.uuid)
            result = {"state": state} if state else {}
        elif stashed:
            try:
                result = await self.steps.spawn(
                    row, source, action_id,
                    {"disk_from": stash_disk(source, row.uuid), "keep_disk_from": True,
                     "start": old_running},
                    flavor=migration.old_flavor, event="revert_source", cleanup=False,
                )  # fmt: skip
            except HerdError as exc:
                return await self.lost(row, migration, source, action_id, error, exc)
            # A stash left behind is harmless: the next resize replaces it, delete removes it.
            with contextlib.suppress(HerdError):
                await self.steps.stepped(
                    action_id, "drop_stash", source.name,
                    self.agent.resize_drop(target_of(source), row.uuid, timeout=FOLLOW_MARGIN),
                )  # fmt: skip
        else:  # stopped, perhaps, but still defined there: start it again if it ran
            await self.steps.put_back(row, source, old_running)
        status = MigrationStatus.ERROR if error else MigrationStatus.REVERTED
        if self.steps.journal is not None:
            await self.steps.journal.step("restore")
        try:
            async with self.db.session() as db:
                fresh = await lifecycle.held(db, row.uuid, action_id, "revert")
                wear(fresh, migration.old_flavor)
                fresh.host_id = source.id
                fresh.vm_state = migration.old_vm_state
                if result:
                    fresh.power_state = POWER_OF.get(str(result.get("state")), PowerState.NOSTATE)
                db.add(fresh)
                await migration_records.give_back(db, row.uuid, migration.uuid, status)
                await volume_moves.switch(  # a revert's volumes: the source's files again
                    db, fresh, volumes, source, {v.uuid: volume_moves.path_on(source, v)
                                                 for v in volumes},
                )  # fmt: skip
                if not error:
                    lifecycle.end_task(fresh)
                    await finish_action(db, action_id)
        except lifecycle.TaskTaken as exc:
            return await self.steps.abort(
                row, action_id, source.name, f"{error or 'revert'}; {exc}"
            )
        if dest is not None and dest.id != source.id:  # best effort: reconcile the rest
            await volume_moves.drop_copies(self.steps, volumes, dest)
        if error:
            return await self.steps.abort(row, action_id, source.name, error)
        self.progress.update(fresh, fresh.vm_state, host=source.name, detail="resize reverted")
        return outcome_of(fresh, source.name)

    async def lost(
        self,
        row: Instance,
        migration: Migration,
        source: Host,
        action_id: int,
        error: str | None,
        exc: HerdError,
    ) -> Outcome:
        """Not even the old size could be rebuilt on the source: the server goes to
        ERROR there, still holding its old claim; its disk stays kept aside."""
        why = f"{error}; " if error else ""
        async with self.db.session() as db:
            fresh = await lifecycle.hold(db, row.uuid, action_id)
            if fresh is not None:  # else the taker (reconcile) closed the migration already
                wear(fresh, migration.old_flavor)
                fresh.host_id, fresh.vm_state = source.id, VmState.ERROR
                fresh.power_state = PowerState.NOSTATE
                db.add(fresh)
                await migration_records.give_back(
                    db, row.uuid, migration.uuid, MigrationStatus.ERROR
                )
        return await self.steps.abort(
            row, action_id, source.name,
            f"{why}restoring it on {source.name} failed too: {exc} "
            f"(its disk is kept at {stash_disk(source, row.uuid)})",
        )  # fmt: skip

    async def answer(self, instance: Instance, action: str) -> WaitingResize | Outcome:
        """Take the server's task to confirm or revert its waiting resize; the outcome
        instead when there is nothing to answer (another task holds the server, or no
        resize of it waits)."""
        try:
            row, action_id, host = await self.steps.begin(instance, action)
        except Conflict as exc:
            return guard_outcome(instance, str(exc))
        migration, source = await self.open(row)
        if migration is None or source is None:
            return await self.steps.abort(row, action_id, None, "no resize of it is waiting")
        return WaitingResize(row, action_id, host, migration, source)

    async def open(self, row: Instance) -> tuple[Migration | None, Host | None]:
        async with self.db.session() as db:
            migration = (
                await db.exec(
                    select(Migration)
                    .where(
                        Migration.instance_uuid == row.uuid,
                        Migration.status == MigrationStatus.FINISHED,
                    )
                    .order_by(col(Migration.id).desc())
                )
            ).first()
            source = (
                await db.get(Host, migration.source_host_id)
                if migration and migration.source_host_id
                else None
            )
        return migration, source


class ResizeTask(Task):
    """The server onto another flavor, kept aside until the operator confirms."""

    kind = "resize"
    RECOVERY: ClassVar[dict[str, str]] = {
        "schedule": "rolled back: the new size's claim is released; the server keeps its old one",
        "stop_source": "rolled back: started again on the source if it was running",
        "stash_source": "rolled back: rebuilt on the source from the kept disk if its domain "
        "is gone, else left as it is",
        "copy_disk": "rolled back: the partial copy is removed; rebuilt on the source from the "
        "kept disk",
        "copy_volumes": "rolled back: the volumes' copies on the destination are removed (the "
        "source's files are the volumes until the switch); rebuilt on the source",
        "spawn": "finished if the destination has the domain (then resized: confirm or revert "
        "it), else rolled back",
        "switch": "finished if the destination has the domain: the DB records it resized, to "
        "confirm or revert; else rolled back",
        "revert_source": "rolled back (a failure was being undone): rebuilt on the source",
        "drop_stash": "rolled back: the undo is finished (the kept disk is removed, the DB "
        "restored to the old size)",
        "restore": "rolled back: the undo is finished (the DB restored to the old size)",
    }

    def __init__(
        self,
        conductor: Conductor,
        instance: Instance,
        flavor_name: str,
        host_name: str | None = None,
        *,
        timeout: int = POWER_TIMEOUT,
    ) -> None:
        super().__init__(conductor)
        self.instance, self.flavor_name, self.host_name = instance, flavor_name, host_name
        self.timeout = timeout
        self.restore = SourceRestore(self.steps)

    async def _execute(self) -> Outcome:
        flavor = await self._new_flavor(self.instance, self.flavor_name)
        try:
            row, action_id, source = await self.steps.begin(self.instance, "resize")
        except Conflict as exc:
            return guard_outcome(self.instance, str(exc))
        if source is None:
            return await self.steps.abort(row, action_id, None, "the server is on no host")
        self.row, self.action_id, self.source, self.flavor = row, action_id, source, flavor
        self.volumes = await volume_moves.attached_volumes(self.steps, row.uuid)
        busy = volume_moves.unsettled(self.volumes) or await volume_moves.snapshotted(
            self.steps, self.volumes
        )
        if busy is not None:
            return await self.steps.abort(row, action_id, source.name, f"resize: {busy}")
        was_running = row.vm_state == VmState.ACTIVE
        try:
            async with self.db.session() as db:
                old = (await load_guest_config(db, row)).flavor
                migration = await migration_records.begin(
                    db, row, source, "resize", old_flavor=old, new_flavor=flavor
                )
        except HerdError as exc:  # its image is gone, say: nothing has moved yet
            return await self.steps.abort(row, action_id, source.name, f"resize: {exc}")
        self.migration = migration
        journal = await self.open_journal(
            row, action_id, step="schedule", source_host_id=source.id,
            migration_uuid=migration.uuid, inputs={"timeout": self.timeout},
            claims={"source": migration.uuid, "dest": row.uuid},
        )  # fmt: skip
        self.progress.update(row, "scheduling", host=source.name)
        try:
            dest = await self._schedule(row, flavor, source, self.host_name)
        except NoValidHost as exc:
            await self.steps.give_back(row, migration, MigrationStatus.ERROR)
            failed = await self.steps.abort(row, action_id, source.name, f"resize: {exc}")
            return dataclasses.replace(failed, failed_at="schedule")
        await journal.destination(dest.id)
        async with self.db.session() as db:
            await record_event(db, action_id, "schedule", True, dest.name)
        stashed = False
        try:
            if was_running:
                await self.steps.stop_source(row, source, action_id, self.timeout)
            stash = await self._stash()
            stashed = True
            disk = await self._disk_on(dest, stash)
            result = await self.steps.spawn(
                row, dest, action_id, {**disk, "start": was_running}, flavor=flavor,
                cleanup=dest.id != source.id,
            )  # fmt: skip
        except TaskTaken:
            raise  # recovery has it now: this process must not undo anything
        except HerdError as exc:
            return await self.restore.undo(
                row, migration, source, dest, action_id, stashed,
                f"resize to {self.flavor_name} on {dest.name} failed: {exc}",
            )  # fmt: skip
        return await self._resized(dest, POWER_OF.get(str(result.get("state")), PowerState.NOSTATE))

    async def _stash(self) -> str:
        """The source's domain goes, its directory kept whole as ``<uuid>.resize``."""
        stash = await self.steps.stepped(
            self.action_id, "stash_source", self.source.name,
            self.agent.resize_stash(target_of(self.source), self.row.uuid, timeout=FOLLOW_MARGIN),
        )  # fmt: skip
        return str(stash["disk"])

    async def _disk_on(self, dest: Host, stash: str) -> dict[str, object]:
        """What the destination builds from: the kept disk itself on the same host,
        else a copy carried to it."""
        if dest.id == self.source.id:
            return {"disk_from": stash, "keep_disk_from": True}
        self.progress.update(self.row, "copying disk", host=dest.name)
        src, dst = target_of(self.source), target_of(dest)
        remote, _ = await self.steps.stepped(
            self.action_id, "copy_disk", dest.name,
            self.steps.carry_disk(self.row, src, dst, stash),
            lambda carried: f"{carried[1]} bytes from {self.source.name} to {dest.name}",
        )  # fmt: skip
        # The volumes too: the source's files stay the volumes until the switch, and
        # stay on the source after it until the resize is confirmed (a revert's way back).
        await volume_moves.carry(
            self.steps, self.action_id, self.row, self.volumes, self.source, dest
        )
        return {"disk_from": remote}

    async def _resized(self, dest: Host, power_state: str) -> Outcome:
        """The server runs at its new size: the DB says so, and waits for the operator.
        Its volumes are the destination's copies from here (their old files kept on the
        source until the confirm)."""
        row, action_id = self.row, self.action_id
        moved = dest.id != self.source.id
        paths = {v.uuid: volume_moves.path_on(dest, v) for v in self.volumes} if moved else {}
        assert self.journal is not None
        await self.journal.step("switch")
        try:
            async with self.db.session() as db:
                fresh = await lifecycle.held(db, row.uuid, action_id, f"resize on {dest.name}")
                wear(fresh, self.flavor)
                fresh.host_id = dest.id
                fresh.vm_state = VmState.RESIZED
                lifecycle.end_task(fresh)
                fresh.power_state = power_state
                db.add(fresh)
                await migration_records.mark(
                    db, self.migration.uuid, MigrationStatus.FINISHED, dest_id=dest.id
                )
                if moved:
                    await volume_moves.switch(db, fresh, self.volumes, dest, paths)
                await finish_action(db, action_id)
        except lifecycle.TaskTaken as exc:  # the kept disk on the source stays
            return await self.steps.abort(row, action_id, self.source.name, str(exc))
        self.progress.update(
            fresh, VmState.RESIZED, host=dest.name, detail="confirm or revert the resize"
        )
        return outcome_of(fresh, dest.name)

    @classmethod
    async def resume(cls, conductor: Conductor, handle: TaskHandle, found: Resumed) -> Outcome:
        """Finish or undo a resize whose runner died at ``handle``'s step."""
        migration, source, dest = found.migration, found.source, found.dest
        assert migration is not None and source is not None
        task = cls(conductor, found.instance, str(migration.new_flavor.get("name")))
        await task.adopt(handle, found.died)
        task.row, task.action_id, task.source = found.instance, found.action_id, source
        task.flavor, task.migration = migration.new_flavor, migration
        task.volumes = await volume_moves.attached_volumes(task.steps, found.instance.uuid)
        row, step = found.instance, handle.current_step
        if migration.status != MigrationStatus.MIGRATING:
            await task.note(f"the DB had recorded its end ({migration.status})")
            return outcome_of(await task.steps.reread(row.uuid), None)
        if step in ("spawn", "switch") and dest is not None:
            state = await task.steps.domain_on(dest, row.uuid)
            if state is not None:
                await task.note(f"{dest.name} runs it at the new size: finishing forward")
                return await task._resized(dest, POWER_OF.get(state, PowerState.NOSTATE))
        if dest is not None and dest.id != source.id and step not in ("schedule", "stop_source"):
            # The half-made copy, or what a failed spawn's cleanup could not remove before
            # the undo (revert_source...) was killed: its disk carried to incoming/.
            with contextlib.suppress(HerdError):  # reconcile: the rest
                await task.agent.delete(target_of(dest), row.uuid, timeout=FOLLOW_MARGIN)
        stashed = step not in ("schedule", "stop_source")
        if step == "stash_source":
            stashed = await task.steps.domain_on(source, row.uuid) is None
        await task.note(f"rolling back to {source.name} at the old size")
        return await task.restore.undo(
            row, migration, source, dest, found.action_id, stashed,
            f"resize stopped at {step}: rolled back by recovery",
            rebuilt=step in ("drop_stash", "restore"),
        )  # fmt: skip

    async def _new_flavor(self, instance: Instance, name: str) -> dict[str, Any]:
        async with self.db.session() as db:
            flavor = (await db.exec(select(Flavor).where(Flavor.name == name))).first()
            image = await db.get(Image, instance.image_id) if instance.image_id else None
        if flavor is None:
            raise NotFound(f"flavor {name!r} not found")
        if flavor.name == instance.flavor_name:
            raise InvalidInput(f"server {instance.name} already has flavor {name}")
        if flavor.disk_gb < instance.disk_gb:
            raise InvalidInput(
                f"flavor {name} has a {flavor.disk_gb} GiB disk, smaller than server "
                f"{instance.name}'s {instance.disk_gb} GiB: disks cannot shrink"
            )
        if image is not None and (
            image.min_ram_mb > flavor.ram_mb or image.min_disk_gb > flavor.disk_gb
        ):
            raise InvalidInput(
                f"image {image.name!r} needs {image.min_ram_mb} MiB RAM and "
                f"{image.min_disk_gb} GiB disk; flavor {name} has {flavor.ram_mb} MiB "
                f"and {flavor.disk_gb} GiB"
            )
        return flavor_record(flavor)

    async def _schedule(
        self, row: Instance, flavor: dict[str, Any], source: Host, host_name: str | None
    ) -> Host:
        """The server's own host if the new size fits there too, else anywhere the
        filters allow; ``host_name`` asks for one host only."""
        base = dataclasses.replace(
            await self.steps.spec(row), vcpus=flavor["vcpus"], ram_mb=flavor["ram_mb"],
            disk_gb=flavor["disk_gb"], extra_specs=dict(flavor["extra_specs"]),
            requested_host=None,
        )  # fmt: skip
        # Another host takes the volumes too (their claims move to it at the switch).
        carried = volume_moves.carried_gb(await volume_moves.attached_volumes(self.steps, row.uuid))
        elsewhere = dataclasses.replace(base, disk_gb=base.disk_gb + carried)
        tries = (
            [dataclasses.replace(base if host_name == source.name else elsewhere,
                                 requested_host=host_name)]
            if host_name
            else [
                dataclasses.replace(base, requested_host=source.name),
                dataclasses.replace(elsewhere, ignore_hosts=frozenset({source.name})),
            ]
        )  # fmt: skip
        refusal = NoValidHost("no host fits the new size")
        for spec in tries:
            try:
                plan = await self.conductor.scheduler.place([spec])
            except NoValidHost as exc:
                refusal = exc
                continue
            async with self.db.session() as db:
                dest = await db.get(Host, plan.placements[0].host_id)
            assert dest is not None
            return dest
        raise refusal


class ConfirmResizeTask(Task):
    """The new size stays: the source's kept disk and old claim go."""

    kind = "confirm"
    RECOVERY: ClassVar[dict[str, str]] = {
        "drop_source": "finished: the kept disk is removed (again) and the old claim released",
        "switch": "finished: the DB records the resize confirmed",
    }

    def __init__(self, conductor: Conductor, instance: Instance) -> None:
        super().__init__(conductor)
        self.instance = instance
        self.restore = SourceRestore(self.steps)

    async def _execute(self) -> Outcome:
        waiting = await self.restore.answer(self.instance, "confirm_resize")
        if isinstance(waiting, Outcome):
            return waiting
        row, action_id, migration, source = (
            waiting.row, waiting.action_id, waiting.migration, waiting.source
        )  # fmt: skip
        await self.open_journal(
            row, action_id, step="drop_source", source_host_id=source.id,
            dest_host_id=row.host_id, migration_uuid=migration.uuid,
        )  # fmt: skip
        return await self._confirm(row, action_id, migration, source, waiting.host)

    async def _confirm(
        self, row: Instance, action_id: int, migration: Migration, source: Host, host: Host | None
    ) -> Outcome:
        try:
            await self.steps.stepped(
                action_id, "drop_source", source.name,
                self.agent.resize_drop(target_of(source), row.uuid, timeout=FOLLOW_MARGIN),
            )  # fmt: skip
            if host is not None and host.id != source.id:  # the volumes' old files
                volumes = await volume_moves.attached_volumes(self.steps, row.uuid)
                for failed in await volume_moves.drop_copies(self.steps, volumes, source):
                    raise HerdError(failed)
        except TaskTaken:
            raise
        except HerdError as exc:
            return await self.steps.abort(
                row, action_id, source.name,
                f"confirm: could not remove the old disk on {source.name}: {exc} "
                "(the resize stays open: confirm again)",
            )  # fmt: skip
        assert self.journal is not None
        await self.journal.step("switch")
        try:
            async with self.db.session() as db:
                fresh = await lifecycle.held(db, row.uuid, action_id, "confirm")
                await migration_records.finish(db, migration.uuid, MigrationStatus.CONFIRMED)
                fresh.vm_state = (
                    VmState.STOPPED if fresh.power_state == PowerState.SHUTDOWN else VmState.ACTIVE
                )
                lifecycle.end_task(fresh)
                db.add(fresh)
                await finish_action(db, action_id)
        except lifecycle.TaskTaken as exc:
            return await self.steps.abort(row, action_id, source.name, str(exc))
        where = host.name if host else None
        self.progress.update(fresh, fresh.vm_state, host=where, detail="resize confirmed")
        return outcome_of(fresh, where)

    @classmethod
    async def resume(cls, conductor: Conductor, handle: TaskHandle, found: Resumed) -> Outcome:
        """A confirm only ever goes forward: dropping the kept disk is safe to repeat."""
        task = cls(conductor, found.instance)
        await task.adopt(handle, found.died)
        migration, source = found.migration, found.source
        assert migration is not None and source is not None
        if migration.status != MigrationStatus.FINISHED:
            await task.note(f"the DB had recorded its end ({migration.status})")
            return outcome_of(await task.steps.reread(found.instance.uuid), None)
        await task.note("finishing the confirm")
        return await task._confirm(found.instance, found.action_id, migration, source, found.dest)


class RevertResizeTask(Task):
    """Back to the old size on the source, from the disk kept there."""

    kind = "revert"
    RECOVERY: ClassVar[dict[str, str]] = {
        "stop_dest": "finished: the resized copy is stopped (again), then as the steps below",
        "copy_volumes": "finished: the volumes are carried back from the destination again "
        "(what the resized server wrote is kept), then as the steps below",
        "remove_dest": "finished: the resized copy is removed (again), then as the steps below",
        "revert_source": "finished: rebuilt on the source from the kept disk",
        "drop_stash": "finished: the kept disk is removed, the DB restored to the old size",
        "restore": "finished: the DB restored to the old size on the source",
    }

    def __init__(
        self, conductor: Conductor, instance: Instance, *, timeout: int = POWER_TIMEOUT
    ) -> None:
        super().__init__(conductor)
        self.instance, self.timeout = instance, timeout
        self.restore = SourceRestore(self.steps)

    async def _execute(self) -> Outcome:
        waiting = await self.restore.answer(self.instance, "revert_resize")
        if isinstance(waiting, Outcome):
            return waiting
        row, action_id, migration, source, dest = (
            waiting.row, waiting.action_id, waiting.migration, waiting.source, waiting.host
        )  # fmt: skip
        await self.open_journal(
            row, action_id, step="remove_dest", source_host_id=source.id,
            dest_host_id=dest.id if dest else None, migration_uuid=migration.uuid,
        )  # fmt: skip
        return await self._revert(row, action_id, migration, source, dest)

    async def _revert(
        self,
        row: Instance,
        action_id: int,
        migration: Migration,
        source: Host,
        dest: Host | None,
        *,
        rebuilt: bool = False,
    ) -> Outcome:
        if dest is not None and dest.id != source.id and not rebuilt:
            volumes = await volume_moves.attached_volumes(self.steps, row.uuid)
            try:
                if volumes:  # what the resized server wrote to them goes back with them
                    await self._carry_back(row, action_id, volumes, source, dest)
                await self.steps.stepped(
                    action_id, "remove_dest", dest.name,
                    self.agent.delete(target_of(dest), row.uuid, timeout=FOLLOW_MARGIN),
                )  # fmt: skip
            except TaskTaken:
                raise
            except HerdError as exc:
                await self.steps.put_back(row, dest, row.power_state == PowerState.RUNNING)
                return await self.steps.abort(
                    row, action_id, dest.name,
                    f"revert: {exc} (the resize stays open: revert again)",
                )  # fmt: skip
        return await self.restore.undo(
            row, migration, source, dest, action_id, True, None, rebuilt=rebuilt
        )

    async def _carry_back(
        self, row: Instance, action_id: int, volumes: list[Volume], source: Host, dest: Host
    ) -> None:
        """The volumes are the destination's copies since the resize: the guest there is
        shut down (its writes on disk), and the copies carried over the source's old
        files, so a revert gives back the old size but never the volumes' old data."""
        state = await self.steps.domain_on(dest, row.uuid)
        if state is None:
            return  # removed already, by a revert that carried them back first
        if state != "shutoff":
            await self.steps.stop_source(row, dest, action_id, self.timeout, "stop_dest")
        await volume_moves.carry(self.steps, action_id, row, volumes, dest, source)

    @classmethod
    async def resume(cls, conductor: Conductor, handle: TaskHandle, found: Resumed) -> Outcome:
        """A revert only ever goes forward, from the step it reached."""
        task = cls(conductor, found.instance)
        await task.adopt(handle, found.died)
        migration, source = found.migration, found.source
        assert migration is not None and source is not None
        if migration.status != MigrationStatus.FINISHED:
            await task.note(f"the DB had recorded its end ({migration.status})")
            return outcome_of(await task.steps.reread(found.instance.uuid), None)
        await task.note("finishing the revert")
        return await task._revert(
            found.instance, found.action_id, migration, source, found.dest,
            rebuilt=handle.current_step in ("drop_stash", "restore"),
        )  # fmt: skip

    # -- steps -------------------------------------------------------------------
