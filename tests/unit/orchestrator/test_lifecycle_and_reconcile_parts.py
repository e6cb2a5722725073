"""Pure parts of the lifecycle and of reconcile: state guards, results, lock, metrics."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlmodel import select

from orchestrator.conductor import lifecycle
from orchestrator.conductor.tasks.live_migrate import incompatibility
from orchestrator.db.engine import Database, open_database
from orchestrator.db.models import Allocation, Host, Instance, Migration, PowerState, VmState
from orchestrator.errors import Conflict
from orchestrator.reconcile import metrics
from orchestrator.reconcile.config import ReconcileConfig
from orchestrator.reconcile.drift import Finding
from orchestrator.reconcile.lock import ReconcileLocked, file_lock, lock_path
from orchestrator.reconcile.reconciler import Reconciler, RunReport
from orchestrator.reconcile.survey import HostSurvey


async def add_server(db: Database, **kw: object) -> Instance:
    fields: dict[str, object] = {"vm_state": VmState.ACTIVE, "task_state": None}
    fields.update(kw)
    async with db.session() as session:
        row = Instance(
            uuid="u-1", name="s", flavor_name="f", vcpus=1, ram_mb=64, disk_gb=1,
            image_name="i", **fields,
        )  # fmt: skip
        session.add(row)
    async with db.session() as session:  # a None in the constructor meets the column default
        row = (await session.exec(select(Instance))).one()
        row.task_state = None
        session.add(row)
    return row


async def test_an_action_is_refused_from_the_wrong_state_with_both_states_named(
    db: Database,
) -> None:
    server = await add_server(db)
    async with db.session() as session:
        with pytest.raises(
            Conflict,
            match=r"cannot start server s: it is vm_state active, task_state none \(needs vm_state stopped",
        ):
            await lifecycle.begin(session, server, "start", action_id=1)
    async with db.session() as session:
        taken = await lifecycle.begin(session, server, "stop", action_id=2)
    assert (taken.task_state, taken.task_action_id) == ("powering-off", 2)
    async with db.session() as session:
        with pytest.raises(Conflict, match="task_state powering-off"):
            await lifecycle.begin(session, server, "reboot", action_id=3)


async def test_two_processes_racing_for_one_server_get_exactly_one_task(db_url: str) -> None:
    setup = await open_database(db_url)
    server = await add_server(setup)
    handles = [await open_database(db_url) for _ in range(6)]

    async def take(handle: Database, action_id: int) -> bool:
        try:
            async with handle.session() as session:
                await lifecycle.begin(session, server, "stop", action_id)
        except Conflict:
            return False
        return True

    try:
        won = await asyncio.gather(*(take(h, n) for n, h in enumerate(handles)))
    finally:
        for handle in [setup, *handles]:
            await handle.dispose()
    assert sorted(won) == [False] * 5 + [True]


@pytest.mark.parametrize(
    ("op", "ok", "state", "expected"),
    [
        ("stop", True, "shutoff", (VmState.STOPPED, PowerState.SHUTDOWN)),
        ("start", True, "running", (VmState.ACTIVE, PowerState.RUNNING)),
        ("pause", True, "paused", (VmState.PAUSED, PowerState.PAUSED)),
        ("suspend", True, "shutoff", (VmState.SUSPENDED, PowerState.SHUTDOWN)),
        ("rebuild", True, "shutoff", (VmState.STOPPED, PowerState.SHUTDOWN)),
        ("evacuate", True, "running", (VmState.ACTIVE, PowerState.RUNNING)),
        ("stop", False, None, (VmState.ACTIVE, PowerState.RUNNING)),  # unchanged
        ("rebuild", False, None, (VmState.ERROR, PowerState.NOSTATE)),
    ],
)
def test_results_land_as_nova_would_record_them(op, ok, state, expected) -> None:
    instance = Instance(
        uuid="u", name="s", flavor_name="f", vcpus=1, ram_mb=1, disk_gb=1, image_name="i",
        vm_state=VmState.ACTIVE, power_state=PowerState.RUNNING, task_state="busy",
    )  # fmt: skip
    lifecycle.apply_result(instance, op, ok, {"state": state} if state else {})
    assert (instance.vm_state, instance.power_state, instance.task_state) == (*expected, None)


def test_the_lock_refuses_a_second_holder_and_names_the_first(tmp_path: Path) -> None:
    path = lock_path(f"sqlite:///{tmp_path / 'herd.db'}")
    assert path == tmp_path / "herd.db.reconcile.lock"
    with (
        file_lock(path),
        pytest.raises(ReconcileLocked, match=r"another herd reconcile is running \(pid \d+"),
        file_lock(path),
    ):
        pass
    with file_lock(path):  # released when the holder let go (or died)
        pass


def test_prometheus_text_is_well_formed_and_written_atomically(tmp_path: Path) -> None:
    host = Host(id=1, name="hv1", address="a")
    report = RunReport(
        findings=[
            Finding("power_state", "x", "record", outcome="fixed"),
            Finding("unknown_domain", "y", "log"),
        ],
        surveys=[HostSurvey(host), HostSurvey(Host(id=2, name="hv2", address="b"), error="down")],
        duration=0.25,
        dry_run=False,
        instance_states={"active": 3, "error": 1},
        host_states={"up": 1, "down": 1},
    )
    text = metrics.render(report, now=1_800_000_000.5)
    samples = dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert samples['herd_reconcile_drift_found{kind="power_state"}'] == "1"
    assert samples['herd_reconcile_drift_fixed{kind="power_state"}'] == "1"
    assert samples['herd_reconcile_drift_fixed{kind="unknown_domain"}'] == "0"
    assert samples['herd_instances{vm_state="active"}'] == "3"
    assert samples['herd_hosts{status="down"}'] == "1"
    assert samples["herd_reconcile_hosts_unreachable"] == "1"
    assert samples["herd_reconcile_exit_code"] == "2"
    assert samples["herd_reconcile_last_run_timestamp_seconds"] == "1800000000.5"
    for name in {k.split("{")[0] for k in samples}:
        assert f"# TYPE {name} gauge" in text
    target = tmp_path / "herd.prom"
    metrics.write_textfile(target, text)
    assert target.read_text() == text and list(tmp_path.iterdir()) == [target]


async def test_reconcile_gives_a_killed_resize_its_old_claim_back(db: Database) -> None:
    """herd killed mid-resize: clearing the abandoned task also closes the migration,
    and the old size's claim returns to the server (which the DB places on its source)."""
    async with db.session() as session:
        host = Host(name="hv1", address="127.0.0.1")
        session.add(host)
    server = await add_server(db, host_id=host.id)
    async with db.session() as session:
        row = (await session.exec(select(Instance))).one()
        row.task_state = "resize_prep"
        session.add(row)
        session.add(Migration(uuid="m-1", instance_uuid=server.uuid, source_host_id=host.id))
        session.add(Allocation(instance_uuid="m-1", host_id=host.id, vcpus=1, ram_mb=64, disk_gb=1))
    reconciler = Reconciler(SimpleNamespace(db=db, pool=None), ReconcileConfig())  # type: ignore[arg-type]
    async with db.session() as session:
        seen = lifecycle.TaskSeen.of((await session.exec(select(Instance))).one())
    finding = Finding(
        "stuck_task", "resize_prep for 60 min", "fix", host="hv1", uuid=server.uuid,
        data={"seen": seen},
    )  # fmt: skip
    await reconciler._clear_task(finding)
    async with db.session() as session:
        (claim,) = (await session.exec(select(Allocation))).all()
        migration = (await session.exec(select(Migration))).one()
        row = (await session.exec(select(Instance))).one()
    assert (claim.instance_uuid, migration.status, row.task_state) == (server.uuid, "error", None)


def test_live_migration_names_why_a_pair_of_hosts_cannot() -> None:
    src = Host(id=1, name="hv1", address="a", domain_type="kvm")
    same = Host(id=2, name="hv2", address="b", domain_type="kvm")
    tcg = Host(id=3, name="hv3", address="c", domain_type="qemu")
    elsewhere = Host(id=4, name="hv4", address="d", domain_type="kvm", agent_dir="/srv/herd")
    assert incompatibility(src, same) is None
    assert "hv1 runs kvm guests and hv3 runs qemu" in (incompatibility(src, tcg) or "")
    assert "agent directories differ" in (incompatibility(src, elsewhere) or "")
    assert incompatibility(src, src) == "it is already there"
