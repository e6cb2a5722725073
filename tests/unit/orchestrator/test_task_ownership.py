"""A command only ever moves on or ends the task it took, and a delete never lands in the
middle of a move. Two database handles play two herd processes on one database."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlmodel import select

from orchestrator.api import servers as servers_api
from orchestrator.conductor.manager import Conductor
from orchestrator.conductor.tasks.migrate import MigrateTask
from orchestrator.conductor.tasks.power import power
from orchestrator.db.engine import Database, open_database
from orchestrator.db.models import Allocation, Host, Image, Instance, PowerState, VmState
from orchestrator.reconcile.config import ReconcileConfig
from orchestrator.reconcile.drift import Snapshot, _stuck_builds
from orchestrator.reconcile.reconciler import Reconciler, Skipped
from tests.unit.conftest import AddHost
from tests.unit.orchestrator.fakepool import FakePool


@pytest.fixture
async def other(db_url: str) -> AsyncIterator[Database]:
    """A second herd process's handle on the same database."""
    handle = await open_database(db_url)
    yield handle
    await handle.dispose()


@pytest.fixture
async def server(db: Database, add_host: AddHost, catalog: None) -> Instance:
    """Server s, active on hv1 with its claim; hv2 is free to move it to."""
    hv1 = await add_host("hv1")
    await add_host("hv2")
    async with db.session() as session:
        image = (await session.exec(select(Image).where(Image.name == "cirros"))).one()
        session.add(
            Instance(
                uuid="u-s", name="s", flavor_name="small", vcpus=1, ram_mb=1024, disk_gb=10,
                image_name="cirros", image_id=image.id, host_id=hv1.id,
                vm_state=VmState.ACTIVE, power_state=PowerState.RUNNING,
            )
        )  # fmt: skip
        session.add(Allocation(instance_uuid="u-s", host_id=hv1.id, vcpus=1, ram_mb=1024,
                               disk_gb=10))  # fmt: skip
    async with db.session() as session:  # a None in the constructor meets the column default
        row = (await session.exec(select(Instance))).one()
        row.task_state = None
        session.add(row)
    return row


async def state(db: Database, uuid: str = "u-s") -> Instance:
    async with db.session() as session:
        return (await session.exec(select(Instance).where(Instance.uuid == uuid))).one()


async def host_name(db: Database, host_id: int | None) -> str | None:
    async with db.session() as session:
        host = await session.get(Host, host_id)
    return host.name if host else None


async def test_a_failed_delete_leaves_a_running_migration_its_task(
    db: Database, other: Database, server: Instance
) -> None:
    mover_pool = FakePool()
    mover_pool.gate("power")  # hold the migration while it stops the source
    migration = asyncio.create_task(MigrateTask(Conductor(db, mover_pool), server).execute())
    await mover_pool.arrived("power")
    try:
        assert (await state(db)).task_state == "migrating"
        elsewhere = Conductor(other, FakePool(unreachable=("hv1",)))
        (deleted,) = await elsewhere.delete([server])
        assert deleted.error
        assert (await state(db)).task_state == "migrating"
        second = await MigrateTask(elsewhere, server).execute()
        assert second.failed_at == "guard" and "task_state migrating" in (second.error or "")
    finally:
        mover_pool.open("power")
        moved = await migration
    assert moved.error is None and moved.host == "hv2"
    row = await state(db)
    assert (row.vm_state, row.task_state, await host_name(db, row.host_id)) == (
        VmState.ACTIVE,
        None,
        "hv2",
    )


async def test_a_delete_during_a_cold_migration_is_refused_and_the_move_finishes(
    db: Database, other: Database, server: Instance
) -> None:
    mover_pool = FakePool()
    mover_pool.gate("build")  # hold it just before it starts the server on hv2
    migration = asyncio.create_task(MigrateTask(Conductor(db, mover_pool), server).execute())
    await mover_pool.arrived("build")
    deleter_pool = FakePool()
    try:
        (deleted,) = await Conductor(other, deleter_pool).delete([server])
    finally:
        mover_pool.open("build")
        moved = await migration
    assert deleted.failed_at == "guard"
    assert "cannot delete server s while migrate" in (deleted.error or "")
    assert "task_state migrating" in (deleted.error or "")
    assert deleter_pool.ops() == []  # nothing was asked of any host
    assert moved.error is None
    row = await state(db)
    assert (row.vm_state, await host_name(db, row.host_id)) == (VmState.ACTIVE, "hv2")


