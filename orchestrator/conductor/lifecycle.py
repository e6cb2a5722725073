"""Server actions after the first boot: which states allow them, and what they lead to.

Nova's ``check_instance_state`` as a table: an action runs only from the vm_states it
lists and only when no other task is running. ``begin`` takes the task atomically (one
UPDATE ... WHERE task_state IS NULL), so two actions racing on one server cannot both
start: the loser is refused with a message naming the state it found.

A task belongs to the instance action that took it (``Instance.task_action_id``), and
only that action moves it on or ends it: every later write goes through ``hold``, an
UPDATE ... WHERE task_action_id = mine that also locks the row for the rest of the
transaction. A task_state alone would not do (Nova's expected_task_state): two actions
one after the other take the same "powering-off", and the first, late, would end the
second's. A delete takes over a build or a power action (which then stop, or find
their late results ignored) but is refused while a move runs; ``take_over`` is
reconcile's one way to end a task it did not take, once it judged it abandoned.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import or_, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from orchestrator.db.models import (
    POWER_OF,
    Instance,
    InstanceAction,
    PowerState,
    TaskState,
    VmState,
    utcnow,
)
from orchestrator.errors import Conflict

V = VmState


@dataclass(frozen=True)
class ActionRule:
    allowed: tuple[str, ...]  # vm_states the action may start from
    task_state: str  # while it runs
    agent_action: str | None = None  # the agent's power action, for power jobs
    end_state: str | None = None  # vm_state on success (None: from the domain's state)


RULES: dict[str, ActionRule] = {
    "start": ActionRule((V.STOPPED,), "powering-on", "start", V.ACTIVE),
    "stop": ActionRule((V.ACTIVE, V.PAUSED, V.ERROR), "powering-off", "stop", V.STOPPED),
    "reboot": ActionRule((V.ACTIVE,), "rebooting", "reboot", V.ACTIVE),
    "hard_reboot": ActionRule(
        (V.ACTIVE, V.STOPPED, V.PAUSED, V.SUSPENDED, V.ERROR),
        "rebooting_hard",
        "hard_reboot",
        V.ACTIVE,
    ),
    "pause": ActionRule((V.ACTIVE,), "pausing", "pause", V.PAUSED),
    "unpause": ActionRule((V.PAUSED,), "unpausing", "unpause", V.ACTIVE),
    "suspend": ActionRule((V.ACTIVE, V.PAUSED), "suspending", "suspend", V.SUSPENDED),
    "resume": ActionRule((V.SUSPENDED,), "resuming", "resume", V.ACTIVE),
    "rebuild": ActionRule((V.ACTIVE, V.STOPPED, V.ERROR), "rebuilding"),
    "migrate": ActionRule((V.ACTIVE, V.STOPPED), "migrating"),
    "live_migrate": ActionRule((V.ACTIVE,), "migrating"),
    "resize": ActionRule((V.ACTIVE, V.STOPPED), "resize_prep"),
    "confirm_resize": ActionRule((V.RESIZED,), "resize_confirming"),
    "revert_resize": ActionRule((V.RESIZED,), "resize_reverting"),
    "evacuate": ActionRule(
        (V.ACTIVE, V.STOPPED, V.ERROR, V.PAUSED, V.SUSPENDED, V.RESCUED), "rebuilding"
    ),
    # Hot (running or paused) or cold (stopped); a suspended guest's saved state would
    # not match a changed definition.
    "attach_volume": ActionRule((V.ACTIVE, V.STOPPED, V.PAUSED), "attaching-volume"),
    "detach_volume": ActionRule((V.ACTIVE, V.STOPPED, V.PAUSED, V.ERROR), "detaching-volume"),
    "image_create": ActionRule((V.ACTIVE, V.STOPPED, V.PAUSED), "image-snapshot"),
    "shelve": ActionRule((V.ACTIVE, V.STOPPED, V.PAUSED), "shelving"),
    "unshelve": ActionRule((V.SHELVED_OFFLOADED,), "unshelving"),
    "rescue": ActionRule((V.ACTIVE, V.STOPPED, V.ERROR), "rescuing"),
    "unrescue": ActionRule((V.RESCUED,), "unrescuing"),
}
# Moves that do not carry volumes (yet): refused, naming them, rather than leave one
# behind. A cold migration and a resize carry them; a rebuild keeps them (the same host).
REFUSED_WITH_VOLUMES = ("live_migrate", "evacuate")
POWER_ACTIONS = tuple(name for name, rule in RULES.items() if rule.agent_action)

# What a delete may take over, as Nova lets a delete interrupt almost anything: a build
# (it notices and stops), a power action (one job on the server's own host, whose late
# result is then ignored), another delete (the host's delete is idempotent). Moves,
# rebuilds and resizes are refused instead: herd drives them step by step across hosts
# from one process, and one that lost its server half-way could start it on the
# destination. Reconcile clears an abandoned one, so a delete always succeeds in the end.
DELETE_TAKES_OVER: tuple[str, ...] = (
    TaskState.SCHEDULING,
    TaskState.BLOCK_DEVICE_MAPPING,
    TaskState.NETWORKING,
    TaskState.SPAWNING,
    TaskState.DELETING,
    *(rule.task_state for rule in RULES.values() if rule.agent_action),
)


class TaskTaken(Conflict):
    """The action no longer holds the server's task: a delete or reconcile took it."""


@dataclass(frozen=True)
class TaskSeen:
    """A task as reconcile saw it in its snapshot, to end it only if it is still that."""

    task_state: str | None
    task_action_id: int | None
    updated_at: datetime | None

    @classmethod
    def of(cls, instance: Instance) -> TaskSeen:
        return cls(instance.task_state, instance.task_action_id, instance.updated_at)


