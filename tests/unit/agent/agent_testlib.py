"""Helpers shared by the agent's tests (conftest.py holds only fixtures)."""

from __future__ import annotations

import json
import selectors
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from orchestrator.rpc.bundle import agent_bundle

REPO = Path(__file__).resolve().parents[3]
TEMPLATES = REPO / "templates"


def build_args(
    instance_uuid: str | None = None,
    name: str = "web-1",
    sha256: str = "a" * 64,
    domain_type: str = "qemu",
    **flavor: Any,
) -> dict[str, Any]:
    """Arguments of a build job as the orchestrator sends them."""
    return {
        "instance": {
            "uuid": instance_uuid or str(uuid.uuid4()),
            "name": name,
            "hostname": "web-1",
        },
        "flavor": {
            "name": "m1.tiny",
            "vcpus": 1,
            "ram_mb": 128,
            "disk_gb": 1,
            "extra_specs": {},
            **flavor,
        },
        "image": {"name": "blank", "sha256": sha256, "format": "qcow2", "properties": {}},
        "domain_type": domain_type,
    }


needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
needs_virsh = pytest.mark.skipif(shutil.which("virsh") is None, reason="needs virsh")


def build_bundle(path: Path) -> Path:
    """The very zipapp the orchestrator pushes to hosts, written to ``path``."""
    path.write_bytes(agent_bundle().data)
    return path


class AgentClient:
    """Speaks the protocol to an agent process over its stdin/stdout."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self._next_id = 0

    def call(
        self, op: str, args: dict[str, Any] | None = None, timeout: float = 60
    ) -> dict[str, Any]:
        """Send one request and return its response (ok or not)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._next_id += 1
        line = json.dumps({"v": 1, "id": self._next_id, "op": op, "args": args or {}}) + "\n"
        self.proc.stdin.write(line.encode())
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"no answer to {op} within {timeout} s")
        answer = json.loads(self.proc.stdout.readline())
        assert answer["id"] == self._next_id, answer
        return answer

    def result(
        self, op: str, args: dict[str, Any] | None = None, timeout: float = 60
    ) -> dict[str, Any]:
        answer = self.call(op, args, timeout)
        assert answer["ok"], answer["error"]
        return answer["result"]

    def close(self, timeout: float = 60) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
