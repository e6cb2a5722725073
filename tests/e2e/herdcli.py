"""Running the real `herd` CLI against a lab, as an operator would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


class HerdCli:
    """`herd` with its own database and known_hosts, so tests never share state."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.db_path = home / "herd.db"
        self.env = {
            **os.environ,
            "HERD_DATABASE_URL": f"sqlite:///{self.db_path}",
            "XDG_CONFIG_HOME": str(home / "config"),
            "XDG_DATA_HOME": str(home / "data"),
            "COLUMNS": "200",
        }

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "orchestrator", *args]

    def run(self, *args: str, timeout: float = 300) -> Result:
        done = subprocess.run(
            self.command(*args),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def ok(self, *args: str, timeout: float = 300) -> Result:
        result = self.run(*args, timeout=timeout)
        assert result.code == 0, f"herd {' '.join(args)} exited {result.code}: {result.stderr}"
        return result

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(*args),
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )

    def servers(self) -> list[dict[str, Any]]:
        return self.ok("server", "list", "--json").json()

    def server(self, name: str) -> dict[str, Any]:
        return self.ok("server", "show", name, "--json").json()


def assert_one_line_error(result: Result, *, code: int | None = None, contains: str = "") -> str:
    """The operator contract: non-zero exit, one line on stderr, no traceback."""
    assert result.code != 0, f"expected failure, got exit 0: {result.stdout}"
    if code is not None:
        assert result.code == code, f"exit {result.code}, expected {code}: {result.stderr}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, f"expected one line, got: {result.stderr}"
    assert lines[0].startswith("herd: error: "), lines[0]
    assert contains in lines[0], f"{contains!r} not in {lines[0]!r}"
    return lines[0]


def domain_state(lab: Any, host: str, instance_uuid: str) -> str | None:
    """The domain's state in that lab host's own libvirtd, or None when it has none."""
    done = lab.exec_in(host, ["virsh", "-c", "qemu:///system", "domstate", f"herd-{instance_uuid}"])
    return done.stdout.strip() if done.returncode == 0 else None
