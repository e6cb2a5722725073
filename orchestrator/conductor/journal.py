"""The durable task journal: every multi-step task written down before each step's effect.

A move (migrate, resize, live migration, evacuation...) is sequenced by the herd process
that started it. If that process dies half-way, whoever comes next (``herd server wait``,
``herd reconcile``, the next command touching the server) must know where it stopped, what
it was about to do, which claims it holds, and whether its runner is really gone. So a task
opens a row in ``tasks`` and, before each step's side effect, commits the step's name and
inputs (``TaskHandle.step``). Nova keeps the same in its migration record's status; herd
keeps it per step so a rule per step can finish the task forward or roll it back.

Who runs a task is a ``Runner``: host name, pid, kernel boot id and the process's start
time (a pid alone is reused after a reboot, or by a later process). A runner on this host
is gone when its pid is dead or now names another process; one on another host (operators
share a PostgreSQL database) is gone when its heartbeat is older than ``STALE_AFTER``.

Every write is compare-and-set on ``generation``: recovery takes a task over by bumping it
(``take_over``), and from then on every write of the old runner matches no row and raises
``TaskTaken``, so a runner that was only slow, not dead, stops instead of fighting its
recoverer. Two recoverers racing on one task: one wins the compare-and-set, the other gets
None. The heartbeat bumps the generation too, so a runner that still beats cannot be taken
over from under it by a judge with a stale view.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from sqlalchemy import update
from sqlmodel import col, select

from orchestrator.db.models import OPEN_TASK_STATES, TaskRecord, TaskRecordState, utcnow
from orchestrator.errors import Conflict

if TYPE_CHECKING:
    from sqlmodel.ext.asyncio.session import AsyncSession

    from orchestrator.db.engine import Database

HEARTBEAT_EVERY = 10.0  # seconds between a running task's heartbeats
STALE_AFTER = 60.0  # a runner on another host whose heartbeat is older than this is gone
# Test-only: "<kind>:<step>" makes ``TaskHandle.step`` (and ``TaskJournal.open``, for a
# task's first step) commit that step and then SIGKILL this process, as `kill -9` would at
# the worst moment. The lab's kill tests set it; nothing else may.
STOP_AT_ENV = "HERD_TEST_STOP_AT"
CLOSED_STATES = (TaskRecordState.DONE, TaskRecordState.ROLLED_BACK, TaskRecordState.FAILED)

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


class TaskTaken(Conflict):
    """Another process took this task over (recovery judged its runner gone): stop."""


def _boot_id() -> str:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""  # no /proc: a boot cannot be told apart, so only the pid is checked


def _proc_stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields from the third (state) on; None if there is no such
    process (or no /proc). The command name, field 2, may hold spaces and parentheses:
    it ends at the last ')'."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """When the process started, in clock ticks since boot (stat field 22)."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields is not None and len(fields) > 19 else None


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a process that runs: not absent, and not a zombie waiting for
    its parent (a SIGKILLed herd is one until its shell reaps it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    fields = _proc_stat(pid)
    return fields is None or fields[0] not in ("Z", "X")


def _epoch(moment: datetime | None) -> float:
    if moment is None:
        return 0.0
    if moment.tzinfo is None:  # SQLite drops the zone; herd always stores UTC
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@dataclass(frozen=True)
class Runner:
    """A process that runs tasks, told apart from any later one with the same pid."""

    host: str
    pid: int
    boot_id: str
    started: int  # clock ticks since boot (/proc/<pid>/stat field 22); 0 if unknown

    @classmethod
    def here(cls) -> Runner:
        pid = os.getpid()
        return cls(socket.gethostname(), pid, _boot_id(), start_time(pid) or 0)

    @classmethod
    def of(cls, record: TaskRecord) -> Runner:
        return cls(
            record.runner_host, record.runner_pid, record.runner_boot_id, record.runner_started
        )

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host}"

    def gone(
        self, record: TaskRecord, now: datetime | None = None, stale_after: float = STALE_AFTER
    ) -> bool:
        """Whether the record's runner, judged from this runner's host, is gone.

        Same host and boot: gone iff its pid is dead or started at another time (reused).
        Same host, another boot: gone (the host rebooted; nothing survives that). Another
        host: its processes cannot be seen from here, so the heartbeat decides."""
        if record.runner_host == self.host:
            if record.runner_boot_id != self.boot_id:
                return True
            if not _alive(record.runner_pid):
                return True
            started = start_time(record.runner_pid)
            if not record.runner_started or started is None:
                return False  # no start time to compare (no /proc): the pid lives
            return started != record.runner_started
        moment = now or utcnow()
        return _epoch(moment) - _epoch(record.heartbeat_at) > stale_after


