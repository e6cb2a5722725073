"""The job journal's transitions, lost-runner detection, and the detached runner."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from agent_testlib import needs_virsh

from agent import jobs
from agent.errors import BadRequest, UnknownOp
from agent.jobs import FAILED, LOST, RUNNING, SUCCEEDED, JobRecord, Journal
from agent.runner import Runners

WIRE_FIELDS = {"job_id", "op", "state", "result", "error", "started_at", "finished_at"}
# libvirt's test driver runs inside virsh itself: no daemon needed.
TEST_URI = "test:///default"


@pytest.fixture
def journal(state_dir: Path) -> Journal:
    return Journal.of(state_dir)


def running_record(job_id: str = "j1", **fields) -> JobRecord:
    return JobRecord(job_id=job_id, op="delete", args={"uuid": str(uuid.uuid4())}, **fields)


def dead_pid() -> tuple[int, int | None]:
    """A pid that existed and has been reaped, with the start time it had."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    start = jobs.process_start_time(child.pid)
    child.kill()
    child.wait()
    return child.pid, start


def test_wire_record_has_exactly_the_protocol_fields(journal: Journal) -> None:
    journal.save(running_record(context={"state_dir": "/x", "libvirt_uri": "qemu:///system"}))
    wire = journal.get("j1").to_wire()
    assert set(wire) == WIRE_FIELDS
    assert wire["state"] == RUNNING
    assert wire["result"] is None and wire["finished_at"] is None


def test_finish_records_the_result_and_the_time(journal: Journal) -> None:
    journal.save(running_record())
    journal.finish("j1", SUCCEEDED, result={"existed": False})
    record = journal.get("j1")
    assert (record.state, record.result, record.error) == (SUCCEEDED, {"existed": False}, None)
    assert record.finished_at >= record.started_at


def test_a_live_runner_keeps_its_job_running(journal: Journal) -> None:
    me = os.getpid()
    journal.save(running_record(pid=me, pid_start=jobs.process_start_time(me)))
    assert journal.get("j1").state == RUNNING


def test_a_dead_runner_makes_its_job_lost_and_that_is_journalled(journal: Journal) -> None:
    pid, start = dead_pid()
    journal.save(running_record(pid=pid, pid_start=start))
    record = journal.get("j1")
    assert record.state == LOST
    assert record.error["type"] == "Lost"
    assert f"pid {pid}" in record.error["message"]
    assert journal.load("j1").state == LOST  # persisted, not just reported


def test_a_reused_pid_does_not_pass_for_the_runner(journal: Journal) -> None:
    me = os.getpid()
    journal.save(running_record(pid=me, pid_start=jobs.process_start_time(me) - 1))
    assert journal.get("j1").state == LOST


def test_a_zombie_runner_counts_as_dead() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while jobs.process_start_time(child.pid) is not None and time.monotonic() < deadline:
        time.sleep(0.02)  # exits, and stays a zombie: nobody waits for it yet
    assert jobs.process_start_time(child.pid) is None
    child.wait()


def test_a_job_from_before_a_reboot_is_lost(journal: Journal) -> None:
    me = os.getpid()
    journal.save(
        running_record(pid=me, pid_start=jobs.process_start_time(me), boot_id="another-boot")
    )
    record = journal.get("j1")
    assert record.state == LOST
    assert "rebooted" in record.error["message"]


def test_a_runner_that_never_recorded_its_pid_is_lost_only_after_a_grace(
    journal: Journal,
) -> None:
    journal.save(running_record("fresh"))
    journal.save(running_record("stale", started_at=time.time() - jobs.RUNNER_START_GRACE - 1))
    assert journal.get("fresh").state == RUNNING
    assert journal.get("stale").state == LOST


def test_a_result_written_after_the_suspicion_wins(journal: Journal) -> None:
    """The runner writes its result, then exits: the lock-and-reread sees the result."""
    pid, start = dead_pid()
    journal.save(running_record(pid=pid, pid_start=start))
    journal.finish("j1", SUCCEEDED, result={"existed": True})
    assert journal.get("j1").state == SUCCEEDED


def test_forget_refuses_a_running_job_and_removes_a_finished_one(journal: Journal) -> None:
    me = os.getpid()
    journal.save(running_record(pid=me, pid_start=jobs.process_start_time(me)))
    with pytest.raises(BadRequest, match="still running"):
        journal.forget("j1")
    journal.finish("j1", FAILED, error={"type": "LibvirtError", "message": "no"})
    journal.log_path("j1").write_text("log")
    journal.forget("j1")
    assert journal.get("j1") is None
    assert not journal.log_path("j1").exists()
    journal.forget("j1")  # forgetting twice is harmless


