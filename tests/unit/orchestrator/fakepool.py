"""An agent pool with no hosts behind it, for workflow tests that need no lab.

It answers what the conductor and the server actions ask (every job succeeds, every
image is cached), records each request, and lets a test hold a request at a gate, to
run another process's command in the middle of a workflow, or make a host unreachable.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from orchestrator.errors import HostUnreachable
from orchestrator.rpc.ssh import HostTarget


class FakeSession:
    def __init__(self) -> None:
        self.facts: dict[str, Any] = {}
        self.hello: dict[str, Any] = {}

    async def download(self, remote: str, local: Path) -> int:
        local.write_bytes(b"disk")
        return 4

    async def upload(self, local: Path, remote: str) -> None:
        return None


class FakePool:
    def __init__(self, *, unreachable: tuple[str, ...] = ()) -> None:
        self.unreachable = set(unreachable)
        self.requests: list[tuple[str, str]] = []  # (host, op), in order
        self._gates: dict[str, asyncio.Event] = {}
        self._arrived: dict[str, asyncio.Event] = {}
        self._cast: dict[str, str] = {}  # job id -> op

    # -- test controls ---------------------------------------------------------

    def gate(self, op: str) -> None:
        """Hold every request for ``op`` (``follow:OP`` for following a cast job)."""
        self._gates[op] = asyncio.Event()

    def open(self, op: str) -> None:
        self._gates[op].set()

    async def arrived(self, op: str) -> None:
        """Until a request for ``op`` has come (and, if gated, waits at the gate)."""
        await asyncio.wait_for(self._event(op).wait(), 30)

    def ops(self) -> list[str]:
        return [op for _, op in self.requests]

    def _event(self, op: str) -> asyncio.Event:
        return self._arrived.setdefault(op, asyncio.Event())

    async def _arrive(self, target: HostTarget, op: str) -> None:
        self.requests.append((target.name, op))
        self._event(op).set()
        gate = self._gates.get(op)
        if gate is not None:
            await gate.wait()
        if target.name in self.unreachable:
            raise HostUnreachable(f"host {target.name}: cannot reach it (test)")

    # -- the AgentPool interface the workflows use -------------------------------

    async def session(self, target: HostTarget) -> FakeSession:
        await self._arrive(target, "session")
        return FakeSession()

    def forget_failure(self, name: str) -> None:
        return None

    async def call(
        self, target: HostTarget, op: str, args: dict[str, Any], timeout: float | None = None
    ) -> dict[str, Any]:
        await self._arrive(target, op)
        return {"image_status": {"present": True}, "list": {"domains": []}}.get(op, {})

    async def cast(self, target: HostTarget, op: str, args: dict[str, Any], job_id: str) -> None:
        await self._arrive(target, op)
        self._cast[job_id] = op if op != "power" else f"power:{args.get('action')}"

    async def follow(self, target: HostTarget, job_id: str, timeout: float) -> dict[str, Any]:
        op = self._cast[job_id]
        await self._arrive(target, f"follow:{op.split(':')[0]}")
        stopped = op in ("power:stop", "delete")
        return {"state": "succeeded", "result": {"state": "shutoff" if stopped else "running"}}

    async def run(
        self, target: HostTarget, op: str, args: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        await self._arrive(target, op)
        return {"state": "running", "disk": "x"} if op in ("build", "resize_stash") else {}