@pytest.mark.parametrize(
    ("task_state", "deleted"),
    [
        ("migrating", False),  # migrate, live-migrate
        ("resize_prep", False),
        ("resize_confirming", False),
        ("resize_reverting", False),
        ("rebuilding", False),  # rebuild, evacuate
        ("powering-off", True),  # one job on its own host: the delete takes over
        ("rebooting", True),
        ("spawning", True),  # a build notices and stops
        ("deleting", True),  # the host's delete is idempotent
    ],
)
async def test_a_delete_takes_over_builds_and_power_actions_but_never_a_move(
    db: Database, server: Instance, task_state: str, deleted: bool
) -> None:
    async with db.session() as session:
        row = (await session.exec(select(Instance))).one()
        row.task_state = task_state
        session.add(row)
    pool = FakePool()
    (outcome,) = await Conductor(db, pool).delete([server])
    row = await state(db)
    if deleted:
        assert outcome.error is None and row.vm_state == VmState.DELETED
        assert row.task_state is None
    else:
        assert outcome.failed_at == "guard" and f"task_state {task_state}" in (outcome.error or "")
        assert (row.vm_state, row.task_state, pool.ops()) == (VmState.ACTIVE, task_state, [])


async def stuck_findings(db: Database) -> list:
    async with db.session() as session:
        instances = (await session.exec(select(Instance))).all()
    snapshot = Snapshot(hosts={}, instances=instances, allocations=[], open_jobs=[],
                        image_names={}, now=time.time() + 7200)  # fmt: skip
    return _stuck_builds(snapshot, set(), ReconcileConfig(build_timeout=60))


async def test_a_late_failure_never_ends_a_task_another_action_took_since(
    db: Database, other: Database, server: Instance
) -> None:
    """The same task_state, twice: A's stop is abandoned (reconcile clears it), B stops
    the server in turn; A's failure, arriving late, must leave B's task alone. A plain
    `WHERE task_state = 'powering-off'` would not tell them apart."""
    pool_a = FakePool(unreachable=("hv1",))
    pool_a.gate("power")
    stop_a = asyncio.create_task(power(Conductor(db, pool_a), [server], "stop"))
    await pool_a.arrived("power")
    (finding,) = await stuck_findings(db)
    reconciler = Reconciler(Conductor(other, FakePool()), ReconcileConfig())
    await reconciler._clear_task(finding)
    pool_b = FakePool()
    pool_b.gate("follow:power")
    stop_b = asyncio.create_task(power(Conductor(other, pool_b), [server], "stop"))
    await pool_b.arrived("follow:power")
    try:
        pool_a.open("power")
        (failed,) = await stop_a
        assert failed.error
        assert (await state(db)).task_state == "powering-off"  # still B's
    finally:
        pool_b.open("follow:power")
        (stopped,) = await stop_b
    assert stopped.error is None
    row = await state(db)
    assert (row.vm_state, row.task_state) == (VmState.STOPPED, None)


async def test_a_power_result_after_a_delete_took_over_does_not_bring_the_server_back(
    db: Database, other: Database, server: Instance
) -> None:
    pool_a = FakePool()
    pool_a.gate("follow:power")
    stop = asyncio.create_task(power(Conductor(db, pool_a), [server], "stop"))
    await pool_a.arrived("follow:power")
    try:
        (deleted,) = await Conductor(other, FakePool()).delete([server])
        assert deleted.error is None and deleted.vm_state == VmState.DELETED
    finally:
        pool_a.open("follow:power")
        await stop
    row = await state(db)
    assert (row.vm_state, row.task_state) == (VmState.DELETED, None)


async def test_a_build_whose_server_was_deleted_meanwhile_casts_nothing(
    db: Database, add_host: AddHost, catalog: None
) -> None:
    await add_host("hv1")
    request = servers_api.CreateRequest(name="b", flavor="small", image="cirros")
    instances = await servers_api.create_servers(db, request)
    await Conductor(db, FakePool()).delete(instances)  # before it was ever placed
    pool = FakePool()
    await Conductor(db, pool).build(instances)
    assert "build" not in pool.ops()
    async with db.session() as session:
        assert (await session.exec(select(Allocation))).all() == []
    assert (await state(db, instances[0].uuid)).vm_state == VmState.DELETED


