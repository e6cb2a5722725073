"""Running the real `herd` CLI against a lab, as an operator would."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
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
    """`herd` with its own database and known_hosts, so tests never share state.

    The database is a SQLite file in ``home`` unless ``database_url`` names another
    (a PostgreSQL database from the ``pg_url`` fixture, say)."""

    def __init__(self, home: Path, database_url: str | None = None) -> None:
        self.home = home
        self.db_path = home / "herd.db"
        self.database_url = database_url or f"sqlite:///{self.db_path}"
        self.env = {
            **os.environ,
            "HERD_DATABASE_URL": self.database_url,
            "XDG_CONFIG_HOME": str(home / "config"),
            "XDG_DATA_HOME": str(home / "data"),
            "XDG_STATE_HOME": str(home / "state"),
            "XDG_CACHE_HOME": str(home / "cache"),  # `herd --help` keeps its text there
            "COLUMNS": "200",
        }

    @property
    def on_postgresql(self) -> bool:
        return self.database_url.startswith("postgresql")

    def hours_ago(self, hours: int) -> str:
        """SQL for a moment ``hours`` ago in this engine's dialect, for rigged rows."""
        if self.on_postgresql:
            return f"now() - interval '{hours} hours'"
        return f"datetime('now', '-{hours} hours')"

    def sql(self, statement: str, **params: Any) -> list[tuple[Any, ...]]:
        """Run one statement on herd's database, whichever the engine, and commit: tests
        rig and read state behind herd's back this way (``:name`` parameters)."""
        from sqlalchemy import create_engine, text

        from orchestrator.db.connection import engine_options, sync_url

        engine = create_engine(sync_url(self.database_url), **engine_options(self.database_url))
        try:
            with engine.begin() as connection:
                result = connection.execute(text(statement), params)
                return [tuple(row) for row in result] if result.returns_rows else []
        finally:
            engine.dispose()

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
        assert result.code == 0, (
            f"herd {' '.join(args)} exited {result.code}: {result.stderr}{result.stdout[-2000:]}"
        )
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


class GuestConsole:
    """`herd server console NAME` on a pty, as an operator's terminal: type a line,
    wait for what the guest's shell answers, detach with Ctrl-]."""

    def __init__(self, herd: HerdCli, name: str) -> None:
        self.leader, follower = pty.openpty()
        self.process = subprocess.Popen(
            herd.command("server", "console", name),
            env=herd.env,
            stdin=follower,
            stdout=follower,
            stderr=subprocess.PIPE,
        )
        os.close(follower)
        self.seen = b""
        # virsh prints this once it holds the guest's pty; what is typed before is lost.
        # A loaded machine (herd's start, SSH, virsh) can take well over a second.
        self.expect(b"Escape character", timeout=60)

    def type(self, line: str) -> None:
        os.write(self.leader, b"\r" + line.encode() + b"\r")

    def ask(self, line: str, answer: bytes, timeout: float = 60, every: float = 10) -> None:
        """Type ``line`` until ``answer`` comes back. The guest's shell may still be
        starting (or busy under TCG) and drop the first keys, so the line is typed again
        every ``every`` seconds: it must be harmless to repeat."""
        deadline = time.monotonic() + timeout
        while True:
            self.type(line)
            try:
                self.expect(answer, timeout=min(every, max(0.1, deadline - time.monotonic())))
                return
            except AssertionError:
                if self.process.poll() is not None or time.monotonic() >= deadline:
                    raise

    def expect(self, needle: bytes, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"{needle!r} never came; got {self.seen[-500:]!r}"
            ready, _, _ = select.select([self.leader], [], [], left)
            if ready:
                try:
                    self.seen += os.read(self.leader, 4096)
                except OSError:
                    break  # the console closed: the needle can no longer come
        assert needle in self.seen, f"the console closed before {needle!r}: {self.seen[-500:]!r}"

    def detach(self) -> tuple[int, str]:
        """Ctrl-] (virsh console's escape); the exit code and stderr."""
        try:
            os.write(self.leader, b"\x1d")
            code = self.process.wait(timeout=30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            os.close(self.leader)
        return code, self.process.stderr.read().decode() if self.process.stderr else ""
