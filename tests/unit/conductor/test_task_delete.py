"""DeleteTask against real agents on fake hosts."""

from __future__ import annotations

from orchestrator.conductor.tasks.power import power
from tests.unit.conductor.herdlab import HerdLab


async def test_a_delete_removes_the_domain_its_files_and_its_claim(lab: HerdLab) -> None:
    server = await lab.boot("s1", host="hv1")
    (outcome,) = await lab.conductor.delete([server])
    assert outcome.error is None, outcome.error
    row = await lab.server(server.uuid)
    assert (row.vm_state, row.task_state) == ("deleted", None)
    assert row.deleted_at is not None
    assert lab.where(server.uuid) == {}
    assert lab.files("hv1", server.uuid) == {"dir": False, "stash": False, "incoming": False}
    assert await lab.claims() == []


async def test_a_delete_of_a_stopped_server_needs_no_destroy(lab: HerdLab) -> None:
    server = await lab.boot("s1", host="hv1")
    await power(lab.conductor, [server], "stop")
    lab.fail("hv1", "destroy", "destroy must not be called")
    (outcome,) = await lab.conductor.delete([server])
    assert outcome.error is None, outcome.error
    assert lab.where(server.uuid) == {}


async def test_a_delete_whose_host_is_unreachable_keeps_the_server_and_its_claim(
    lab: HerdLab,
) -> None:
    """Today's behaviour (a decision, reported): the server stays 'active' with a fault,
    its claim kept, so that a later delete can still remove the domain."""
    server = await lab.boot("s1", host="hv1")
    lab.pool.down.add("hv1")
    (outcome,) = await lab.conductor.delete([server])
    assert outcome.error is not None and "cannot reach it" in outcome.error
    row = await lab.server(server.uuid)
    assert (row.vm_state, row.task_state) == ("active", None)
    assert await lab.claims() == [(server.uuid, "hv1", 1)]
    assert lab.where(server.uuid) == {"hv1": "running"}
    lab.pool.down.clear()
    (again,) = await lab.conductor.delete([row])
    assert again.error is None, again.error
    assert lab.where(server.uuid) == {} and await lab.claims() == []


async def test_a_delete_the_hypervisor_refuses_leaves_the_server_with_a_fault(
    lab: HerdLab,
) -> None:
    server = await lab.boot("s1", host="hv1")
    lab.fail("hv1", "undefine", "cannot undefine")
    (outcome,) = await lab.conductor.delete([server])
    assert outcome.error is not None and "cannot undefine" in outcome.error
    row = await lab.server(server.uuid)
    assert row.vm_state != "deleted"
    assert await lab.claims() == [(server.uuid, "hv1", 1)]
    assert server.uuid in lab.domains("hv1")
