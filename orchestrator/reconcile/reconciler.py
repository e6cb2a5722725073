"""One reconcile run: snapshot the DB, survey the hosts, find drift, repair by policy.

Repairs run concurrently, each in its own transaction, and one that fails is reported
as failed without stopping the others (a host that breaks mid-run fails its own
repairs only). The snapshot is read before the survey, so a server created meanwhile
is at worst not looked at this run; it is never mistaken for an orphan, because an
unknown domain is only reported by default.
"""

from __future__ import annotations

import asyncio
import time
import uuid as uuidlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import col, delete, select

from orchestrator.conductor import journal, lifecycle, migration_records, recovery
from orchestrator.conductor.actions import finish_action, record_event, record_fault, start_action
from orchestrator.conductor.hosts import apply_facts, target_of
from orchestrator.conductor.manager import Conductor
from orchestrator.db.models import (
    OPEN_MIGRATIONS,
    AgentJob,
    Allocation,
    Host,
    Image,
    Instance,
    Migration,
    MigrationStatus,
    PowerState,
    VmState,
    Volume,
    VolumeSnapshot,
    utcnow,
)
from orchestrator.errors import HerdError
from orchestrator.reconcile.config import ReconcileConfig
from orchestrator.reconcile.drift import Finding, OpenTask, Snapshot, detect
from orchestrator.reconcile.findings import Skipped
from orchestrator.reconcile.survey import HostSurvey, survey_hosts
from orchestrator.reconcile.volume_repairs import VolumeRepairs
from orchestrator.rpc.agent_api import AgentAPI
from orchestrator.scheduler.claims import release

EXIT_CLEAN, EXIT_FIXED, EXIT_UNFIXED = 0, 1, 2
REAP_TIMEOUT = 120.0


@dataclass
class RunReport:
    findings: list[Finding]
    surveys: list[HostSurvey]
    duration: float
    dry_run: bool
    instance_states: dict[str, int] = field(default_factory=dict)
    host_states: dict[str, int] = field(default_factory=dict)

    @property
    def unreachable(self) -> list[str]:
        return [s.host.name for s in self.surveys if not s.ok]

    @property
    def warnings(self) -> list[str]:
        """What hosts answered around: files they could not read and skipped."""
        return [w for s in self.surveys for w in s.warnings]

    @property
    def exit_code(self) -> int:
        """0 all well; 1 drift found and all of it fixed; 2 drift left (by policy, a
        failed repair or a dry run), a host that did not answer, or a host file that
        could not be read (someone must repair it)."""
        if self.unreachable or self.warnings or any(f.outcome != "fixed" for f in self.findings):
            return EXIT_UNFIXED
        return EXIT_FIXED if self.findings else EXIT_CLEAN

    def to_dict(self) -> dict[str, Any]:
        return {
            "exit_code": self.exit_code,
            "dry_run": self.dry_run,
            "duration_seconds": round(self.duration, 3),
            "hosts": {s.host.name: "ok" if s.ok else s.error for s in self.surveys},
            "findings": [f.to_dict() for f in self.findings],
            "warnings": self.warnings,
            "instances": self.instance_states,
        }


RECOVERED = {"done": "finished forward", "rolled_back": "rolled back", "waits": "left open"}


def _recovered(done: recovery.Recovery) -> Finding:
    """A recovered task as a finding: fixed when it ended on one side or the other."""
    return Finding(
        "orphaned_task",
        f"{done.kind} stopped at step {done.step}: {RECOVERED.get(done.outcome, done.outcome)}",
        "recover",
        server=done.server,
        uuid=done.uuid,
        outcome="fixed" if done.outcome in ("done", "rolled_back") else "failed",
        error=done.detail if done.outcome != "done" else None,
    )


