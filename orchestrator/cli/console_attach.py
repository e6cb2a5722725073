"""`herd server console`: this terminal bridged to the guest's serial console.

Attaching runs ``virsh console`` on the host over its own SSH channel with a
pseudo-terminal, the terminal in raw mode in between, exactly like
``ssh -t host virsh console``; virsh's escape (Ctrl-]) ends it. It is the CLI's because
it drives the operator's terminal; the API only says where the server's console is
(api/console.py: console_target).
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

import asyncssh

from orchestrator.db.models import Instance
from orchestrator.errors import HostUnreachable
from orchestrator.rpc.ssh import HostTarget, connect

ESCAPE = "Ctrl-]"


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
