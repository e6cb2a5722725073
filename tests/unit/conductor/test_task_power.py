"""PowerTask against real agents on fake hosts: the domain's state follows."""

from __future__ import annotations

import pytest

from orchestrator.conductor.tasks.power import power
from tests.unit.conductor.herdlab import HerdLab


async def test_stop_then_start_changes_the_domain_and_the_db(lab: HerdLab) -> None:
    server = await lab.boot("s1", host="hv2")
    (stopped,) = await power(lab.conductor, [server], "stop")
    assert stopped.error is None, stopped.error
    row = await lab.server(server.uuid)
    assert (row.vm_state, row.power_state, row.task_state) == ("stopped", "shutdown", None)
    assert lab.where(server.uuid) == {"hv2": "shutoff"}
    (started,) = await power(lab.conductor, [row], "start")
    assert started.error is None, started.error
    row = await lab.server(server.uuid)
    assert (row.vm_state, row.power_state) == ("active", "running")
    assert lab.where(server.uuid) == {"hv2": "running"}
    assert await lab.claims() == [(server.uuid, "hv2", 1)]  # power never moves the claim


async def test_pause_unpause_and_suspend_resume(lab: HerdLab) -> None:
    server = await lab.boot("s1", host="hv1")
    (paused,) = await power(lab.conductor, [server], "pause")
    assert paused.error is None, paused.error
    assert lab.where(server.uuid) == {"hv1": "paused"}
    assert (await lab.server(server.uuid)).vm_state == "paused"
    await power(lab.conductor, [server], "unpause")
    assert lab.where(server.uuid) == {"hv1": "running"}
    (suspended,) = await power(lab.conductor, [server], "suspend")  # a managed save
    assert suspended.error is None, suspended.error
    assert lab.virt_state("hv1")["domains"][server.uuid]["managed_save"] is True
    assert (await lab.server(server.uuid)).vm_state == "suspended"
    (resumed,) = await power(lab.conductor, [server], "resume")
    assert resumed.error is None, resumed.error
    assert lab.where(server.uuid) == {"hv1": "running"}


async def test_a_start_the_hypervisor_refuses_leaves_it_stopped_with_a_fault(
    lab: HerdLab,
) -> None:
    server = await lab.boot("s1", host="hv1")
    await power(lab.conductor, [server], "stop")
    lab.fail("hv1", "start", "no memory for the guest")
    (outcome,) = await power(lab.conductor, [server], "start")
    assert outcome.error is not None and "no memory for the guest" in outcome.error
    row = await lab.server(server.uuid)
    assert (row.vm_state, row.task_state) == ("stopped", None)
    assert lab.where(server.uuid) == {"hv1": "shutoff"}
    assert await lab.events(server.uuid, "start") == [("start", False)]


async def test_power_on_an_unreachable_host_ends_the_task_and_changes_nothing(
    lab: HerdLab,
) -> None:
    server = await lab.boot("s1", host="hv1")
    lab.pool.down.add("hv1")
    (outcome,) = await power(lab.conductor, [server], "stop")
    assert outcome.error is not None and "cannot reach it" in outcome.error
    row = await lab.server(server.uuid)
    assert (row.vm_state, row.task_state) == ("active", None)
    assert lab.where(server.uuid) == {"hv1": "running"}


async def test_an_action_the_state_forbids_is_refused_before_any_host_is_asked(
    lab: HerdLab,
) -> None:
    server = await lab.boot("s1", host="hv1")
    lab.pool.ops.clear()
    (outcome,) = await power(lab.conductor, [server], "start")  # it runs already
    assert outcome.error is not None
    assert lab.pool.ops == []
    with pytest.raises(KeyError):
        await power(lab.conductor, [server], "explode")
