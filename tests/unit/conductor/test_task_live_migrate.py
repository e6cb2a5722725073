"""LiveMigrateTask against real agents on fake hosts.

Two things a pipe cannot carry are stood in for: herd's SSH tunnel between the hosts'
libvirtds (a no-op: the fake virsh finds its destination by the migration address), and
the port probe of migration_reach (its own tests cover it), which here answers two ports
unless the test makes the destination unreachable. The fake hosts' agent directories
differ (they share one machine), so the same-directory rule is relaxed to the others.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from orchestrator.conductor import migration_reach
from orchestrator.conductor.tasks import live_migrate
from orchestrator.conductor.tasks.live_migrate import LiveMigrateTask
from orchestrator.db.models import Host
from tests.unit.conductor.herdlab import HerdLab


@pytest.fixture(autouse=True)
def no_tunnel(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The tunnel and the port probe stood in for; names put in the set are not reached."""
    unreached: set[str] = set()

    @contextlib.asynccontextmanager
    async def tunnel(*_: object, **__: object) -> AsyncIterator[str]:
        yield "qemu+unix:///system"

    async def check(pool: object, source: object, dest: object) -> migration_reach.Ports | str:
        if getattr(dest, "name", None) in unreached:
            return "timed out (test)"
        return migration_reach.Ports(49152, 49153)

    original = live_migrate.incompatibility

    def incompatibility(source: Host, dest: Host) -> str | None:
        why = original(source, dest)
        return None if why and "agent directories differ" in why else why

    monkeypatch.setattr(live_migrate, "libvirt_tunnel", tunnel)
    monkeypatch.setattr(migration_reach, "check", check)
    monkeypatch.setattr(live_migrate, "incompatibility", incompatibility)
    return unreached


STEPS = ["prepare_dest", "live_migrate", "switch"]


async def test_a_live_migration_moves_the_running_guest_and_its_claim(lab: HerdLab) -> None:
    server = await lab.boot("s1", host="hv1")
    outcome = await LiveMigrateTask(lab.conductor, server, "hv3").execute()
    assert outcome.error is None, outcome.error
    await lab.assert_whole(server.uuid, "hv3")
    row = await lab.server(server.uuid)
    assert (row.vm_state, row.power_state) == ("active", "running")
    assert [e for e, ok in await lab.events(server.uuid, "live_migrate") if ok] == [
        "schedule", *STEPS[:2],
    ]  # fmt: skip
    (task,) = await lab.tasks(server.uuid)
    assert (task.state, task.step) == ("done", "switch")


async def test_a_destination_the_source_cannot_reach_is_set_aside_for_another(
    lab: HerdLab, no_tunnel: set[str]
) -> None:
    server = await lab.boot("s1", host="hv1")
    await lab.boot("s2", host="hv3")  # hv2 is the emptier: the scheduler's first choice
    no_tunnel.add("hv2")
    outcome = await LiveMigrateTask(lab.conductor, server).execute()
    assert outcome.error is None, outcome.error
    await lab.assert_whole(server.uuid, "hv3")


async def test_no_reachable_destination_leaves_it_running_where_it_was(
    lab: HerdLab, no_tunnel: set[str]
) -> None:
    server = await lab.boot("s1", host="hv1")
    no_tunnel.update({"hv2", "hv3"})
    outcome = await LiveMigrateTask(lab.conductor, server).execute()
    assert outcome.failed_at == "schedule"
    assert outcome.error is not None and "timed out (test)" in outcome.error
    await lab.assert_whole(server.uuid, "hv1")


async def test_a_migration_libvirt_refuses_leaves_it_on_the_source_and_the_destination_clean(
    lab: HerdLab,
) -> None:
    server = await lab.boot("s1", host="hv1")
    lab.fail("hv2", "migrate_in", "unsupported CPU")
    outcome = await LiveMigrateTask(lab.conductor, server, "hv2").execute()
    assert outcome.error is not None and "unsupported CPU" in outcome.error
    await lab.assert_whole(server.uuid, "hv1")  # hv2's prepared files are gone too
    assert ("live_migrate", False) in await lab.events(server.uuid, "live_migrate")


