"""The live-migration workflow around its reachability check: a pair that fails it
prepares nothing; the scheduler's next choice is checked; the checked ports are used."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from sqlmodel import select

from orchestrator.conductor.manager import Conductor
from orchestrator.conductor.migration_reach import Ports
from orchestrator.conductor.tasks import live_migrate as live_migration
from orchestrator.conductor.tasks.live_migrate import LiveMigrateTask
from orchestrator.db.engine import Database
from orchestrator.db.models import (
    Allocation,
    Host,
    Image,
    Instance,
    InstanceFault,
    PowerState,
    VmState,
)
from orchestrator.rpc.ssh import HostTarget
from tests.unit.conftest import AddHost
from tests.unit.orchestrator.fakepool import FakePool


class Pool(FakePool):
    """A FakePool that keeps each job's args and lends sessions a connection."""

    def __init__(self) -> None:
        super().__init__()
        self.args: dict[tuple[str, str], dict[str, Any]] = {}

    async def session(self, target: HostTarget) -> Any:
        return SimpleNamespace(conn=None, **vars(await super().session(target)))

    async def run(
        self, target: HostTarget, op: str, args: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        self.args[(target.name, op)] = args
        return await super().run(target, op, args, timeout)


@pytest.fixture
def blocked(monkeypatch: pytest.MonkeyPatch) -> tuple[set[str], list[str]]:
    """Destinations the check refuses (filled by the test), and every one it checked."""
    refused: set[str] = set()
    checked: list[str] = []

    async def check(pool: Any, source: HostTarget, dest: HostTarget) -> Ports | str:
        checked.append(dest.name)
        if dest.name in refused:
            return f"{source.name} cannot reach {dest.name} at 127.0.0.1 on migration ports"
        return Ports(49160, 49161)

    @contextlib.asynccontextmanager
    async def tunnel(*args: Any) -> AsyncIterator[str]:
        yield "qemu+unix:///system?socket=x"

    monkeypatch.setattr(live_migration.migration_reach, "check", check)
    monkeypatch.setattr(live_migration, "libvirt_tunnel", tunnel)
    return refused, checked


@pytest.fixture
async def server(db: Database, add_host: AddHost, catalog: None) -> Instance:
    """Server s, active on hv1 with its claim; hv2 and hv3 are free."""
    hv1 = await add_host("hv1")
    await add_host("hv2")
    await add_host("hv3")
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
    async with db.session() as session:
        row = (await session.exec(select(Instance))).one()
        row.task_state = None
        session.add(row)
    return row


async def where(db: Database) -> tuple[Any, ...]:
    async with db.session() as session:
        row = (await session.exec(select(Instance))).one()
        host = await session.get(Host, row.host_id)
        claims = (await session.exec(select(Allocation))).all()
        faults = (await session.exec(select(InstanceFault))).all()
        names = {h.id: h.name for h in (await session.exec(select(Host))).all()}
    return (
        host.name if host else None,
        row.vm_state,
        row.task_state,
        sorted(names[c.host_id] for c in claims),
        [f.message for f in faults],
    )


async def test_a_destination_the_source_cannot_reach_is_refused_before_anything_is_prepared(
    db: Database, server: Instance, blocked: tuple[set[str], list[str]]
) -> None:
    blocked[0].add("hv2")
    pool = Pool()
    outcome = await LiveMigrateTask(Conductor(db, pool), server, "hv2").execute()
    assert outcome.failed_at == "schedule"
    assert "cannot live-migrate s from hv1: hv2: hv1 cannot reach hv2" in (outcome.error or "")
    assert [op for op in pool.ops() if op in ("build", "live_migrate")] == []
    host, vm_state, task_state, claims, faults = await where(db)
    assert (host, vm_state, task_state, claims) == ("hv1", VmState.ACTIVE, None, ["hv1"])
    assert any("hv1 cannot reach hv2" in f for f in faults), faults


async def test_the_next_choice_is_checked_and_the_migration_uses_the_ports_it_passed_on(
    db: Database, server: Instance, blocked: tuple[set[str], list[str]]
) -> None:
    refused, checked = blocked
    refused.add("hv2")
    pool = Pool()
    outcome = await LiveMigrateTask(Conductor(db, pool), server).execute()
    assert outcome.error is None, outcome
    assert checked[-1] == "hv3" and set(checked) <= {"hv2", "hv3"}
    assert ("hv2", "build") not in pool.args
    args = pool.args[("hv1", "live_migrate")]
    assert (args["port"], args["disks_port"]) == (49160, 49161)
    host, vm_state, task_state, claims, _ = await where(db)
    assert (host, vm_state, task_state, claims) == ("hv3", VmState.ACTIVE, None, ["hv3"])
