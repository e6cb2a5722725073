"""`herd` as a real process per command, without paying its imports each time.

A server process imports the CLI once; each command is a child forked from it that
runs herd's entry point (``orchestrator.cli.main.run``) with its own argv,
environment, stdin on /dev/null and stdout/stderr in files — what the console script
does, in a tenth of the time (the imports are seconds of CPU on a small machine).
Table-driven tests of hundreds of hostile inputs use it; tests of start-up itself use
``HerdCli``.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tests.e2e.herdcli import HerdCli, Result


class _ForkServer:
    """The one process per test session that imported herd; commands fork from it."""

    _shared: _ForkServer | None = None

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.unit.cli.forkcli"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lock = threading.Lock()  # one request at a time on the pipe
        atexit.register(self.close)

    @classmethod
    def shared(cls) -> _ForkServer:
        if cls._shared is None or cls._shared.process.poll() is not None:
            cls._shared = cls()
        return cls._shared

    def request(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        with self.lock:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            self.process.wait(timeout=30)


class ForkedHerd(HerdCli):
    """``HerdCli`` whose ``run`` forks from a process that imported herd once.

    The environment, working directory and argv travel with each request, so every
    ``ForkedHerd`` of a session shares one server: the imports are paid once."""

    def run(self, *args: str, timeout: float = 120) -> Result:
        reply = _ForkServer.shared().request(
            {
                "args": list(args),
                "env": dict(self.env),
                "cwd": str(self.home),  # relative paths land in the test's directory
                "timeout": timeout,
            }
        )
        return Result(reply["code"], reply["stdout"], reply["stderr"])

    def close(self) -> None:
        """Nothing of this instance's own to release: the server outlives it."""


def _child(args: list[str], env: dict[str, str], cwd: str, out: Path, err: Path) -> None:
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(os.open(out, os.O_WRONLY), 1)
    os.dup2(os.open(err, os.O_WRONLY), 2)
    from orchestrator.cli import output
    from orchestrator.cli.main import run

    # The consoles were made at import, from the server's environment; a process of
    # its own would make them from this one (COLUMNS, NO_COLOR...).
    for console, stream in ((output.out, sys.stdout), (output.err, sys.stderr)):
        console.__dict__.update(output.make_console(stream).__dict__)

    sys.argv = ["herd", *args]
    code = 0
    try:
        run()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # run() lets nothing else out; if it did, that is the finding
        import traceback

        traceback.print_exc()
        code = 99
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _serve() -> None:
    import importlib

    from orchestrator.cli.app import COMMANDS

    for module, _attribute, _help in COMMANDS.values():  # the point: imported once, here
        importlib.import_module(module)

    for line in sys.stdin:
        request: dict[str, Any] = json.loads(line)
        with tempfile.TemporaryDirectory() as scratch:
            out, err = Path(scratch) / "out", Path(scratch) / "err"
            out.touch()
            err.touch()
            pid = os.fork()
            if pid == 0:
                _child(request["args"], request["env"], request["cwd"], out, err)
            code = _wait(pid, request["timeout"])
            reply = {
                "code": code,
                "stdout": out.read_text(errors="backslashreplace"),
                "stderr": err.read_text(errors="backslashreplace"),
            }
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


def _wait(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return -signal.SIGKILL  # the caller sees a hang as a failure
        select.select([], [], [], 0.01)


if __name__ == "__main__":
    _serve()
