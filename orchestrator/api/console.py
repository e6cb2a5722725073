"""A server's serial console: its log (through the agent) and an interactive attach.

The log is what virtlogd wrote from the guest's serial port, read by the agent, so it
works whatever state the guest is in, and after it stopped. Attaching runs
``virsh console`` on the host over its own SSH channel with a pseudo-terminal, the
terminal in raw mode in between, exactly like ``ssh -t host virsh console``; virsh's
escape (Ctrl-]) ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import sys
import termios
import tty
from collections.abc import Iterator
from dataclasses import dataclass

import asyncssh

from orchestrator.api import servers as servers_api
from orchestrator.conductor.hosts import target_of
from orchestrator.db.engine import Database
from orchestrator.db.models import Host, Instance
from orchestrator.errors import Conflict, HostUnreachable
from orchestrator.rpc.agent_api import AgentAPI
from orchestrator.rpc.pool import AgentPool
from orchestrator.rpc.ssh import HostTarget, connect

ESCAPE = "Ctrl-]"


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


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """Raw mode while attached (every key goes to the guest), restored however we leave."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def attach(instance: Instance, target: HostTarget) -> int:
    """Bridge this terminal and the guest's serial console until virsh exits."""
    command = shlex.join(
        ["virsh", "-c", target.libvirt_uri, "console", "--force", f"herd-{instance.uuid}"]
    )
    conn = await connect(target)
    try:
        size = os.get_terminal_size(sys.stdout.fileno()) if sys.stdout.isatty() else None
        process = await conn.create_process(
            command,
            term_type=os.environ.get("TERM", "xterm"),
            term_size=(size.columns, size.lines) if size else (80, 24),
            encoding=None,
        )
        loop = asyncio.get_running_loop()
        stdin_fd = sys.stdin.fileno()

        def forward_key() -> None:
            data = os.read(stdin_fd, 1024)
            if data:
                process.stdin.write(data)
            else:
                loop.remove_reader(stdin_fd)
                process.stdin.write_eof()

        with raw_terminal(stdin_fd):
            loop.add_reader(stdin_fd, forward_key)
            try:
                while chunk := await process.stdout.read(4096):
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.buffer.flush()
            finally:
                loop.remove_reader(stdin_fd)
            await process.wait_closed()
        return process.exit_status or 0
    except (OSError, asyncssh.Error) as exc:
        raise HostUnreachable(f"host {target.name}: console connection lost: {exc}") from exc
    finally:
        conn.close()
