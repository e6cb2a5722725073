"""Reconcile never fixes what an open journal task may own: each kind of finding on a
host the task names (or a claim it holds) is reported as held, and fixed as before once
the task's row is closed."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from sqlmodel import select

from orchestrator.conductor import recovery
from orchestrator.conductor.journal import Runner
from orchestrator.db.engine import Database
from orchestrator.db.models import (
    AgentJob,
    Allocation,
    Host,
    Instance,
    PowerState,
    TaskRecord,
    TaskRecordState,
    VmState,
    utcnow,
)
from orchestrator.reconcile import reconciler as reconciler_module
from orchestrator.reconcile.config import ReconcileConfig
from orchestrator.reconcile.drift import HELD, Finding, OpenTask, Snapshot, detect
from orchestrator.reconcile.reconciler import Reconciler
from orchestrator.reconcile.survey import HostSurvey
from tests.unit.orchestrator.test_drift import H1, H2, claim, server, survey

LONG_AGO = datetime.now(UTC) - timedelta(hours=2)


def task(
    uuid: str = "u-a",
    *,
    source: Host | None = H1,
    dest: Host | None = H2,
    live: bool = False,
    kind: str = "live_migrate",
    step: str = "switch",
    migration: str | None = None,
) -> OpenTask:
    record = TaskRecord(
        id=7, kind=kind, instance_uuid=uuid, step=step, migration_uuid=migration,
        source_host_id=source.id if source else None, dest_host_id=dest.id if dest else None,
        claims={"source": migration, "dest": uuid} if migration else {},
        runner_host="ops1", runner_pid=1, runner_boot_id="b", runner_started=1,
    )  # fmt: skip
    return OpenTask.of(record, live=live)


def found(
    instances: Sequence[Instance],
    surveys: Sequence[HostSurvey],
    tasks: Sequence[OpenTask] = (),
    *,
    allocations: Sequence[Allocation] = (),
    jobs: Sequence[AgentJob] = (),
    config: ReconcileConfig = ReconcileConfig(),
) -> list[Finding]:
    snapshot = Snapshot(
        {1: H1, 2: H2}, instances, list(allocations), list(jobs), {}, now=time.time(),
        open_tasks=list(tasks),
    )  # fmt: skip
    return detect(snapshot, surveys, config)


def one(findings: list[Finding], kind: str) -> Finding:
    (match,) = [f for f in findings if f.kind == kind]
    return match


def test_a_live_migrations_destination_copy_is_held_not_reaped() -> None:
    a = server("a", "u-a")
    surveys = [survey(H1, {"u-a": "running"}), survey(H2, {"u-a": "paused"})]
    held = one(found([a], surveys, [task()], allocations=[claim(a)]), "deleted_running")
    assert (held.host, held.policy, held.wants_fix) == ("hv2", HELD, False)
    assert held.detail.endswith("held by open task 7 (live_migrate, step switch)")
    assert held.to_dict()["held_by"] == 7
    free = one(found([a], surveys, allocations=[claim(a)]), "deleted_running")
    assert (free.policy, free.wants_fix, free.to_dict()["held_by"]) == ("reap", True, None)


def test_a_domain_on_a_host_the_task_does_not_name_is_reaped_as_before() -> None:
    a = server("a", "u-a")
    surveys = [survey(H1, {"u-a": "running"}), survey(H2, {"u-a": "running"})]
    elsewhere = task(source=H1, dest=None)
    assert one(
        found([a], surveys, [elsewhere], allocations=[claim(a)]), "deleted_running"
    ).policy == ("reap")


def test_a_deleted_servers_domain_and_an_unknown_one_are_held_on_the_tasks_hosts() -> None:
    gone = server("gone", "u-a", vm_state=VmState.DELETED)
    surveys = [survey(H1, {"u-a": "running", "u-x": "running"})]
    config = ReconcileConfig(unknown_domains="reap")
    held = found([gone], surveys, [task(), task("u-x")], config=config)
    assert [(f.kind, f.policy) for f in held] == [
        ("deleted_running", HELD),
        ("unknown_domain", HELD),
    ]
    free = found([gone], surveys, config=config)
    assert [(f.kind, f.policy) for f in free] == [
        ("deleted_running", "reap"),
        ("unknown_domain", "reap"),
    ]


def test_power_drift_is_neither_restored_nor_recorded_under_an_open_task() -> None:
    a = server("a", "u-a")
    config = ReconcileConfig(power_state="restore")
    surveys = [survey(H1, {"u-a": "shutoff"}), survey(H2)]
    held = one(found([a], surveys, [task()], allocations=[claim(a)], config=config), "power_state")
    assert (held.policy, held.wants_fix) == (HELD, False)
    free = found([a], surveys, allocations=[claim(a)], config=config)
    assert one(free, "power_state").policy == "restore"
    # The quiet record of a power state seen is held too: the task writes it.
    b = server("b", "u-a", power_state=PowerState.PAUSED)
    quiet = one(found([b], [survey(H1, {"u-a": "running"})], [task()]), "power_seen")
    assert (quiet.policy, quiet.wants_fix) == (HELD, False)
    assert one(found([b], [survey(H1, {"u-a": "running"})]), "power_seen").wants_fix


def test_a_missing_domain_is_not_marked_error_under_an_open_task() -> None:
    a = server("a", "u-a")
    surveys = [survey(H1), survey(H2, {"u-a": "running"})]
    held = one(found([a], surveys, [task()], allocations=[claim(a)]), "missing_domain")
    assert held.policy == HELD
    assert one(found([a], surveys, allocations=[claim(a)]), "missing_domain").policy == "fix"


def test_a_finished_job_of_the_tasks_server_is_left_to_its_runner() -> None:
    a = server("a", "u-a", task_state="rebuild_spawning")
    job = AgentJob(
        id="j1", host_id=1, instance_uuid="u-a", op="build", state="running",
        created_at=LONG_AGO,  # past collect_grace: only the open task holds it
    )  # fmt: skip
    done = {"j1": {"job_id": "j1", "state": "succeeded", "result": {}}}
    surveys = [survey(H1, {"u-a": "running"}, done)]
    rebuild = task(kind="rebuild", step="cast", dest=None)
    assert one(found([a], surveys, [rebuild], jobs=[job]), "finished_job").policy == HELD
    assert one(found([a], surveys, jobs=[job]), "finished_job").policy == "fix"


def test_a_stuck_task_is_held_while_it_waits_for_recovery_and_not_stuck_while_it_runs() -> None:
    a = server("a", "u-a", task_state="migrating", updated_at=LONG_AGO)
    surveys = [survey(H1, {"u-a": "running"}), survey(H2)]
    waiting = one(found([a], surveys, [task()], allocations=[claim(a)]), "stuck_task")
    assert waiting.policy == HELD
    assert [f.kind for f in found([a], surveys, [task(live=True)], allocations=[claim(a)])] == []
    assert one(found([a], surveys, allocations=[claim(a)]), "stuck_task").policy == "fix"


def test_a_stuck_build_under_an_open_task_is_held() -> None:
    a = server("a", "u-a", vm_state=VmState.BUILDING, task_state="spawning", updated_at=LONG_AGO)
    evacuate = task(kind="evacuate", step="prepare", source=None, dest=H1)
    assert one(found([a], [survey(H1)], [evacuate]), "stuck_build").policy == HELD
    assert one(found([a], [survey(H1)]), "stuck_build").policy == "fix"


def test_the_claims_a_task_holds_are_not_released_moved_or_made() -> None:
    a = server("a", "u-a", host=H2)
    # The source's claim under the migration's uuid (its migration row already closed),
    # and the server's on the source while the DB places it on the destination.
    allocations = [
        Allocation(instance_uuid="m-1", host_id=1, vcpus=1, ram_mb=64, disk_gb=1),
        claim(a, H1),
    ]
    surveys = [survey(H1), survey(H2, {"u-a": "running"})]
    migrate = task(kind="migrate", step="cleanup_source", migration="m-1")
    held = [f for f in found([a], surveys, [migrate], allocations=allocations) if f.kind == "claim"]
    assert [(f.uuid, f.data["action"], f.policy) for f in held] == [
        ("m-1", "release", HELD),
        ("u-a", "move", HELD),
    ]
    free = [f for f in found([a], surveys, allocations=allocations) if f.kind == "claim"]
    assert [(f.uuid, f.policy) for f in free] == [("m-1", "fix"), ("u-a", "fix")]
    unclaimed = one(found([a], surveys, [migrate]), "claim")
    assert (unclaimed.data["action"], unclaimed.policy) == ("create", HELD)
    assert one(found([a], surveys), "claim").policy == "fix"


# The reconciler itself: nothing reaches the host while the row is open.


class FakeAgent:
    """The agent ops a reap and a power restore use, recorded instead of sent."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    async def delete(self, target: Any, uuid: str, *, job_id: str) -> None:
        self.calls.append(("delete", target.name, uuid))

    async def job_wait(self, target: Any, job_id: str, timeout: float) -> dict[str, Any]:
        return {"state": "succeeded"}

    async def job_forget(self, target: Any, job_id: str) -> None:
        return None

    async def domain_power(self, target: Any, uuid: str, action: str) -> None:
        self.calls.append((action, target.name, uuid))


