"""The pool of agent sessions: one per host, opened on first use, reopened when broken.

This is where call / cast / follow live. A host that cannot be reached fails fast for
a short while instead of making every request wait for its own connect timeout, so a
dead host costs its own work one timeout, not everyone's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterable
from typing import Any

from orchestrator.errors import HerdError, HostUnreachable
from orchestrator.rpc.session import AgentSession
from orchestrator.rpc.ssh import HostTarget

FAILURE_MEMORY = 20.0  # seconds a failed connect is remembered
FINISHED = frozenset({"succeeded", "failed", "lost"})


class AgentPool:
    def __init__(self) -> None:
        self._sessions: dict[str, AgentSession] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._failures: dict[str, tuple[float, HostUnreachable]] = {}

    async def session(self, target: HostTarget) -> AgentSession:
        lock = self._locks.setdefault(target.name, asyncio.Lock())
        async with lock:
            current = self._sessions.get(target.name)
            if current is not None and not current.closed:
                return current
            failure = self._failures.get(target.name)
            if failure is not None and time.monotonic() - failure[0] < FAILURE_MEMORY:
                raise failure[1]
            try:
                opened = await AgentSession.open(target)
            except HostUnreachable as exc:
                self._failures[target.name] = (time.monotonic(), exc)
                raise
            self._failures.pop(target.name, None)
            self._sessions[target.name] = opened
            return opened

    def forget_failure(self, name: str) -> None:
        self._failures.pop(name, None)

    async def call(
        self, target: HostTarget, op: str, args: dict[str, Any] | None = None, timeout: float = 30.0
    ) -> Any:
        """A request that waits for its answer. Every agent op is idempotent, so a
        request that met a broken session is sent once more on a fresh one."""
        for attempt in (1, 2):
            session = await self.session(target)
            try:
                return await session.call(op, args, timeout)
            except HostUnreachable:
                if not session.closed or attempt == 2:
                    raise  # a timeout on a live session is the host's answer
        raise AssertionError("unreachable")

    async def cast(
        self, target: HostTarget, op: str, args: dict[str, Any], job_id: str | None = None
    ) -> dict[str, Any]:
        """Start a durable job on the host; returns its record (``job_id`` inside)."""
        job_id = job_id or str(uuid.uuid4())
        return await self.call(target, "job_start", {"job_id": job_id, "op": op, "args": args})

    async def follow(
        self, target: HostTarget, job_id: str, timeout: float = 900.0, poll: float = 20.0
    ) -> dict[str, Any]:
        """Wait for a job to finish by long-polling ``job_wait``; the job survives a
        dropped connection, so a broken session is simply reopened."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise HostUnreachable(
                    f"host {target.name}: job {job_id} did not finish within {timeout:g}s"
                )
            wait = min(poll, remaining)
            record = await self.call(
                target, "job_wait", {"job_id": job_id, "timeout": wait}, timeout=wait + 15
            )
            if record.get("state") in FINISHED:
                return record

    async def run(
        self, target: HostTarget, op: str, args: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        """A job as one step of a longer workflow (a migration, a resize): cast, follow,
        forget it on the host, and raise with the agent's own message if it failed."""
        job_id = f"{op}-{uuid.uuid4()}"
        await self.cast(target, op, args, job_id)
        record = await self.follow(target, job_id, timeout)
        with contextlib.suppress(HerdError):
            await self.call(target, "job_forget", {"job_id": job_id})
        if record.get("state") != "succeeded":
            raise HerdError((record.get("error") or {}).get("message") or f"{op} failed")
        return record.get("result") or {}

    async def close(self, names: Iterable[str] | None = None) -> None:
        chosen = (
            list(self._sessions) if names is None else [n for n in names if n in self._sessions]
        )
        sessions = [self._sessions.pop(name) for name in chosen]
        for session in sessions:
            with contextlib.suppress(Exception):
                await session.close()

    async def __aenter__(self) -> AgentPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
