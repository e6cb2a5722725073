"""What every task is: one workflow on one server, journalled step by step.

As Nova's ``TaskBase``: ``execute()`` is the same for every task and wraps the task's own
``_execute()``, whose body reads as its steps. A move opens its journal row
(conductor/journal.py) once it holds the server's task, and every step recorded through
``Steps.step`` is written there before its side effect; ``execute()`` closes the row
with what the outcome says. If the process dies instead, the row stays open with its
step, and ``recover()`` — run by `herd reconcile`, `herd server wait` or the next command
on the server — finishes the task forward or rolls it back by the task's rule for that
step (``RECOVERY``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from orchestrator.conductor.actions import record_event
from orchestrator.conductor.journal import TaskHandle, TaskJournal
from orchestrator.conductor.manager import Conductor
from orchestrator.conductor.outcomes import Outcome
from orchestrator.conductor.steps import Steps
from orchestrator.db.models import Host, Instance, Migration, TaskRecordState, VmState
from orchestrator.errors import HerdError


@dataclass(frozen=True)
class Resumed:
    """What recovery read back for a task whose runner died: the rows its journal names."""

    instance: Instance
    action_id: int
    source: Host | None
    dest: Host | None
    migration: Migration | None
    died: str  # the runner recovery found gone: "pid 4242 on ops1"


class Task(ABC):
    """A workflow on one server. ``kind`` names it in the journal; ``RECOVERY`` says,
    for each step it journals, what recovery does when its runner died there."""

    kind: ClassVar[str]
    RECOVERY: ClassVar[dict[str, str]] = {}

    def __init__(self, conductor: Conductor) -> None:
        self.conductor = conductor
        self.steps = Steps(conductor)
        self.db = conductor.db
        self.agent = conductor.agent
        self.progress = conductor.progress
        self.journal: TaskHandle | None = None
        self.died = ""

    async def execute(self) -> Outcome:
        try:
            outcome = await self._execute()
        finally:
            if self.journal is not None:
                await self.journal.close()  # its heartbeat stops
        if self.journal is not None and self.journal.state in ("running", "recovering"):
            await self.journal.finish(closing_state(outcome), outcome.error)
        return outcome

    @abstractmethod
    async def _execute(self) -> Outcome: ...

    async def open_journal(
        self,
        row: Instance,
        action_id: int,
        *,
        step: str = "begin",
        source_host_id: int | None = None,
        dest_host_id: int | None = None,
        migration_uuid: str | None = None,
        inputs: dict[str, Any] | None = None,
        claims: dict[str, Any] | None = None,
    ) -> TaskHandle:
        """Write the task down before its first side effect; from here on every step
        ``Steps.step`` records goes to the journal first, and the heartbeat runs."""
        handle = await TaskJournal(self.db).open(
            self.kind, row.uuid, step=step, action_id=action_id,
            source_host_id=source_host_id, dest_host_id=dest_host_id,
            migration_uuid=migration_uuid, inputs=inputs, claims=claims,
        )  # fmt: skip
        return await self.adopt(handle)

    async def adopt(self, handle: TaskHandle, died: str = "") -> TaskHandle:
        """Run under ``handle`` (a new task's, or one recovery took over from ``died``)."""
        self.died = died
        self.journal = self.steps.journal = handle
        handle.start_heartbeat()
        return handle

    async def held_host(self, found: Resumed) -> Host | None:
        """The host a resumed task finishes on; None (and noted) when its action no
        longer holds the server: it ended, or another action took the server since, and
        nothing may be done on a host in its name."""
        if found.instance.task_action_id != found.action_id:
            await self.note("its action no longer holds the server: nothing to do")
            return None
        if found.source is None:
            raise HerdError(f"server {found.instance.name}: the host its task ran on is gone")
        return found.source

    async def note(self, what: str) -> None:
        """Say in the server's action log what recovery found and does: its ``recover``
        event names the dead runner and the step it died at."""
        assert self.journal is not None
        record = self.journal.record
        async with self.db.session() as db:
            await record_event(
                db, record.action_id, "recover", True, None,
                f"{self.kind} found at step {record.step}, its runner ({self.died}) gone: {what}",
            )  # fmt: skip


def closing_state(outcome: Outcome) -> TaskRecordState:
    """How a task's row closes, from its outcome: done; rolled back (an error, the
    server where it was); failed (the server left in ERROR)."""
    if outcome.error is None:
        return TaskRecordState.DONE
    if outcome.vm_state == VmState.ERROR:
        return TaskRecordState.FAILED
    return TaskRecordState.ROLLED_BACK
