"""`--no-wait` for the workflows herd drives step by step (migrate, resize,
live-migrate). A power action is one job on the host, which runs on whether herd waits
or not; these are several steps that herd itself sequences, so something has to stay
to sequence them. The same command is started again, detached into its own session
with its output in a log file, and this one returns once that process holds the
server's task (or has already ended, with its error). `herd server wait NAME` and
`herd server actions NAME` follow it from there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from orchestrator.api import servers as servers_api
from orchestrator.cli.context import herd, run_async
from orchestrator.conductor.outcomes import Outcome
from orchestrator.errors import HerdError
from orchestrator.local_files import make_private_dirs, open_private_append, xdg_dir

TAKE_TIMEOUT = 60.0  # seconds for the background process to start and take the task
POLL = 0.2


class BackgroundFailed(HerdError):
    """The background process ended before it took the task: its own error."""


def log_dir() -> Path:
    return xdg_dir("XDG_STATE_HOME", Path.home() / ".local" / "state") / "herd"


def run_in_background(name: str, verb: str) -> tuple[Outcome, Path]:
    """Re-run this command with --wait in a detached process; return the server as it
    is once that process took its task, and where its output goes."""
    argv = [sys.executable, "-m", "orchestrator"]
    argv += ["--wait" if arg == "--no-wait" else arg for arg in sys.argv[1:]]
    directory = log_dir()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    log = directory / f"{verb}-{name}-{stamp}-{os.getpid()}.log"
    before = _server(name)[1]
    try:
        make_private_dirs(directory)  # the logs name servers, hosts and their errors
        out = os.fdopen(open_private_append(log), "ab")
    except OSError as exc:
        raise HerdError(f"cannot write the background log {log}: {exc.strerror}") from None
    with out:
        child = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )
    deadline = time.monotonic() + TAKE_TIMEOUT
    while time.monotonic() < deadline:
        outcome, actions = _server(name)
        if actions > before and outcome.task_state is not None:
            return outcome, log
        code = child.poll()
        if code is not None:
            if code == 0:
                return _server(name)[0], log
            lines = [line for line in log.read_text(errors="replace").splitlines() if line]
            error = BackgroundFailed(lines[-1].removeprefix("herd: error: ") if lines else verb)
            error.exit_code = code
            raise error
        time.sleep(POLL)
    raise HerdError(f"the background {verb} of {name} did not start within {TAKE_TIMEOUT:g}s")


def _server(name: str) -> tuple[Outcome, int]:
    async def main() -> tuple[Outcome, int]:
        async with herd() as h:
            view = await servers_api.show_server(h.db, name)
        i = view.instance
        return Outcome(i.uuid, i.name, view.host, i.vm_state, i.task_state), len(view.actions)

    return run_async(main())
