"""ResizeTask, ConfirmResizeTask and RevertResizeTask against real agents on fake hosts.

small is 1 vCPU, big 2, huge fits nowhere; each host has 4."""

from __future__ import annotations

import pytest

from orchestrator.conductor.tasks.resize import ConfirmResizeTask, ResizeTask, RevertResizeTask
from orchestrator.db.models import Instance
from tests.unit.conductor.herdlab import HerdLab

RESIZE_STEPS = ["stop_source", "stash_source", "copy_disk", "spawn", "switch"]


async def resized(lab: HerdLab, to: str = "hv2") -> Instance:
    """s1 booted small on hv1, resized to big on ``to``, waiting for confirm or revert."""
    server = await lab.boot("s1", host="hv1")
    outcome = await ResizeTask(lab.conductor, server, "big", to).execute()
    assert outcome.error is None, outcome.error
    return await lab.server(server.uuid)


async def test_a_resize_runs_it_at_the_new_size_on_the_destination_holding_both_claims(
    lab: HerdLab,
) -> None:
    row = await resized(lab, "hv2")
    assert (row.vm_state, row.flavor_name, row.vcpus) == ("resized", "big", 2)
    assert await lab.host_name(row.host_id) == "hv2"
    assert lab.where(row.uuid) == {"hv2": "running"}
    assert lab.files("hv1", row.uuid)["stash"] and not lab.files("hv1", row.uuid)["dir"]
    claims = await lab.claims()
    assert (row.uuid, "hv2", 2) in claims
    assert [(h, v) for c, h, v in claims if c != row.uuid] == [("hv1", 1)]  # the migration's
    assert [e for e, ok in await lab.events(row.uuid, "resize") if ok] == [
        "schedule", *RESIZE_STEPS[:4],
    ]  # fmt: skip
    (task,) = await lab.tasks(row.uuid)
    assert (task.kind, task.state, task.step) == ("resize", "done", "switch")


async def test_a_confirmed_resize_leaves_only_the_new_size_on_the_destination(
    lab: HerdLab,
) -> None:
    row = await resized(lab, "hv2")
    outcome = await ConfirmResizeTask(lab.conductor, row).execute()
    assert outcome.error is None, outcome.error
    await lab.assert_whole(row.uuid, "hv2")
    row = await lab.server(row.uuid)
    assert (row.vm_state, row.vcpus) == ("active", 2)
    assert await lab.claims() == [(row.uuid, "hv2", 2)]
    assert [t.kind for t in await lab.tasks(row.uuid)] == ["resize", "confirm"]


async def test_a_reverted_resize_puts_the_old_size_back_on_the_source(lab: HerdLab) -> None:
    row = await resized(lab, "hv2")
    outcome = await RevertResizeTask(lab.conductor, row).execute()
    assert outcome.error is None, outcome.error
    await lab.assert_whole(row.uuid, "hv1")
    row = await lab.server(row.uuid)
    assert (row.vm_state, row.flavor_name, row.vcpus) == ("active", "small", 1)
    assert await lab.claims() == [(row.uuid, "hv1", 1)]
    assert [e for e, ok in await lab.events(row.uuid, "revert_resize") if ok] == [
        "remove_dest", "revert_source", "drop_stash",
    ]  # fmt: skip


async def test_a_resize_on_its_own_host_then_reverted(lab: HerdLab) -> None:
    server = await lab.boot("s1", host="hv1")
    outcome = await ResizeTask(lab.conductor, server, "big").execute()
    assert outcome.error is None, outcome.error
    assert outcome.host == "hv1"  # it fits where it is: both sizes held there
    assert sorted(h for _, h, _ in await lab.claims()) == ["hv1", "hv1"]
    assert lab.where(server.uuid) == {"hv1": "running"}
    outcome = await RevertResizeTask(lab.conductor, await lab.server(server.uuid)).execute()
    assert outcome.error is None, outcome.error
    await lab.assert_whole(server.uuid, "hv1")
    assert await lab.claims() == [(server.uuid, "hv1", 1)]


async def test_a_spawn_failing_on_the_destination_puts_it_back_on_its_source(
    lab: HerdLab,
) -> None:
    server = await lab.boot("s1", host="hv1")
    lab.fail("hv2", "define", "the destination refuses it")
    outcome = await ResizeTask(lab.conductor, server, "big", "hv2").execute()
    assert outcome.error is not None and "refuses it" in outcome.error
    await lab.assert_whole(server.uuid, "hv1")
    row = await lab.server(server.uuid)
    assert (row.vm_state, row.flavor_name) == ("active", "small")
    assert await lab.claims() == [(server.uuid, "hv1", 1)]
    (task,) = await lab.tasks(server.uuid)
    assert task.state == "rolled_back"