async def lab(db: Database) -> tuple[Host, Host, Instance]:
    async with db.session() as session:
        hv1, hv2 = Host(name="hv1", address="127.0.0.1"), Host(name="hv2", address="127.0.0.2")
        session.add_all([hv1, hv2])
    async with db.session() as session:
        row = Instance(
            uuid="u-a", name="a", flavor_name="f", vcpus=1, ram_mb=64, disk_gb=1,
            image_name="i", host_id=hv1.id, vm_state=VmState.ACTIVE,
            power_state=PowerState.RUNNING,
        )  # fmt: skip
        session.add(row)
        session.add(Allocation(instance_uuid="u-a", host_id=hv1.id, vcpus=1, ram_mb=64, disk_gb=1))
    async with db.session() as session:  # a None in the constructor meets the column default
        row = (await session.exec(select(Instance))).one()
        row.task_state = None
        session.add(row)
    return hv1, hv2, row


async def open_row(db: Database, runner: Runner, source: Host, dest: Host) -> TaskRecord:
    record = TaskRecord(
        kind="live_migrate", instance_uuid="u-a", step="live_migrate",
        source_host_id=source.id, dest_host_id=dest.id, runner_host=runner.host,
        runner_pid=runner.pid, runner_boot_id=runner.boot_id, runner_started=runner.started,
        heartbeat_at=utcnow(),
    )  # fmt: skip
    async with db.session() as session:
        session.add(record)
    return record