def owner_alive(owner: str) -> bool:
    """Whether the command named by a ``task_owner`` (``str(Runner)``: "pid N on HOST")
    runs on this machine now. Another machine's cannot be seen from here: False, and
    the caller's timeout decides."""
    match = re.fullmatch(r"pid (\d+) on (.+)", owner)
    return bool(match) and match[2] == socket.gethostname() and _alive(int(match[1]))


def gone(record: TaskRecord, now: datetime | None = None, stale_after: float = STALE_AFTER) -> bool:
    """Whether the record's runner is gone, judged from this process (``Runner.gone``)."""
    return Runner.here().gone(record, now, stale_after)


class TaskHandle:
    """The runner's grip on one open task: each write is checked against the generation
    it last wrote, and ``async with handle:`` keeps its heartbeat going (or
    ``start_heartbeat`` ... ``close``, when the handle outlives one block)."""

    def __init__(
        self,
        db: Database,
        record: TaskRecord,
        runner: Runner,
        heartbeat_every: float = HEARTBEAT_EVERY,
    ) -> None:
        self.db = db
        self.record = record
        self.runner = runner
        self.heartbeat_every = heartbeat_every
        self._lock = asyncio.Lock()  # the heartbeat and the steps share one generation
        self._beating: asyncio.Task[None] | None = None

    @property
    def id(self) -> int:
        assert self.record.id is not None
        return self.record.id

    @property
    def kind(self) -> str:
        return self.record.kind

    @property
    def instance_uuid(self) -> str:
        return self.record.instance_uuid

    @property
    def current_step(self) -> str:
        """The step last written (``step`` is the method that writes the next one)."""
        return self.record.step

    @property
    def inputs(self) -> dict[str, Any]:
        return dict(self.record.inputs)

    @property
    def claims(self) -> dict[str, Any]:
        return dict(self.record.claims)

    @property
    def state(self) -> str:
        return self.record.state

    async def step(self, name: str, **inputs: Any) -> None:
        """Write step ``name`` and its inputs, committed before this returns: call it
        before the step's side effect, never after."""
        await self._write(step=name, inputs={**self.record.inputs, **inputs})
        stop_if_asked(self.kind, name)

    async def hold(self, **claims: Any) -> None:
        """Record claims the task now holds (merged into those it held)."""
        await self._write(claims={**self.record.claims, **claims})

    async def destination(self, host_id: int | None) -> None:
        """The destination, once the scheduler chose it: reconcile leaves the server's
        domain there alone while the task is open, and recovery knows where to look."""
        await self._write(dest_host_id=host_id)

    async def finish(self, state: TaskRecordState | str, detail: str | None = None) -> None:
        """Close the task: done, rolled_back or failed."""
        state = TaskRecordState(state)
        if state not in CLOSED_STATES:
            raise ValueError(f"a task finishes done, rolled_back or failed, not {state}")
        await self._write(state=state, detail=detail)

    def start_heartbeat(self) -> None:
        """Beat every ``heartbeat_every`` seconds until ``close``: a runner that beats is
        not judged gone from another host. Starting it twice keeps the one beat."""
        if self._beating is None:
            self._beating = asyncio.create_task(self._heartbeat())

    async def close(self) -> None:
        """Stop the heartbeat (the row stays as it is: ``finish`` closes the task).
        Safe to call more than once, and whether or not it beat."""
        if self._beating is not None:
            beating, self._beating = self._beating, None
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating

    async def __aenter__(self) -> TaskHandle:
        self.start_heartbeat()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # An exception leaves the task open on purpose: once this process is gone, the
        # rule for its step finishes or undoes it (the caller rolls back what it can).
        await self.close()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_every)
            if self.record.state not in OPEN_TASK_STATES:
                return
            try:
                await self._write()
            except TaskTaken:
                return  # the next step() says so to the workflow
            except Exception:  # a busy or briefly unreachable DB: beat again next time
                continue

    async def _write(self, **changes: Any) -> None:
        """One short transaction: apply ``changes`` if the row is still at the generation
        this handle last wrote; the heartbeat rides along with every write."""
        if self.record.state not in OPEN_TASK_STATES:
            raise RuntimeError(f"task {self.id} is {self.record.state}; it takes no more writes")
        async with self._lock:
            now = utcnow()
            values = {
                **changes,
                "heartbeat_at": now,
                "updated_at": now,
                "generation": self.record.generation + 1,
            }
            async with self.db.session() as session:
                result = await session.exec(
                    update(TaskRecord)  # type: ignore[call-overload]
                    .where(
                        col(TaskRecord.id) == self.id,
                        col(TaskRecord.generation) == self.record.generation,
                    )
                    .values(**values)
                )
                if result.rowcount != 1:
                    raise await self._taken(session)
            for key, value in values.items():
                setattr(self.record, key, value)

    async def _taken(self, session: AsyncSession) -> TaskTaken:
        row = await session.get(TaskRecord, self.id)
        by = f" by {Runner.of(row)}" if row is not None else ""
        return TaskTaken(
            f"task {self.id} ({self.kind} of server {self.instance_uuid}) was taken over{by} "
            f"for recovery; this process ({self.runner}) stops here"
        )


