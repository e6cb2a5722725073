"""One long-lived agent process per host, spoken to over one SSH channel.

Opening a channel and starting Python costs a hundred milliseconds or more; a request
over an open channel costs well under one. So a session pushes the bundle if needed,
starts the agent once, and multiplexes every request over its stdin/stdout by request
id (see docs/protocol.md). When the channel breaks, every waiting request fails with
``HostUnreachable``; the pool opens a fresh session for the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
from pathlib import Path
from typing import Any

import asyncssh

from orchestrator import __version__
from orchestrator.errors import AgentError, HostUnreachable
from orchestrator.rpc.agent_api import AgentAPI
from orchestrator.rpc.bundle import AgentBundle, agent_bundle
from orchestrator.rpc.ssh import HostTarget, connect

log = logging.getLogger(__name__)

PROTOCOL = 1
REMOTE_DIR = ".cache/herd"
SYSTEM_PYTHON = "/usr/bin/python3"


class AgentSession:
    def __init__(
        self, target: HostTarget, conn: asyncssh.SSHClientConnection, bundle: AgentBundle
    ) -> None:
        self.target = target
        self.conn = conn
        self.bundle = bundle
        self.hello: dict[str, Any] = {}
        self._process: asyncssh.SSHClientProcess[str] | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._write_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed: BaseException | None = None

    @classmethod
    async def open(cls, target: HostTarget, bundle: AgentBundle | None = None) -> AgentSession:
        conn = await connect(target)
        session = cls(target, conn, bundle or agent_bundle())
        try:
            await session._start()
        except BaseException:
            session.conn.close()
            raise
        return session

    @property
    def facts(self) -> dict[str, Any]:
        return self.hello.get("facts", {})

    @property
    def closed(self) -> bool:
        return self._closed is not None

    async def _start(self) -> None:
        remote = f"{REMOTE_DIR}/{self.bundle.remote_name}"
        try:
            async with self.conn.start_sftp_client() as sftp:
                if not await sftp.exists(remote):
                    await self._push_bundle(sftp, remote)
            # A fixed command: the hash is ours, everything else travels as JSON. The
            # system's own Python when there is one: a login shell's PATH may put a
            # version manager's shim first (pyenv's costs ~100 ms and a lock per start).
            process = await self.conn.create_process(
                f"if [ -x {SYSTEM_PYTHON} ]; then exec {SYSTEM_PYTHON} {remote} serve; "
                f"else exec python3 {remote} serve; fi"
            )
        except (OSError, asyncssh.Error) as exc:
            raise HostUnreachable(
                f"host {self.target.name}: cannot start the agent: {exc}"
            ) from exc
        await self.speak(process)

    async def speak(self, process: asyncssh.SSHClientProcess[str]) -> None:
        """Read the agent's answers and log from its started process, and say hello:
        apart from ``_start`` so that a test can run the agent over a local pipe."""
        self._process = process
        self._tasks = [
            asyncio.create_task(self._read_responses(), name=f"agent-read-{self.target.name}"),
            asyncio.create_task(self._drain_log(), name=f"agent-log-{self.target.name}"),
        ]
        hello: dict[str, Any] = dict(await AgentAPI.hello(self.call, self.target))
        if hello.get("protocol") != PROTOCOL:
            raise AgentError(
                f"host {self.target.name}: agent speaks protocol {hello.get('protocol')}, "
                f"herd {__version__} speaks {PROTOCOL}"
            )
        self.hello = hello

    async def _push_bundle(self, sftp: asyncssh.SFTPClient, remote: str) -> None:
        await sftp.makedirs(REMOTE_DIR, exist_ok=True)
        partial = f"{remote}.{secrets.token_hex(4)}.part"
        async with sftp.open(partial, "wb") as handle:
            await handle.write(self.bundle.data)
        # Rename into place so a concurrent orchestrator never starts a half file.
        await sftp.posix_rename(partial, remote)
        log.info("host %s: pushed agent bundle %s", self.target.name, self.bundle.sha256[:12])

    async def _read_responses(self) -> None:
        assert self._process is not None
        reason: BaseException = HostUnreachable(
            f"host {self.target.name}: the agent session closed"
        )
        try:
            while True:
                line = await self._process.stdout.readline()
                if not line:
                    break
                try:
                    message = json.loads(line)
                except json.JSONDecodeError:
                    log.warning(
                        "host %s: agent wrote a non-JSON line: %.200s", self.target.name, line
                    )
                    continue
                future = self._pending.pop(message.get("id"), None)
                if future is not None and not future.done():
                    future.set_result(message)
        except (OSError, asyncssh.Error) as exc:
            reason = HostUnreachable(f"host {self.target.name}: lost the agent session: {exc}")
        finally:
            self._fail_all(reason)

    async def _drain_log(self) -> None:
        assert self._process is not None
        with contextlib.suppress(OSError, asyncssh.Error):
            async for line in self._process.stderr:
                log.debug("host %s agent: %s", self.target.name, line.rstrip())

    def _fail_all(self, reason: BaseException) -> None:
        if self._closed is None:
            self._closed = reason
        for future in self._pending.values():
            if not future.done():
                future.set_exception(reason)
        self._pending.clear()

    async def call(self, op: str, args: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
        """Send one request and wait for its answer, at most ``timeout`` seconds."""
        if self._closed is not None:
            raise self._closed
        assert self._process is not None
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        line = json.dumps({"v": PROTOCOL, "id": request_id, "op": op, "args": args or {}})
        try:
            async with self._write_lock:
                self._process.stdin.write(line + "\n")
            message = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise HostUnreachable(
                f"host {self.target.name}: the agent did not answer {op!r} within {timeout:g}s"
            ) from None
        except (OSError, asyncssh.Error) as exc:
            self._fail_all(
                HostUnreachable(f"host {self.target.name}: lost the agent session: {exc}")
            )
            raise self._closed from exc  # type: ignore[misc]
        finally:
            self._pending.pop(request_id, None)
        if message.get("ok"):
            return message.get("result")
        error = message.get("error") or {}
        raise AgentError(
            f"host {self.target.name}: {op}: {error.get('message', 'unknown error')}",
        )

    async def upload(self, local: Path, remote: str) -> None:
        """Copy a file to the host over this connection's SFTP (images, seeds)."""
        try:
            async with self.conn.start_sftp_client() as sftp:
                await sftp.makedirs(str(Path(remote).parent), exist_ok=True)
                await sftp.put(str(local), remote)
        except (OSError, asyncssh.Error) as exc:
            raise HostUnreachable(
                f"host {self.target.name}: upload of {local.name} failed: {exc}"
            ) from exc

    async def download(self, remote: str, local: Path) -> int:
        """Copy a file from the host (a migrating server's disk); returns its size."""
        try:
            async with self.conn.start_sftp_client() as sftp:
                await sftp.get(remote, str(local))
        except (OSError, asyncssh.Error) as exc:
            raise HostUnreachable(
                f"host {self.target.name}: download of {remote} failed: {exc}"
            ) from exc
        return local.stat().st_size

    async def close(self) -> None:
        self._fail_all(HostUnreachable(f"host {self.target.name}: the agent session closed"))
        if self._process is not None:
            with contextlib.suppress(OSError, asyncssh.Error):
                self._process.stdin.write_eof()
        for task in self._tasks:
            task.cancel()
        self.conn.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.conn.wait_closed(), 2)
