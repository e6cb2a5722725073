"""BuildTask against real agents on fake hosts: placed, claimed, defined and started."""

from __future__ import annotations

from orchestrator.api import servers as api
from tests.unit.conductor.herdlab import HerdLab


async def test_a_build_runs_the_server_on_its_host_with_its_claim(lab: HerdLab) -> None:
    server = await lab.boot("s1", host="hv2")
    assert (server.vm_state, server.power_state, server.task_state) == ("active", "running", None)
    assert await lab.host_name(server.host_id) == "hv2"
    assert lab.where(server.uuid) == {"hv2": "running"}
    assert lab.files("hv2", server.uuid)["dir"]
    assert await lab.claims() == [(server.uuid, "hv2", 1)]
    assert [e for e, _ in await lab.events(server.uuid, "create")] == [
        "schedule", "image", "build",
    ]  # fmt: skip


async def test_a_build_that_fails_on_every_host_ends_in_error_and_leaves_nothing_anywhere(
    lab: HerdLab,
) -> None:
    for name in ("hv1", "hv2", "hv3"):
        lab.fail(name, "start", "cannot start the guest")
    (instance,) = await api.create_servers(
        lab.db, api.CreateRequest(name="s1", flavor="small", image="cirros")
    )
    (outcome,) = await lab.conductor.build([instance])
    assert outcome.error is not None and "cannot start the guest" in outcome.error
    row = await lab.server(instance.uuid)
    assert row.vm_state == "error"
    assert await lab.claims() == []  # an ERROR build holds no room
    assert lab.where(instance.uuid) == {}
    assert not any(lab.files(h, instance.uuid)["dir"] for h in ("hv1", "hv2", "hv3"))
    tried = [e for e in await lab.events(instance.uuid, "create") if e[0] == "build"]
    assert tried == [("build", False)] * 3  # each host once, then no alternate is left


async def test_a_failed_host_is_skipped_for_the_next_alternate(lab: HerdLab) -> None:
    lab.fail("hv1", "define", "no room for the domain")
    lab.fail("hv2", "define", "no room for the domain")
    (instance,) = await api.create_servers(
        lab.db, api.CreateRequest(name="s1", flavor="small", image="cirros")
    )
    (outcome,) = await lab.conductor.build([instance])
    assert outcome.error is None, outcome.error
    assert outcome.host == "hv3"
    assert lab.where(instance.uuid) == {"hv3": "running"}
    assert await lab.claims() == [(instance.uuid, "hv3", 1)]
    assert not lab.files("hv1", instance.uuid)["dir"] and not lab.files("hv2", instance.uuid)["dir"]


async def test_a_build_pinned_to_an_unreachable_host_fails_and_gives_its_claim_back(
    lab: HerdLab,
) -> None:
    lab.pool.down.add("hv2")
    (instance,) = await api.create_servers(
        lab.db, api.CreateRequest(name="s1", flavor="small", image="cirros", host="hv2")
    )
    (outcome,) = await lab.conductor.build([instance])
    assert outcome.error is not None and "cannot reach it" in outcome.error
    assert (await lab.server(instance.uuid)).vm_state == "error"
    assert await lab.claims() == []
    assert lab.where(instance.uuid) == {}


async def test_a_build_that_fits_nowhere_is_refused_at_schedule(lab: HerdLab) -> None:
    (instance,) = await api.create_servers(
        lab.db, api.CreateRequest(name="s1", flavor="huge", image="cirros")
    )
    (outcome,) = await lab.conductor.build([instance])
    assert outcome.failed_at == "schedule"
    assert (await lab.server(instance.uuid)).vm_state == "error"
    assert await lab.claims() == []
    assert lab.pool.ops == []  # no host was asked to build anything
