"""The real agent, spoken to by the real session and pool over a local pipe.

No SSH and no root: the agent runs from this checkout as ``python -m agent serve``
with a state directory of its own and libvirt's ``test:///default`` driver (each virsh
call gets a fresh in-memory hypervisor), and herd's ``AgentSession`` reads and writes
its stdin/stdout as it would an SSH channel's. Jobs run in the agent's own runner
processes, journalled in that state directory.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from orchestrator.rpc.pool import AgentPool
from orchestrator.rpc.session import AgentSession
from orchestrator.rpc.ssh import HostTarget

REPO = Path(__file__).resolve().parents[3]
TEST_URI = "test:///default"


class _TextOut:
    """asyncssh's text stdin over asyncio's byte stream."""

    def __init__(self, stream: asyncio.StreamWriter) -> None:
        self._stream = stream

    def write(self, text: str) -> None:
        self._stream.write(text.encode())

    def write_eof(self) -> None:
        self._stream.close()


class _TextIn:
    """asyncssh's text stdout and stderr over asyncio's byte streams."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self._stream = stream

    async def readline(self) -> str:
        return (await self._stream.readline()).decode()

    def __aiter__(self) -> _TextIn:
        return self

    async def __anext__(self) -> str:
        line = await self.readline()
        if not line:
            raise StopAsyncIteration
        return line


class _PipeProcess:
    """The agent process as the session reads it: an SSH process's text streams."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        self.stdin = _TextOut(proc.stdin)
        self.stdout = _TextIn(proc.stdout)
        self.stderr = _TextIn(proc.stderr)


class _NoConnection:
    """What a session closes when it ends: here, nothing."""

    def close(self) -> None:
        return None

    async def wait_closed(self) -> None:
        return None


class PipePool(AgentPool):
    """An agent pool whose one host is the agent process behind ``session``."""

    def __init__(self, session: AgentSession) -> None:
        super().__init__()
        self.pipe = session

    async def session(self, target: HostTarget) -> AgentSession:
        return self.pipe


async def pipe_agent(name: str = "pipe-1") -> AsyncIterator[tuple[PipePool, HostTarget]]:
    """A started agent, said hello to; stopped, its state directory removed, after."""
    # Not pytest's tmp_path: a state_dir may have at most 80 characters.
    state = Path(tempfile.mkdtemp(prefix="herd-pipe-"))
    target = HostTarget(
        name=name,
        address="127.0.0.1",
        agent_dir=str(state / "state"),
        libvirt_uri=TEST_URI,
        domain_type="qemu",  # forced: no KVM probe
        image_source_dirs=(str(state / "sources"),),
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HERD_TEMPLATES_DIR": str(REPO / "templates"),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "serve",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=state,
    )  # fmt: skip
    session = AgentSession(target, _NoConnection(), None)  # type: ignore[arg-type]
    try:
        await session.speak(_PipeProcess(proc))  # type: ignore[arg-type]
        yield PipePool(session), target
    finally:
        await session.close()
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        shutil.rmtree(state, ignore_errors=True)