async def test_reconcile_clears_an_abandoned_task_but_not_one_that_moved_on(
    db: Database, other: Database, server: Instance
) -> None:
    pool = FakePool()
    pool.gate("follow:power")
    stop = asyncio.create_task(power(Conductor(db, pool), [server], "stop"))
    await pool.arrived("follow:power")
    (finding,) = await stuck_findings(db)
    async with db.session() as session:  # a step taken since the snapshot
        row = (await session.exec(select(Instance))).one()
        row.task_state = "powering-off"
        row.updated_at += timedelta(seconds=1)
        session.add(row)
    reconciler = Reconciler(Conductor(other, FakePool()), ReconcileConfig())
    with pytest.raises(Skipped):
        await reconciler._clear_task(finding)
    assert (await state(db)).task_state == "powering-off"
    (finding,) = await stuck_findings(db)
    await reconciler._clear_task(finding)  # as seen now: abandoned, cleared
    assert (await state(db)).task_state is None
    pool.open("follow:power")
    await stop
    row = await state(db)
    # The stop's late result is its action's record only; reconcile's power-state rule
    # records what the host has.
    assert (row.vm_state, row.task_state) == (VmState.ACTIVE, None)


async def test_a_move_whose_herd_was_killed_is_cleared_by_reconcile_then_the_delete_works(
    db: Database, server: Instance
) -> None:
    pool = FakePool()
    pool.gate("power")
    migration = asyncio.create_task(MigrateTask(Conductor(db, pool), server).execute())
    await pool.arrived("power")
    migration.cancel()  # herd killed half-way: nobody will end its task
    with pytest.raises(asyncio.CancelledError):
        await migration
    (refused,) = await Conductor(db, FakePool()).delete([server])
    assert refused.failed_at == "guard"
    (finding,) = await stuck_findings(db)
    await Reconciler(Conductor(db, FakePool()), ReconcileConfig())._clear_task(finding)
    (deleted,) = await Conductor(db, FakePool()).delete([server])
    assert deleted.error is None and (await state(db)).vm_state == VmState.DELETED


async def test_reconcile_clears_a_task_whose_timestamp_was_written_by_hand(
    db: Database, server: Instance
) -> None:
    """An operator's `UPDATE ... updated_at=datetime('now', '-2 hours')` stores another
    text format than SQLAlchemy's: the task is still the one reconcile saw."""
    by_hand = (
        "now() - interval '2 hours'"  # PostgreSQL's own spelling, a real timestamp there
        if db.engine.dialect.name == "postgresql"
        else "datetime('now', '-2 hours')"
    )
    async with db.session() as session:
        await session.exec(
            text(
                f"UPDATE instances SET task_state='migrating', updated_at={by_hand} WHERE uuid='u-s'"
            )
        )
    (finding,) = await stuck_findings(db)
    await Reconciler(Conductor(db, FakePool()), ReconcileConfig())._clear_task(finding)
    assert (await state(db)).task_state is None


async def test_reconcile_power_sync_checks_the_task_again_under_its_write(
    db: Database, other: Database, server: Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The survey's read saw no task; an action began before reconcile's write. The
    write must see it and leave the server alone, not overwrite its states."""
    from orchestrator.reconcile.drift import Finding

    reconciler = Reconciler(Conductor(other, FakePool()), ReconcileConfig())
    seen_idle = await state(db)  # what the read-only check saw

    async def idle(uuid: str) -> Instance:
        return seen_idle

    monkeypatch.setattr(reconciler, "_instance", idle)
    async with db.session() as session:  # another operator's stop begins meanwhile
        row = (await session.exec(select(Instance))).one()
        row.task_state = "powering-off"
        session.add(row)
    finding = Finding(
        kind="power_state", detail="domain is shut off", policy="fix", host="hv1",
        server="s", uuid="u-s", data={"power": PowerState.SHUTDOWN, "domain": "stopped"},
    )  # fmt: skip
    with pytest.raises(Skipped):
        await reconciler._fix_power(finding)
    row = await state(db)
    assert (row.vm_state, row.power_state, row.task_state) == (
        VmState.ACTIVE, PowerState.RUNNING, "powering-off",
    )  # fmt: skip