async def close_row(db: Database, record: TaskRecord) -> None:
    async with db.session() as session:
        row = await session.get(TaskRecord, record.id)
        assert row is not None
        row.state = TaskRecordState.DONE
        session.add(row)


@pytest.mark.parametrize("runner_alive", [True, False], ids=["runner alive", "runner gone"])
async def test_reconcile_leaves_the_destination_copy_until_the_task_closes(
    db: Database, monkeypatch: pytest.MonkeyPatch, runner_alive: bool
) -> None:
    hv1, hv2, _ = await lab(db)
    here = Runner.here()
    runner = here if runner_alive else Runner(here.host, here.pid, "another-boot", here.started)
    record = await open_row(db, runner, hv1, hv2)

    async def surveys(pool: Any, hosts: list[Host], *args: Any, **kw: Any) -> list[HostSurvey]:
        by_name = {"hv1": {"u-a": "running"}, "hv2": {"u-a": "paused"}}
        return [survey(h, by_name[h.name]) for h in hosts]

    async def nothing_recovered(conductor: Any, uuids: Any = None) -> list[recovery.Recovery]:
        return []  # as when a host did not answer: the task stays open

    monkeypatch.setattr(reconciler_module, "survey_hosts", surveys)
    monkeypatch.setattr(recovery, "recover", nothing_recovered)
    config = ReconcileConfig(power_state="restore")
    reconciler = Reconciler(SimpleNamespace(db=db, pool=None), config)  # type: ignore[arg-type]
    agent = FakeAgent()
    reconciler.agent = agent  # type: ignore[assignment]

    report = await reconciler.run()
    (held,) = [f for f in report.findings if f.kind == "deleted_running"]
    assert (held.host, held.outcome, held.policy) == ("hv2", "unfixed", HELD)
    assert f"held by open task {record.id} (live_migrate, step live_migrate)" in held.detail
    assert agent.calls == [] and report.exit_code == 2

    await close_row(db, record)
    report = await reconciler.run()
    (reaped,) = [f for f in report.findings if f.kind == "deleted_running"]
    assert (reaped.outcome, reaped.policy) == ("fixed", "reap")
    assert agent.calls == [("delete", "hv2", "u-a")]