async def begin(db: AsyncSession, instance: Instance, action: str, action_id: int) -> Instance:
    """Take the server's task for ``action`` (the instance action ``action_id``) or
    refuse, atomically."""
    rule = RULES[action]
    result = await db.exec(
        update(Instance)  # type: ignore[call-overload]
        .where(
            col(Instance.uuid) == instance.uuid,
            col(Instance.task_state).is_(None),
            col(Instance.vm_state).in_(rule.allowed),
        )
        .values(task_state=rule.task_state, task_action_id=action_id, updated_at=utcnow())
    )
    row = await _reread(db, instance.uuid)
    if result.rowcount != 1:
        allowed = ", ".join(rule.allowed)
        raise Conflict(
            f"cannot {action.replace('_', ' ')} server {row.name}: it is vm_state {row.vm_state}, "
            f"task_state {row.task_state or 'none'} (needs vm_state {allowed} and no task running)"
        )
    return row


async def begin_delete(db: AsyncSession, instance: Instance, action_id: int) -> Instance | None:
    """Take the server's task for a delete, over any task in ``DELETE_TAKES_OVER``; None
    if it is deleted already, Conflict while a move runs."""
    result = await db.exec(
        update(Instance)  # type: ignore[call-overload]
        .where(
            col(Instance.uuid) == instance.uuid,
            col(Instance.vm_state) != VmState.DELETED,
            or_(
                col(Instance.task_state).is_(None),
                col(Instance.task_state).in_(DELETE_TAKES_OVER),
            ),
        )
        .values(task_state=TaskState.DELETING, task_action_id=action_id, updated_at=utcnow())
    )
    row = await _reread(db, instance.uuid)
    if result.rowcount == 1:
        return row
    if row.vm_state == VmState.DELETED:
        return None
    running = await db.get(InstanceAction, row.task_action_id) if row.task_action_id else None
    what = f"{running.action} ({running.request_id})" if running else "another action"
    raise Conflict(
        f"cannot delete server {row.name} while {what} runs (task_state {row.task_state}): "
        f"wait for it (`herd server wait {row.name}`); if its herd was killed, "
        "`herd reconcile` clears the abandoned task"
    )


async def hold(db: AsyncSession, instance_uuid: str, action_id: int | None) -> Instance | None:
    """The server's row, locked for this transaction, if ``action_id`` still holds its
    task; None if another took it over. Every write that moves a task on or ends it
    comes after a ``hold``; bumping updated_at also tells reconcile the task is alive."""
    if action_id is None:
        return None
    result = await db.exec(
        update(Instance)  # type: ignore[call-overload]
        .where(col(Instance.uuid) == instance_uuid, col(Instance.task_action_id) == action_id)
        .values(updated_at=utcnow())
    )
    if result.rowcount != 1:
        return None
    return await _reread(db, instance_uuid)


async def held(db: AsyncSession, instance_uuid: str, action_id: int | None, doing: str) -> Instance:
    """``hold``, or ``TaskTaken`` saying what stopped (``doing``) and who has the task."""
    row = await hold(db, instance_uuid, action_id)
    if row is not None:
        return row
    row = await _reread(db, instance_uuid)
    now = f"task_state {row.task_state}" if row.task_state else "no task"
    raise TaskTaken(
        f"server {row.name}: {doing} stopped: its task was taken over meanwhile "
        f"(now vm_state {row.vm_state}, {now})"
    )


async def take_over(db: AsyncSession, instance_uuid: str, seen: TaskSeen) -> Instance | None:
    """Reconcile's explicit takeover of a task it judged abandoned: the row, locked, if
    the task is still exactly as seen (no step taken since), else None.

    Compared here rather than in SQL: a timestamp an operator wrote by hand
    ('2026-12-01 20:00:00') would never equal the one SQLAlchemy binds for it."""
    await db.exec(  # lock the row (the database, on SQLite) before reading it
        update(Instance)  # type: ignore[call-overload]
        .where(col(Instance.uuid) == instance_uuid)
        .values(updated_at=col(Instance.updated_at))
    )
    row = await _reread(db, instance_uuid)
    if TaskSeen.of(row) != seen:
        return None
    row.updated_at = utcnow()
    return row


def end_task(instance: Instance) -> None:
    """The task is over (the caller holds it): the server is free for the next action."""
    instance.task_state = None
    instance.task_action_id = None


async def _reread(db: AsyncSession, instance_uuid: str) -> Instance:
    row = (await db.exec(select(Instance).where(Instance.uuid == instance_uuid))).one()
    await db.refresh(row)
    return row


def apply_result(instance: Instance, op: str, ok: bool, result: dict[str, Any]) -> None:
    """The DB side of a finished lifecycle job (called from the conductor's apply_job,
    which holds the task)."""
    end_task(instance)
    if not ok:
        if op in ("rebuild", "evacuate"):
            instance.vm_state = V.ERROR  # as Nova: the old disk is gone
            instance.power_state = PowerState.NOSTATE
        elif op == "unshelve":  # its image is still there: shelved again, to unshelve anew
            instance.vm_state, instance.host_id = V.SHELVED_OFFLOADED, None
            instance.power_state = PowerState.NOSTATE
        return
    power = POWER_OF.get(str(result.get("state")), PowerState.NOSTATE)
    instance.power_state = power
    rule = RULES.get(op)
    if rule is not None and rule.end_state is not None:
        instance.vm_state = rule.end_state
    elif op in ("rebuild", "evacuate", "unshelve"):
        instance.vm_state = V.ACTIVE if power == PowerState.RUNNING else V.STOPPED
        instance.launched_at = utcnow()