async def test_a_failed_preparation_on_the_destination_leaves_it_on_the_source(
    lab: HerdLab,
) -> None:
    server = await lab.boot("s1", host="hv1")
    lab.pool.down.add("hv2")
    outcome = await LiveMigrateTask(lab.conductor, server, "hv2").execute()
    assert outcome.error is not None
    lab.pool.down.clear()
    await lab.assert_whole(server.uuid, "hv1")


async def test_a_migration_whose_answer_was_lost_is_recorded_where_the_guest_runs(
    lab: HerdLab,
) -> None:
    """libvirt moved the guest, then the source's answer never came back: the guest is
    recorded on the destination, and nothing of it stays on the source."""
    server = await lab.boot("s1", host="hv1")
    lab.fail("hv1", "migrate", "connection reset by peer", after=True)
    outcome = await LiveMigrateTask(lab.conductor, server, "hv2").execute()
    assert outcome.error is None, outcome.error
    await lab.assert_whole(server.uuid, "hv2")


async def test_a_guest_that_runs_nowhere_after_a_failed_migration_is_error_on_its_source(
    lab: HerdLab,
) -> None:
    """Lost on the way: ERROR, recorded on the source, which keeps its claim (as any
    errored server keeps its room until it is deleted or rebuilt); the destination's goes."""
    server = await lab.boot("s1", host="hv1")
    lab.fail("hv2", "migrate_crash", "qemu crashed")  # neither host shows it running
    outcome = await LiveMigrateTask(lab.conductor, server, "hv2").execute()
    assert outcome.error is not None and "neither host" in outcome.error
    row = await lab.server(server.uuid)
    assert (row.vm_state, row.task_state) == ("error", None)
    assert await lab.host_name(row.host_id) == "hv1"
    assert await lab.claim_hosts(server.uuid) == ["hv1"]
    assert lab.where(server.uuid) == {}


@pytest.mark.parametrize("step", ["schedule", *STEPS])
async def test_a_live_migration_killed_at_a_step_is_recovered_by_its_rule(
    lab: HerdLab, step: str
) -> None:
    server = await lab.boot("s1", host="hv1")
    await lab.kill_at("live_migrate", step, LiveMigrateTask(lab.conductor, server, "hv2").execute)
    (recovered,) = await lab.recover()
    forward = step == "switch"
    await lab.assert_whole(server.uuid, "hv2" if forward else "hv1")
    assert recovered.outcome == ("done" if forward else "rolled_back")


async def test_killed_after_libvirt_moved_the_guest_it_is_recorded_on_the_destination(
    lab: HerdLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The acceptance case: the guest moved, the DB never heard. Recovery asks the
    hosts, records it where it runs, and leaves no files of it on the source."""
    server = await lab.boot("s1", host="hv1")
    lab.fail("hv1", "migrate", "herd was killed", after=True)  # the deed done, no answer
    original = LiveMigrateTask._failed

    async def killed(self: LiveMigrateTask, *args: object, **kw: object) -> object:
        from tests.unit.conductor.herdlab import Died

        raise Died("killed between libvirt's move and the DB's record")

    monkeypatch.setattr(LiveMigrateTask, "_failed", killed)
    with pytest.raises(BaseException, match="killed between"):
        await LiveMigrateTask(lab.conductor, server, "hv2").execute()
    monkeypatch.setattr(LiveMigrateTask, "_failed", original)
    (task,) = await lab.tasks(server.uuid)
    assert task.step == "live_migrate"
    await lab.orphan(task.id)
    lab.heal("hv1")
    (recovered,) = await lab.recover()
    assert recovered.outcome == "done"
    await lab.assert_whole(server.uuid, "hv2")
