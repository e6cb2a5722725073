"""MigrateTask (cold migration) against real agents on fake hosts."""

from __future__ import annotations

import pytest

from orchestrator.conductor.tasks.migrate import MigrateTask
from orchestrator.conductor.tasks.power import power
from tests.unit.conductor.herdlab import HerdLab

STEPS = ["stop_source", "copy_disk", "spawn", "switch", "cleanup_source"]


async def test_a_migration_moves_domain_files_and_claim_to_the_destination(
    lab: HerdLab,
) -> None:
    server = await lab.boot("s1", host="hv1")
    outcome = await MigrateTask(lab.conductor, server, "hv2").execute()
    assert outcome.error is None, outcome.error
    await lab.assert_whole(server.uuid, "hv2")
    row = await lab.server(server.uuid)
    assert (row.vm_state, row.power_state) == ("active", "running")
    assert [e for e, ok in await lab.events(server.uuid, "migrate") if ok] == [
        "schedule", *STEPS[:3], "cleanup_source",
    ]  # fmt: skip
    (task,) = await lab.tasks(server.uuid)
    assert (task.kind, task.state, task.step) == ("migrate", "done", "cleanup_source")


async def test_a_stopped_server_migrates_stopped(lab: HerdLab) -> None:
    server = await lab.boot("s1", host="hv1")
    await power(lab.conductor, [server], "stop")
    outcome = await MigrateTask(lab.conductor, await lab.server(server.uuid)).execute()
    assert outcome.error is None, outcome.error
    assert outcome.host in ("hv2", "hv3")
    await lab.assert_whole(server.uuid, outcome.host, "shutoff")
    assert (await lab.server(server.uuid)).vm_state == "stopped"


async def test_a_spawn_failing_on_the_destination_puts_it_back_on_its_source(
    lab: HerdLab,
) -> None:
    server = await lab.boot("s1", host="hv1")
    lab.fail("hv2", "start", "the destination cannot start it")
    outcome = await MigrateTask(lab.conductor, server, "hv2").execute()
    assert outcome.error is not None and "cannot start it" in outcome.error
    await lab.assert_whole(server.uuid, "hv1")  # started again where it was, claim kept
    assert (await lab.server(server.uuid)).vm_state == "active"
    assert ("spawn", False) in await lab.events(server.uuid, "migrate")
    (task,) = await lab.tasks(server.uuid)
    assert task.state == "rolled_back"


async def test_an_unreachable_destination_changes_nothing_on_the_source(lab: HerdLab) -> None:
    server = await lab.boot("s1", host="hv1")
    lab.pool.down.add("hv2")
    outcome = await MigrateTask(lab.conductor, server, "hv2").execute()
    assert outcome.error is not None
    await lab.assert_whole(server.uuid, "hv1")


async def test_a_migration_with_no_host_to_go_to_keeps_its_claim(lab: HerdLab) -> None:
    server = await lab.boot("s1", host="hv1", flavor="big")
    for other in ("hv2", "hv3"):
        await lab.fill(other)
    lab.pool.ops.clear()
    outcome = await MigrateTask(lab.conductor, server).execute()
    assert outcome.failed_at == "schedule"
    await lab.assert_whole(server.uuid, "hv1")
    assert [op for _, op in lab.pool.ops if op != "list"] == []  # no host was asked a thing


@pytest.mark.parametrize("step", ["schedule", *STEPS])
async def test_a_migration_killed_at_a_step_is_recovered_by_its_rule(
    lab: HerdLab, step: str
) -> None:
    server = await lab.boot("s1", host="hv1")
    task = MigrateTask(lab.conductor, server, "hv2")
    await lab.kill_at("migrate", step, task.execute)
    (recovered,) = await lab.recover()
    forward = step in ("switch", "cleanup_source")
    await lab.assert_whole(server.uuid, "hv2" if forward else "hv1")
    assert recovered.outcome == ("done" if forward else "rolled_back")
    row = await lab.server(server.uuid)
    assert (row.vm_state, row.power_state) == ("active", "running")
    recover_events = [e for e, _ in await lab.events(server.uuid, "migrate") if e == "recover"]
    assert recover_events == ["recover"]
