"""Recovery: finish or undo a task whose runner is gone, by the task's rule for its step.

A task's journal row (conductor/journal.py) says which step it had reached; the task
class says what that step means after a crash (its ``RECOVERY`` table, and ``resume``
which applies it, asking the hosts where the answer is theirs: "does the destination
have the domain?"). `herd reconcile` recovers every orphaned task, `herd server wait`
those of the servers it waits for, and any command that finds a server held by a dead
task recovers it before it starts. A host that cannot answer leaves the task open (its
domains untouched by reconcile) for the next recovery: "no answer" never counts as "not
there".
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlmodel import select

from orchestrator.conductor import journal
from orchestrator.db.models import Host, Instance, Migration, TaskRecord
from orchestrator.errors import HerdError

if TYPE_CHECKING:
    from orchestrator.conductor.manager import Conductor
    from orchestrator.conductor.tasks.base import Task


@dataclass(frozen=True)
class Recovery:
    """What recovery did with one task, for the CLI's table and --json."""

    task_id: int
    kind: str
    uuid: str
    server: str
    step: str
    outcome: str  # done | rolled_back | failed | waits
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task_id, "kind": self.kind, "uuid": self.uuid, "server": self.server,
            "step": self.step, "outcome": self.outcome, "detail": self.detail,
        }  # fmt: skip


def task_classes() -> dict[str, type[Task]]:
    """The journalled tasks by kind (imported here: every task imports this module's
    callers, the steps)."""
    from orchestrator.conductor.tasks.attach import AttachVolumeTask, DetachVolumeTask
    from orchestrator.conductor.tasks.evacuate import EvacuateTask
    from orchestrator.conductor.tasks.image_create import ImageCreateTask
    from orchestrator.conductor.tasks.live_migrate import LiveMigrateTask
    from orchestrator.conductor.tasks.migrate import MigrateTask
    from orchestrator.conductor.tasks.rebuild import RebuildTask
    from orchestrator.conductor.tasks.rescue import RescueTask, UnrescueTask
    from orchestrator.conductor.tasks.resize import (
        ConfirmResizeTask,
        ResizeTask,
        RevertResizeTask,
    )
    from orchestrator.conductor.tasks.shelve import ShelveTask, UnshelveTask

    classes: list[type[Task]] = [
        MigrateTask, ResizeTask, ConfirmResizeTask, RevertResizeTask, LiveMigrateTask,
        EvacuateTask, RebuildTask, AttachVolumeTask, DetachVolumeTask, ImageCreateTask,
        ShelveTask, UnshelveTask, RescueTask, UnrescueTask,
    ]  # fmt: skip
    return {c.kind: c for c in classes}


TABLE_BEGIN = "<!-- recovery-table:begin -->"
TABLE_END = "<!-- recovery-table:end -->"


def recovery_table_markdown() -> str:
    """The task x step table of what recovery does, from the task classes' ``RECOVERY``:
    README.md carries it between ``TABLE_BEGIN`` and ``TABLE_END`` (regenerate it with
    `python -m orchestrator.conductor.recovery`), so the manual cannot drift from the code."""
    rows = ["| task | step it stopped at | what recovery does |", "|---|---|---|"]
    for kind, cls in task_classes().items():
        for step, rule in cls.RECOVERY.items():
            cell = rule.replace("|", "\\|")  # a pipe would end the cell
            rows.append(f"| `{kind}` | `{step}` | {cell} |")
    return "\n".join(rows) + "\n"


async def recover(
    conductor: Conductor, instance_uuids: Collection[str] | None = None
) -> list[Recovery]:
    """Every orphaned task (of these servers, or all), servers concurrently."""
    records = [
        r
        for r in await journal.orphans(conductor.db)
        if instance_uuids is None or r.instance_uuid in instance_uuids
    ]
    done = await asyncio.gather(*(recover_one(conductor, r) for r in records))
    return [r for r in done if r is not None]


async def recover_one(conductor: Conductor, record: TaskRecord) -> Recovery | None:
    """Take the task over (None if another process won it) and apply its step's rule."""
    from orchestrator.conductor.tasks.base import Resumed, closing_state

    died = str(journal.Runner.of(record))
    handle = await journal.take_over(conductor.db, record)
    if handle is None:
        return None
    instance, source, dest, migration = await _rows(conductor, record)
    cls = task_classes().get(record.kind)
    name = instance.name if instance else record.instance_uuid
    if instance is None or cls is None or record.action_id is None:
        why = "its server is gone" if instance is None else f"no recovery for {record.kind}"
        await handle.finish("failed", why)
        return Recovery(
            handle.id, record.kind, record.instance_uuid, name, record.step, "failed", why
        )
    found = Resumed(instance, record.action_id, source, dest, migration, died)
    try:
        outcome = await cls.resume(conductor, handle, found)  # type: ignore[attr-defined]
    except HerdError as exc:
        return Recovery(
            handle.id, record.kind, record.instance_uuid, name, record.step, "waits", str(exc)
        )
    finally:
        await handle.close()  # the resumed task's heartbeat, if it started one
    state = closing_state(outcome)
    if handle.state in journal.OPEN_TASK_STATES:
        await handle.finish(state, outcome.error)
    return Recovery(
        handle.id, record.kind, record.instance_uuid, name, record.step, str(state), outcome.error
    )


async def _rows(
    conductor: Conductor, record: TaskRecord
) -> tuple[Instance | None, Host | None, Host | None, Migration | None]:
    async with conductor.db.read() as db:
        instance = (
            await db.exec(select(Instance).where(Instance.uuid == record.instance_uuid))
        ).first()
        source = await db.get(Host, record.source_host_id) if record.source_host_id else None
        dest = await db.get(Host, record.dest_host_id) if record.dest_host_id else None
        migration = (
            (
                await db.exec(select(Migration).where(Migration.uuid == record.migration_uuid))
            ).first()
            if record.migration_uuid
            else None
        )
    return instance, source, dest, migration


if __name__ == "__main__":
    print(TABLE_BEGIN)
    print(recovery_table_markdown(), end="")
    print(TABLE_END)
