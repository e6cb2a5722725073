"""Power actions: start, stop, reboot, hard_reboot, pause, unpause, suspend, resume.

One step: a durable ``power`` job on the server's host, collected through the
manager's one ``apply_job`` — so `herd server wait` and `herd reconcile` finish it too
when herd is killed half-way, and there is nothing to roll back before it runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from agent import specs as agent_specs
from orchestrator.conductor import lifecycle
from orchestrator.conductor.hosts import target_of
from orchestrator.conductor.manager import Conductor
from orchestrator.conductor.outcomes import Outcome, guard_outcome
from orchestrator.conductor.steps import FOLLOW_MARGIN, POWER_TIMEOUT, check_timeout
from orchestrator.conductor.tasks.base import Task
from orchestrator.db.models import Instance
from orchestrator.errors import Conflict
from orchestrator.rpc.agent_api import PowerArgs


class PowerTask(Task):
    kind = "power"

    def __init__(
        self,
        conductor: Conductor,
        instance: Instance,
        action: str,
        *,
        wait: bool = True,
        timeout: int = POWER_TIMEOUT,
    ) -> None:
        super().__init__(conductor)
        self.instance, self.action, self.wait, self.timeout = instance, action, wait, timeout

    async def _execute(self) -> Outcome:
        rule = lifecycle.RULES[self.action]
        try:
            row, action_id, host = await self.steps.begin(self.instance, self.action)
        except Conflict as exc:
            return guard_outcome(self.instance, str(exc))
        if host is None:
            return await self.steps.abort(row, action_id, None, "the server is on no host")
        args: PowerArgs = {"uuid": row.uuid, "action": rule.agent_action, "timeout": self.timeout}
        return await self.steps.cast(
            row, host, self.action,
            lambda job_id: self.agent.power(target_of(host), args, job_id=job_id),
            action_id, wait=self.wait,
            timeout=self.timeout + FOLLOW_MARGIN,
        )  # fmt: skip


async def power(
    conductor: Conductor,
    instances: Sequence[Instance],
    action: str,
    *,
    wait: bool = True,
    timeout: int = POWER_TIMEOUT,
) -> list[Outcome]:
    """The action on many servers at once; one refused or failing server does not hold
    up the others. ``--timeout`` is checked before any task is taken."""
    check_timeout(timeout, agent_specs.STOP_TIMEOUT)
    lifecycle.RULES[action]  # an unknown action is a KeyError before anything starts
    tasks = [PowerTask(conductor, i, action, wait=wait, timeout=timeout) for i in instances]
    return list(await asyncio.gather(*(t.execute() for t in tasks)))