class Reconciler:
    def __init__(self, conductor: Conductor, config: ReconcileConfig) -> None:
        self.conductor = conductor
        self.db = conductor.db
        self.pool = conductor.pool
        self.agent = AgentAPI(self.pool)
        self.config = config
        self.volumes = VolumeRepairs(conductor, self.agent)

    async def run(self, *, dry_run: bool = False) -> RunReport:
        started = time.monotonic()
        # Tasks whose runner died are finished or undone first, by their step's rule,
        # so the survey below sees the fleet as they left it; one still open (a host
        # did not answer) keeps its domains out of reach of the repairs.
        recovered = await self._recover(dry_run)
        snapshot = await self._snapshot()
        hosts = list(snapshot.hosts.values())
        surveys = await survey_hosts(
            self.pool,
            hosts,
            self.config.host_timeout,
            with_cache=self.config.image_cache_max_age_hours is not None,
            concurrency=self.config.survey_concurrency,
        )
        findings = [*recovered, *detect(snapshot, surveys, self.config)]
        quiet = [f for f in findings if f.data.get("quiet")]
        findings = [f for f in findings if not f.data.get("quiet")]
        if dry_run:
            for finding in findings:
                finding.outcome = "would fix" if finding.wants_fix else "unfixed"
        else:
            await self._record_heartbeats(surveys)
            # A recovered task's finding already says how its recovery ended: no repair.
            done = {id(f) for f in recovered}
            repairs = [f for f in [*quiet, *findings] if id(f) not in done]
            await asyncio.gather(*(self._repair(f, snapshot) for f in repairs))
        report = RunReport(findings, surveys, time.monotonic() - started, dry_run)
        report.instance_states, report.host_states = await self._census()
        return report

    async def _recover(self, dry_run: bool) -> list[Finding]:
        if dry_run:
            return [
                Finding(
                    "orphaned_task",
                    f"{t.kind} stopped at step {t.step}: would recover",
                    "recover",
                    uuid=t.instance_uuid,
                    outcome="would fix",
                )
                for t in await journal.orphans(self.db)
            ]
        return [_recovered(r) for r in await recovery.recover(self.conductor)]

    async def _snapshot(self) -> Snapshot:
        async with self.db.read() as db:
            hosts = {h.id: h for h in (await db.exec(select(Host))).all() if h.id is not None}
            instances = list((await db.exec(select(Instance))).all())
            allocations = list((await db.exec(select(Allocation))).all())
            jobs = list(
                (await db.exec(select(AgentJob).where(col(AgentJob.collected_at).is_(None)))).all()
            )
            names: dict[str, list[str]] = {}
            pinned: set[tuple[str, str]] = set()
            for image in (await db.exec(select(Image))).all():
                if image.sha256:
                    names.setdefault(image.sha256, []).append(image.name)
                if image.sha256 and image.source.startswith("cache://"):
                    pinned.add((image.source.removeprefix("cache://"), image.sha256))
            migrations = (
                await db.exec(
                    select(Migration.uuid).where(col(Migration.status).in_(OPEN_MIGRATIONS))
                )
            ).all()
            volumes = list((await db.exec(select(Volume))).all())
            snapshots = list((await db.exec(select(VolumeSnapshot))).all())
        # After recovery: a task it left open (a host did not answer) is held too. Its
        # runner is then this process, alive, so the task is not taken for stuck either.
        judge = journal.Runner.here()
        tasks = [OpenTask.of(t, live=not judge.gone(t)) for t in await journal.open_tasks(self.db)]
        return Snapshot(
            hosts, instances, allocations, jobs, names, migration_claims=frozenset(migrations),
            volume_claims=frozenset([*(v.uuid for v in volumes), *(s.uuid for s in snapshots)]),
            open_tasks=tasks, volumes=volumes,
            pinned_images=frozenset(pinned),
            live_volume_owners=frozenset(
                v.uuid for v in volumes if v.task_owner and journal.owner_alive(v.task_owner)
            ),
            volume_snapshots=snapshots,
            live_snapshot_owners=frozenset(
                s.uuid for s in snapshots if s.task_owner and journal.owner_alive(s.task_owner)
            ),
        )  # fmt: skip

    async def _census(self) -> tuple[dict[str, int], dict[str, int]]:
        async with self.db.read() as db:
            states = Counter(
                (
                    await db.exec(
                        select(Instance.vm_state).where(Instance.vm_state != VmState.DELETED)
                    )
                ).all()
            )
            hosts = Counter(h.status for h in (await db.exec(select(Host))).all())
        return dict(states), dict(hosts)

    async def _record_heartbeats(self, surveys: list[HostSurvey]) -> None:
        async with self.db.session() as db:
            for survey in surveys:
                host = await db.get(Host, survey.host.id)
                if host is None:
                    continue
                if survey.ok:
                    apply_facts(host, survey.facts, survey.agent_version)
                    host.missed_surveys, host.marked_down = 0, False
                else:
                    host.missed_surveys += 1
                    host.last_error = survey.error
                    if host.missed_surveys >= self.config.down_after:
                        host.marked_down = True
                    host.updated_at = utcnow()
                db.add(host)

    async def _repair(self, finding: Finding, snapshot: Snapshot) -> None:
        if not finding.wants_fix:
            finding.outcome = "unfixed"
            return
        try:
            await self._fix(finding, snapshot)
        except Skipped as why:
            finding.outcome, finding.error = "skipped", str(why)
        except HerdError as exc:
            finding.outcome, finding.error = "failed", str(exc)
        else:
            finding.outcome = "fixed"

    async def _fix(self, finding: Finding, snapshot: Snapshot) -> None:
        kind = finding.kind
        if kind in ("host_up", "host_down"):
            return  # the heartbeat already recorded it
        if kind == "finished_job":
            await self.conductor.apply_job(finding.data["job_id"], finding.data["record"])
        elif kind == "stuck_build":
            instance = await self._instance(finding.uuid)
            message = f"build stuck: {finding.detail} (found by reconcile)"
            try:
                await self.conductor.fail(
                    instance, message, event="build", host=finding.host,
                    abandoned=finding.data["seen"],
                )  # fmt: skip
            except lifecycle.TaskTaken:
                raise Skipped("the server's task moved on since the survey; left alone") from None
        elif kind == "stuck_task":
            await self._clear_task(finding)
        elif kind in ("power_state", "power_seen"):
            await self._fix_power(finding)
        elif kind in ("deleted_running", "unknown_domain"):
            await self._remove_domain(finding)
        elif kind == "missing_domain":
            await self._missing_domain(finding)
        elif kind == "claim" and finding.data["action"] == "create_volume":
            await self.volumes.create_claim(finding)
        elif kind == "claim":
            await self._fix_claim(finding)
        elif kind in self.volumes.repairs:
            await self.volumes.fix(finding)
        elif kind == "stale_image":
            host = self._host_named(snapshot, finding.host)
            await self.agent.image_remove(target_of(host), finding.data["sha256"])
        else:
            raise HerdError(f"no repair for {kind}")

    @staticmethod
    def _host_named(snapshot: Snapshot, name: str | None) -> Host:
        return next(h for h in snapshot.hosts.values() if h.name == name)

    async def _instance(self, instance_uuid: str | None) -> Instance:
        async with self.db.read() as db:
            row = (await db.exec(select(Instance).where(Instance.uuid == instance_uuid))).first()
        if row is None:
            raise HerdError(f"server {instance_uuid} vanished from the database")
        return row

    async def _target(self, host_name: str | None) -> Any:
        async with self.db.read() as db:
            host = (await db.exec(select(Host).where(Host.name == host_name))).first()
        if host is None:
            raise HerdError(f"host {host_name} vanished from the database")
        return target_of(host)

    async def _skip_if_held(self, finding: Finding) -> None:
        """Checked again right before a host is acted on: a task opened since the
        snapshot may own this domain."""
        async with self.db.read() as db:
            host = (await db.exec(select(Host).where(Host.name == finding.host))).first()
        for task in await journal.open_tasks(self.db, finding.uuid):
            if host is not None and host.id in (task.source_host_id, task.dest_host_id):
                raise Skipped(f"open task {task.id} ({task.kind}) began since the survey")

    async def _fix_power(self, finding: Finding) -> None:
        power = finding.data["power"]
        if (await self._instance(finding.uuid)).task_state is not None:
            raise Skipped("an action began on the server since the survey; left alone")
        if finding.policy == "restore":
            await self._skip_if_held(finding)
            action = "start" if finding.data["domain"] == "stopped" else "stop"
            await self.agent.domain_power(await self._target(finding.host), finding.uuid, action)
            return
        async with self.db.session() as db:
            row = (await db.exec(select(Instance).where(Instance.uuid == finding.uuid))).one()
            if row.task_state is not None:
                # Checked again under the write: an action may have begun since the read.
                raise Skipped("an action began on the server since the survey; left alone")
            row.power_state = power
            if finding.kind == "power_state":
                row.vm_state = VmState.STOPPED if power != PowerState.RUNNING else VmState.ACTIVE
                action = await start_action(db, row.uuid, "power_sync", f"req-{uuidlib.uuid4()}")
                await record_event(db, action.id, "reconcile", True, finding.host, finding.detail)
                await finish_action(db, action.id)
            row.updated_at = utcnow()
            db.add(row)

    async def _remove_domain(self, finding: Finding) -> None:
        # The snapshot is a few seconds old: a server created, or moved here, since
        # then must not be mistaken for an orphan. Read it again right before acting.
        async with self.db.read() as db:
            row = (await db.exec(select(Instance).where(Instance.uuid == finding.uuid))).first()
            host = (await db.exec(select(Host).where(Host.name == finding.host))).first()
        if (
            row is not None
            and host is not None
            and row.vm_state != VmState.DELETED
            and row.host_id == host.id
        ):
            raise Skipped("the server changed in the database meanwhile; left alone")
        await self._skip_if_held(finding)
        target = await self._target(finding.host)
        if finding.policy == "shutdown":
            await self.agent.domain_power(target, finding.uuid, "stop")
            return
        job_id = f"reconcile-{uuidlib.uuid4()}"
        await self.agent.delete(target, finding.uuid, job_id=job_id)
        record = await self.agent.job_wait(target, job_id, REAP_TIMEOUT)
        await self.agent.job_forget(target, job_id)
        if record.get("state") != "succeeded":
            raise HerdError(f"reaping failed: {(record.get('error') or {}).get('message')}")

    async def _clear_task(self, finding: Finding) -> None:
        """The task was abandoned: clear it (with a fault saying so) so the server can
        be acted on again; the power-state rule then records what the host really has.
        The one place herd ends a task it did not take, and only the task as surveyed:
        one that took a step since, or was taken anew, is alive."""
        async with self.db.session() as db:
            row = await lifecycle.take_over(db, finding.uuid or "", finding.data["seen"])
            if row is None:
                raise Skipped("the server's task moved on since the survey; left alone")
            message = f"task {row.task_state} abandoned: {finding.detail} (cleared by reconcile)"
            record_fault(db, row.uuid, message, host=finding.host)
            lifecycle.end_task(row)
            db.add(row)
            # A resize killed half-way: its old claim goes back to the server, which the
            # DB still places on the source; the domain rules then judge what is there.
            for migration in (
                await db.exec(
                    select(Migration).where(
                        Migration.instance_uuid == row.uuid,
                        Migration.status == MigrationStatus.MIGRATING,
                    )
                )
            ).all():
                await migration_records.give_back(
                    db, row.uuid, migration.uuid, MigrationStatus.ERROR
                )

    async def _missing_domain(self, finding: Finding) -> None:
        async with self.db.session() as db:
            row = (await db.exec(select(Instance).where(Instance.uuid == finding.uuid))).one()
            if row.task_state is not None:  # an action began since the survey: its business
                raise Skipped("the server changed in the database meanwhile; left alone")
            row.vm_state, row.power_state = VmState.ERROR, PowerState.NOSTATE
            row.updated_at = utcnow()
            record_fault(db, row.uuid, f"{finding.detail} (found by reconcile)", host=finding.host)
            await release(db, row.uuid)
            db.add(row)

    async def _fix_claim(self, finding: Finding) -> None:
        action = finding.data["action"]
        async with self.db.session() as db:
            if action == "release":
                await db.exec(
                    delete(Allocation).where(col(Allocation.instance_uuid) == finding.uuid)
                )  # type: ignore[call-overload]
                return
            row = (await db.exec(select(Instance).where(Instance.uuid == finding.uuid))).one()
            host = await db.get(Host, row.host_id)
            if host is None:
                raise HerdError(f"server {row.name} is on a host that no longer exists")
            claim = (
                await db.exec(select(Allocation).where(Allocation.instance_uuid == row.uuid))
            ).first()
            if claim is None:
                claim = Allocation(
                    instance_uuid=row.uuid,
                    host_id=host.id,  # type: ignore[arg-type]
                    vcpus=row.vcpus,
                    ram_mb=row.ram_mb,
                    disk_gb=row.disk_gb,
                    created_at=utcnow(),
                )
            else:
                old = await db.get(Host, claim.host_id)
                if old is not None:
                    old.generation += 1  # a concurrent claim on the old view retries
                    db.add(old)
                claim.host_id = host.id  # type: ignore[assignment]
            host.generation += 1
            db.add(host)
            db.add(claim)
