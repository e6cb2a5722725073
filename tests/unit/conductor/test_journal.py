"""The durable task journal: written before each step, owned by one runner at a time."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from orchestrator.conductor.journal import (
    STOP_AT_ENV,
    Runner,
    TaskJournal,
    TaskTaken,
    hosts_in_task,
    open_tasks,
    orphans,
    take_over,
)
from orchestrator.db.engine import Database
from orchestrator.db.models import TaskRecord, TaskRecordState, utcnow
from orchestrator.errors import Conflict
from tests.unit.conftest import AddHost

REPO = Path(__file__).resolve().parents[3]


async def read_row(db_url: str, task_id: int) -> TaskRecord:
    """The row as another process sees it: through a connection of its own."""
    other = Database(db_url)
    try:
        async with other.read() as session:
            row = await session.get(TaskRecord, task_id)
    finally:
        await other.dispose()
    assert row is not None
    return row


def record_of(runner: Runner, **kw: object) -> TaskRecord:
    fields: dict[str, object] = {
        "kind": "live_migrate",
        "instance_uuid": "u-1",
        "step": "migrate",
        "runner_host": runner.host,
        "runner_pid": runner.pid,
        "runner_boot_id": runner.boot_id,
        "runner_started": runner.started,
        "heartbeat_at": utcnow(),
    }
    fields.update(kw)
    return TaskRecord(**fields)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


async def test_a_step_is_committed_before_its_side_effect(db: Database, db_url: str) -> None:
    handle = await TaskJournal(db).open("migrate", "u-1", step="claim", inputs={"flavor": "s"})
    seen: list[TaskRecord] = []

    async def copy_disk() -> None:  # the side effect: what would another process see now?
        seen.append(await read_row(db_url, handle.id))

    await handle.step("copy_disk", dest="hv2")
    await copy_disk()
    assert (seen[0].step, seen[0].inputs) == ("copy_disk", {"flavor": "s", "dest": "hv2"})
    assert seen[0].state == TaskRecordState.RUNNING
    assert handle.current_step == "copy_disk"


async def test_claims_are_merged_and_finish_closes_the_task(db: Database, db_url: str) -> None:
    handle = await TaskJournal(db).open("resize", "u-1", step="claim", claims={"src": 1})
    await handle.hold(dest=2)
    await handle.finish(TaskRecordState.DONE, "resized")
    row = await read_row(db_url, handle.id)
    assert (row.claims, row.state, row.detail) == ({"src": 1, "dest": 2}, "done", "resized")
    assert row.generation == 2
    assert await open_tasks(db) == []
    with pytest.raises(RuntimeError, match="is done"):
        await handle.step("again")


async def test_a_task_finishes_only_in_a_closed_state(db: Database) -> None:
    handle = await TaskJournal(db).open("migrate", "u-1", step="claim")
    with pytest.raises(ValueError, match="not recovering"):
        await handle.finish(TaskRecordState.RECOVERING)


async def test_the_heartbeat_advances_while_the_task_runs(db: Database, db_url: str) -> None:
    handle = await TaskJournal(db, heartbeat_every=0.05).open("migrate", "u-1", step="copy")
    first = (await read_row(db_url, handle.id)).heartbeat_at
    async with handle:
        await asyncio.sleep(0.3)
        await handle.step("define")  # the heartbeat and the steps share one generation
    beat = await read_row(db_url, handle.id)
    assert first is not None and beat.heartbeat_at is not None
    assert beat.heartbeat_at > first
    assert beat.generation >= 3  # at least two beats and the step
    await asyncio.sleep(0.15)
    assert (await read_row(db_url, handle.id)).generation == beat.generation  # stopped


async def test_a_handle_that_outlives_one_block_stops_beating_on_close(
    db: Database, db_url: str
) -> None:
    """A task adopts its handle in one method and drops it in another: ``close`` stops
    the beat (once, however often it is called), as leaving ``async with`` does."""
    handle = await TaskJournal(db, heartbeat_every=0.05).open("migrate", "u-1", step="copy")
    handle.start_heartbeat()
    handle.start_heartbeat()  # a second start keeps the one beat
    await asyncio.sleep(0.3)
    await handle.close()
    await handle.close()
    stopped = (await read_row(db_url, handle.id)).generation
    assert stopped >= 2
    await asyncio.sleep(0.15)
    assert (await read_row(db_url, handle.id)).generation == stopped


def test_a_runner_alive_on_this_host_is_not_gone() -> None:
    here = Runner.here()
    assert here.started > 0
    assert not here.gone(record_of(here, heartbeat_at=utcnow() - timedelta(days=1)))


def test_a_runner_whose_pid_is_dead_is_gone() -> None:
    here = Runner.here()
    assert here.gone(record_of(replace(here, pid=dead_pid())))


def test_a_runner_whose_pid_now_names_a_later_process_is_gone() -> None:
    here = Runner.here()
    assert here.gone(record_of(replace(here, started=here.started - 1)))


def test_a_runner_from_another_boot_of_this_host_is_gone() -> None:
    here = Runner.here()
    assert here.gone(record_of(replace(here, boot_id="another-boot")))


def test_a_runner_on_another_host_is_gone_only_once_its_heartbeat_is_stale() -> None:
    here = Runner.here()
    away = replace(here, host="other-host", pid=dead_pid())  # its pids mean nothing here
    now = utcnow()
    fresh = record_of(away, heartbeat_at=now - timedelta(seconds=30))
    stale = record_of(away, heartbeat_at=now - timedelta(seconds=61))
    assert not here.gone(fresh, now)
    assert here.gone(stale, now)
    assert not here.gone(stale, now, stale_after=120)


async def test_orphans_are_the_open_tasks_whose_runner_is_gone(db: Database) -> None:
    here = Runner.here()
    alive = await TaskJournal(db).open("migrate", "u-1", step="copy")
    dead = await TaskJournal(db, runner=replace(here, pid=dead_pid())).open(
        "evacuate", "u-2", step="rebuild"
    )
    closed = await TaskJournal(db, runner=replace(here, boot_id="old")).open(
        "resize", "u-3", step="copy"
    )
    await closed.finish(TaskRecordState.FAILED, "gave up")
    assert [t.id for t in await open_tasks(db)] == [alive.id, dead.id]
    assert [t.id for t in await open_tasks(db, "u-2")] == [dead.id]
    assert [t.id for t in await orphans(db)] == [dead.id]


async def test_take_over_is_won_by_exactly_one_of_two_concurrent_callers(db_url: str) -> None:
    first, second = Database(db_url), Database(db_url)
    try:
        await first.migrate()
        gone = replace(Runner.here(), pid=dead_pid())
        await TaskJournal(first, runner=gone).open("live_migrate", "u-1", step="migrate")
        (record,) = await orphans(first)
        won = await asyncio.gather(take_over(first, record), take_over(second, record))
        assert sum(handle is not None for handle in won) == 1
        row = await read_row(db_url, record.id or 0)
        assert (row.state, row.runner_pid) == ("recovering", os.getpid())
        assert await orphans(first) == []  # its new runner lives
    finally:
        await first.dispose()
        await second.dispose()


async def test_a_taken_over_handle_works_like_an_opened_one(db: Database, db_url: str) -> None:
    gone = replace(Runner.here(), pid=dead_pid())
    await TaskJournal(db, runner=gone).open("migrate", "u-1", step="copy", inputs={"a": 1})
    (record,) = await orphans(db)
    handle = await take_over(db, record)
    assert handle is not None and handle.current_step == "copy" and handle.inputs == {"a": 1}
    await handle.step("undo_copy", b=2)
    await handle.finish(TaskRecordState.ROLLED_BACK, "undone by reconcile")
    row = await read_row(db_url, handle.id)
    assert (row.step, row.inputs, row.state) == ("undo_copy", {"a": 1, "b": 2}, "rolled_back")


async def test_the_old_runner_stops_with_task_taken_after_a_take_over(db: Database) -> None:
    slow = await TaskJournal(db).open("live_migrate", "u-1", step="migrate")
    (record,) = await open_tasks(db)
    assert await take_over(db, record) is not None
    with pytest.raises(TaskTaken, match=r"taken over by pid \d+ on .* this process .* stops here"):
        await slow.step("record_dest")
    with pytest.raises(TaskTaken):
        await slow.finish(TaskRecordState.DONE)
    assert issubclass(TaskTaken, Conflict) and TaskTaken.exit_code == Conflict.exit_code
    assert "\n" not in str(TaskTaken("x"))


async def test_a_runner_that_beat_since_the_judge_read_it_is_not_taken_over(
    db: Database,
) -> None:
    handle = await TaskJournal(db).open("migrate", "u-1", step="copy")
    (stale_view,) = await open_tasks(db)
    await handle.step("define")
    assert await take_over(db, stale_view) is None
    await handle.finish(TaskRecordState.DONE)


async def test_hosts_in_task_names_source_and_destination(db: Database, add_host: AddHost) -> None:
    hv1, hv2 = await add_host("hv1"), await add_host("hv2")
    journal = TaskJournal(db)
    await journal.open("live_migrate", "u-1", step="migrate", source_host_id=hv1.id,
                       dest_host_id=hv2.id)  # fmt: skip
    await journal.open("rebuild", "u-2", step="spawn", source_host_id=hv1.id)
    assert hosts_in_task(await open_tasks(db)) == {"u-1": {hv1.id, hv2.id}, "u-2": {hv1.id}}


KILLED_AT_A_STEP = """
import asyncio, sys
from orchestrator.conductor.journal import TaskJournal
from orchestrator.db.engine import open_database

async def main():
    db = await open_database(sys.argv[1])
    handle = await TaskJournal(db).open("migrate", "u-1", step="claim")
    await handle.step("copy_disk", dest="hv2")
    print("survived the hook")

asyncio.run(main())
"""


@pytest.mark.parametrize(
    ("stop_at", "step", "inputs"),
    [("migrate:copy_disk", "copy_disk", {"dest": "hv2"}), ("migrate:claim", "claim", {})],
    ids=["a later step", "the first step, written by open"],
)
async def test_the_kill_hook_dies_by_sigkill_right_after_committing_its_step(
    db: Database, db_url: str, stop_at: str, step: str, inputs: dict
) -> None:
    env = {**os.environ, STOP_AT_ENV: stop_at}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", textwrap.dedent(KILLED_AT_A_STEP), db_url,
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(child.communicate(), 60)
    assert child.returncode == -signal.SIGKILL, err.decode()
    assert b"survived" not in out
    (row,) = await open_tasks(db)
    assert (row.step, row.inputs, row.state) == (step, inputs, "running")
    assert [t.id for t in await orphans(db)] == [row.id]
