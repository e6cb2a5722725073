"""A server's serial console: its log (through the agent) and where to attach to it.

The log is what virtlogd wrote from the guest's serial port, read by the agent, so it
works whatever state the guest is in, and after it stopped. Attaching is the CLI's: it
bridges the operator's terminal to ``virsh console`` on the target given here
(cli/console_attach.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.api import servers as servers_api
from orchestrator.conductor.hosts import target_of
from orchestrator.db.engine import Database
from orchestrator.db.models import Host, Instance
from orchestrator.errors import Conflict
from orchestrator.rpc.agent_api import AgentAPI
from orchestrator.rpc.pool import AgentPool
from orchestrator.rpc.ssh import HostTarget


@dataclass(frozen=True)
class ConsoleLog:
    server: str
    host: str
    lines: list[str]
    truncated: bool


async def _located(db: Database, ref: str) -> tuple[Instance, Host]:
    (instance,) = await servers_api.find_servers(db, [ref])
    async with db.read() as session:
        host = await session.get(Host, instance.host_id) if instance.host_id else None
    if host is None:
        raise Conflict(
            f"server {instance.name} is not on any host (vm_state {instance.vm_state}): "
            "it has no console"
        )
    return instance, host


async def console_log(db: Database, pool: AgentPool, ref: str, lines: int) -> ConsoleLog:
    instance, host = await _located(db, ref)
    result = await AgentAPI(pool).console_log(target_of(host), instance.uuid, lines, timeout=30)
    return ConsoleLog(instance.name, host.name, result["lines"], result["truncated"])


async def console_target(db: Database, ref: str) -> tuple[Instance, HostTarget]:
    instance, host = await _located(db, ref)
    return instance, target_of(host)