@pytest.mark.parametrize(
    "job_id",
    ["", "../etc/passwd", ".hidden", "a/b", "x" * 129, 7, None],
    ids=["empty", "traversal", "dotfile", "slash", "too-long", "number", "none"],
)
def test_job_ids_that_are_not_safe_file_names_are_refused(job_id: object) -> None:
    with pytest.raises(BadRequest):
        jobs.check_job_id(job_id)


@needs_virsh
def test_runner_runs_a_journalled_job_detached_and_is_reaped(journal: Journal) -> None:
    runners = Runners()
    context = {"state_dir": str(journal.dir.parent), "libvirt_uri": TEST_URI}
    args = {"uuid": str(uuid.uuid4())}
    record = runners.start(journal, "d1", "delete", args, context)
    assert record.state == RUNNING
    pid = journal.load("d1").pid
    record = wait_finished(journal, "d1")
    assert (record.state, record.result) == (SUCCEEDED, {"existed": False}), record.error
    assert runners.start(journal, "d1", "delete", args, context).state == SUCCEEDED  # idempotent
    with pytest.raises(BadRequest, match="is a delete"):
        runners.start(journal, "d1", "build", {}, context)
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists(), "the finished runner was not reaped"


def test_runner_refuses_unknown_ops_and_bad_args_before_journalling(journal: Journal) -> None:
    runners = Runners()
    with pytest.raises(UnknownOp):
        runners.start(journal, "x1", "reboot", {}, {})
    with pytest.raises(BadRequest, match="delete: uuid"):
        runners.start(journal, "x2", "delete", {"uuid": "nope"}, {})
    assert journal.job_ids() == []


@needs_virsh
def test_a_job_waits_for_the_instance_lock_and_a_killed_runner_is_lost(
    journal: Journal,
) -> None:
    """Hold the instance lock as another job would; the runner waits, we kill it."""
    instance = str(uuid.uuid4())
    locks = journal.dir.parent / "locks"
    locks.mkdir()
    context = {"state_dir": str(journal.dir.parent), "libvirt_uri": TEST_URI}
    with open(locks / f"{instance}.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        Runners().start(journal, "blocked", "delete", {"uuid": instance}, context)
        time.sleep(0.5)
        record = journal.load("blocked")
        assert record.state == RUNNING
        os.kill(record.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while journal.get("blocked").state == RUNNING and time.monotonic() < deadline:
            time.sleep(0.05)
    record = journal.get("blocked")
    assert record.state == LOST
    assert "died without recording a result" in record.error["message"]


@needs_virsh
def test_a_job_runs_once_the_instance_lock_is_released(journal: Journal) -> None:
    instance = str(uuid.uuid4())
    locks = journal.dir.parent / "locks"
    locks.mkdir()
    context = {"state_dir": str(journal.dir.parent), "libvirt_uri": TEST_URI}
    with open(locks / f"{instance}.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        Runners().start(journal, "queued", "delete", {"uuid": instance}, context)
        time.sleep(0.5)
        assert journal.get("queued").state == RUNNING
    assert wait_finished(journal, "queued").state == SUCCEEDED


def wait_finished(journal: Journal, job_id: str, timeout: float = 30) -> JobRecord:
    deadline = time.monotonic() + timeout
    while True:
        record = journal.get(job_id)
        if record.state != RUNNING or time.monotonic() > deadline:
            return record
        time.sleep(0.05)


@pytest.mark.parametrize(
    "damage",
    [
        b'{"job_id": "bad", "op": "del',
        b"\xff\xfe",
        b"[]",
        b'{"job_id": "bad"}',
        b'{"job_id": "bad", "op": "delete", "args": {}, "state": "weird"}',
        b'{"job_id": "bad", "op": "delete", "args": {}, "started_at": "yesterday"}',
        b"[" * 200_000,
    ],
    ids=[
        "truncated",
        "not-utf8",
        "not-an-object",
        "fields-missing",
        "bad-state",
        "bad-time",
        "nested-too-deeply",
    ],
)
def test_a_damaged_journal_file_is_skipped_and_reported(journal: Journal, damage: bytes) -> None:
    journal.save(running_record("good", state=SUCCEEDED))
    journal.path("bad").write_bytes(damage)
    records, problems = journal.all()
    assert [r.job_id for r in records] == ["good"]
    assert problems == [
        {"job_id": "bad", "file": str(journal.path("bad")), "error": problems[0]["error"]}
    ]
    assert problems[0]["error"]
    with pytest.raises(jobs.Unreadable, match="is unreadable"):
        journal.get("bad")


@needs_virsh
def test_a_job_log_is_readable_by_root_only(journal: Journal) -> None:
    """A runner's stderr may quote its job's arguments (a seed carries user data)."""
    context = {"state_dir": str(journal.dir.parent), "libvirt_uri": TEST_URI}
    Runners().start(journal, "l1", "delete", {"uuid": str(uuid.uuid4())}, context)
    wait_finished(journal, "l1")
    assert journal.log_path("l1").stat().st_mode & 0o777 == 0o600