class TaskJournal:
    """Opens tasks for this process (``Runner.here()`` unless told otherwise)."""

    def __init__(
        self,
        db: Database,
        *,
        runner: Runner | None = None,
        heartbeat_every: float = HEARTBEAT_EVERY,
    ) -> None:
        self.db = db
        self.runner = runner or Runner.here()
        self.heartbeat_every = heartbeat_every

    async def open(
        self,
        kind: str,
        instance_uuid: str,
        *,
        step: str,
        action_id: int | None = None,
        migration_uuid: str | None = None,
        source_host_id: int | None = None,
        dest_host_id: int | None = None,
        inputs: dict[str, Any] | None = None,
        claims: dict[str, Any] | None = None,
    ) -> TaskHandle:
        """Write the task's row, running, at its first step (committed on return)."""
        now = utcnow()
        record = TaskRecord(
            kind=kind,
            instance_uuid=instance_uuid,
            action_id=action_id,
            migration_uuid=migration_uuid,
            source_host_id=source_host_id,
            dest_host_id=dest_host_id,
            step=step,
            inputs=dict(inputs or {}),
            claims=dict(claims or {}),
            state=TaskRecordState.RUNNING,
            **_runner_fields(self.runner),
            heartbeat_at=now,
            generation=0,
            created_at=now,
            updated_at=now,
        )
        async with self.db.session() as session:
            session.add(record)
        stop_if_asked(kind, step)
        return TaskHandle(self.db, record, self.runner, self.heartbeat_every)


def stop_if_asked(kind: str, step: str) -> None:
    """SIGKILL this process if the test-only STOP_AT_ENV names this step, just written."""
    if os.environ.get(STOP_AT_ENV) == f"{kind}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def _runner_fields(runner: Runner) -> dict[str, Any]:
    return {
        "runner_host": runner.host,
        "runner_pid": runner.pid,
        "runner_boot_id": runner.boot_id,
        "runner_started": runner.started,
    }


async def open_tasks(db: Database, instance_uuid: str | None = None) -> list[TaskRecord]:
    """Tasks running or being recovered (of one server, or all), oldest first."""
    query = select(TaskRecord).where(col(TaskRecord.state).in_(OPEN_TASK_STATES))
    if instance_uuid is not None:
        query = query.where(TaskRecord.instance_uuid == instance_uuid)
    async with db.read() as session:
        return list((await session.exec(query.order_by(col(TaskRecord.id)))).all())


async def orphans(
    db: Database, now: datetime | None = None, stale_after: float = STALE_AFTER
) -> list[TaskRecord]:
    """Open tasks whose runner is gone: a recovery's to finish or undo (``take_over``)."""
    judge = Runner.here()
    return [t for t in await open_tasks(db) if judge.gone(t, now, stale_after)]


async def take_over(
    db: Database,
    record: TaskRecord,
    *,
    runner: Runner | None = None,
    heartbeat_every: float = HEARTBEAT_EVERY,
) -> TaskHandle | None:
    """Make this process the task's runner, state recovering, if the row is still as
    ``record`` saw it; None if it moved on (another recoverer won, or the runner beat)."""
    runner = runner or Runner.here()
    now = utcnow()
    values = {
        **_runner_fields(runner),
        "state": TaskRecordState.RECOVERING,
        "heartbeat_at": now,
        "updated_at": now,
        "generation": record.generation + 1,
    }
    async with db.session() as session:
        result = await session.exec(
            update(TaskRecord)  # type: ignore[call-overload]
            .where(
                col(TaskRecord.id) == record.id,
                col(TaskRecord.generation) == record.generation,
                col(TaskRecord.state).in_(OPEN_TASK_STATES),
            )
            .values(**values)
        )
        if result.rowcount != 1:
            return None
    taken = TaskRecord(**{**record.model_dump(), **values})
    return TaskHandle(db, taken, runner, heartbeat_every)


def hosts_in_task(tasks: Iterable[TaskRecord]) -> dict[str, set[int]]:
    """Server uuid -> the hosts its open tasks name (source and destination): where a
    domain of it may be the task's, whatever the DB says the server's host is."""
    named: dict[str, set[int]] = {}
    for task in tasks:
        hosts = named.setdefault(task.instance_uuid, set())
        hosts.update(h for h in (task.source_host_id, task.dest_host_id) if h is not None)
    return named