async def test_a_size_that_fits_nowhere_changes_nothing(lab: HerdLab) -> None:
    server = await lab.boot("s1", host="hv1")
    outcome = await ResizeTask(lab.conductor, server, "huge").execute()
    assert outcome.failed_at == "schedule"
    await lab.assert_whole(server.uuid, "hv1")
    assert await lab.claims() == [(server.uuid, "hv1", 1)]


async def test_confirm_and_revert_need_a_resize_waiting(lab: HerdLab) -> None:
    server = await lab.boot("s1", host="hv1")
    for task in (ConfirmResizeTask, RevertResizeTask):
        outcome = await task(lab.conductor, await lab.server(server.uuid)).execute()
        assert outcome.failed_at == "guard"
        assert outcome.error is not None and "needs vm_state resized" in outcome.error
    await lab.assert_whole(server.uuid, "hv1")


async def test_a_revert_whose_source_cannot_build_it_ends_in_error_keeping_the_disk(
    lab: HerdLab,
) -> None:
    row = await resized(lab, "hv2")
    lab.fail("hv1", "define", "the source refuses it")
    outcome = await RevertResizeTask(lab.conductor, row).execute()
    assert outcome.error is not None and "refuses it" in outcome.error
    row = await lab.server(row.uuid)
    assert (row.vm_state, row.flavor_name) == ("error", "small")
    assert await lab.host_name(row.host_id) == "hv1"
    assert lab.where(row.uuid) == {}  # the resized copy was removed first
    assert lab.files("hv1", row.uuid)["stash"]  # its disk, kept for the operator
    assert await lab.claims() == [(row.uuid, "hv1", 1)]


async def test_a_confirm_whose_source_is_unreachable_stays_open(lab: HerdLab) -> None:
    row = await resized(lab, "hv2")
    lab.pool.down.add("hv1")
    outcome = await ConfirmResizeTask(lab.conductor, row).execute()
    assert outcome.error is not None and "confirm again" in outcome.error
    row = await lab.server(row.uuid)
    assert (row.vm_state, row.task_state) == ("resized", None)
    assert len(await lab.claims()) == 2
    lab.pool.down.clear()
    outcome = await ConfirmResizeTask(lab.conductor, row).execute()
    assert outcome.error is None, outcome.error
    await lab.assert_whole(row.uuid, "hv2")


@pytest.mark.parametrize("step", ["schedule", *RESIZE_STEPS])
async def test_a_resize_killed_at_a_step_is_recovered_by_its_rule(lab: HerdLab, step: str) -> None:
    server = await lab.boot("s1", host="hv1")
    await lab.kill_at("resize", step, ResizeTask(lab.conductor, server, "big", "hv2").execute)
    (recovered,) = await lab.recover()
    row = await lab.server(server.uuid)
    if step == "switch":  # the destination has it: resized, to confirm or revert
        assert recovered.outcome == "done"
        assert (row.vm_state, row.flavor_name) == ("resized", "big")
        assert lab.where(server.uuid) == {"hv2": "running"}
        assert lab.files("hv1", server.uuid)["stash"]
        assert sorted(h for _, h, _ in await lab.claims()) == ["hv1", "hv2"]
    else:
        assert recovered.outcome == "rolled_back"
        await lab.assert_whole(server.uuid, "hv1")
        assert (row.vm_state, row.flavor_name) == ("active", "small")
        assert await lab.claims() == [(server.uuid, "hv1", 1)]


@pytest.mark.parametrize("step", ["drop_source", "switch"])
async def test_a_confirm_killed_at_a_step_is_finished(lab: HerdLab, step: str) -> None:
    row = await resized(lab, "hv2")
    await lab.kill_at("confirm", step, ConfirmResizeTask(lab.conductor, row).execute)
    (recovered,) = await lab.recover()
    assert recovered.outcome == "done"
    await lab.assert_whole(row.uuid, "hv2")
    assert await lab.claims() == [(row.uuid, "hv2", 2)]


@pytest.mark.parametrize("step", ["remove_dest", "revert_source", "drop_stash", "restore"])
async def test_a_revert_killed_at_a_step_is_finished(lab: HerdLab, step: str) -> None:
    row = await resized(lab, "hv2")
    await lab.kill_at("revert", step, RevertResizeTask(lab.conductor, row).execute)
    (recovered,) = await lab.recover()
    assert recovered.outcome == "done"
    await lab.assert_whole(row.uuid, "hv1")
    assert await lab.claims() == [(row.uuid, "hv1", 1)]
    assert (await lab.server(row.uuid)).flavor_name == "small"
