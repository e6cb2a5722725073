"""Server actions after the first boot: which states allow them, and what they lead to.

Nova's ``check_instance_state`` as a table: an action runs only from the vm_states it
lists and only when no other task is running. ``begin`` takes the task atomically (one
UPDATE ... WHERE task_state IS NULL), so two actions racing on one server cannot both
start: the loser is refused with a message naming the state it found.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from orchestrator.db.models import POWER_OF, Instance, PowerState, VmState, utcnow
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
    "evacuate": ActionRule((V.ACTIVE, V.STOPPED, V.ERROR, V.PAUSED, V.SUSPENDED), "rebuilding"),
}
POWER_ACTIONS = tuple(name for name, rule in RULES.items() if rule.agent_action)


async def begin(db: AsyncSession, instance: Instance, action: str) -> Instance:
    """Take the server's task for ``action`` or refuse, atomically."""
    rule = RULES[action]
    result = await db.exec(
        update(Instance)  # type: ignore[call-overload]
        .where(
            col(Instance.uuid) == instance.uuid,
            col(Instance.task_state).is_(None),
            col(Instance.vm_state).in_(rule.allowed),
        )
        .values(task_state=rule.task_state, updated_at=utcnow())
    )
    row = (await db.exec(select(Instance).where(Instance.uuid == instance.uuid))).one()
    await db.refresh(row)
    if result.rowcount != 1:
        allowed = ", ".join(rule.allowed)
        raise Conflict(
            f"cannot {action.replace('_', ' ')} server {row.name}: it is vm_state {row.vm_state}, "
            f"task_state {row.task_state or 'none'} (needs vm_state {allowed} and no task running)"
        )
    return row


def apply_result(instance: Instance, op: str, ok: bool, result: dict[str, Any]) -> None:
    """The DB side of a finished lifecycle job (called from the conductor's apply_job)."""
    instance.task_state = None
    if not ok:
        if op in ("rebuild", "evacuate"):
            instance.vm_state = V.ERROR  # as Nova: the old disk is gone
            instance.power_state = PowerState.NOSTATE
        return
    power = POWER_OF.get(str(result.get("state")), PowerState.NOSTATE)
    instance.power_state = power
    rule = RULES.get(op)
    if rule is not None and rule.end_state is not None:
        instance.vm_state = rule.end_state
    elif op in ("rebuild", "evacuate"):
        instance.vm_state = V.ACTIVE if power == PowerState.RUNNING else V.STOPPED
        instance.launched_at = utcnow()
