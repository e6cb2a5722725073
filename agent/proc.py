"""Run a host tool as an argv list, always with a timeout.

Nothing here goes through a shell: request data can only ever be one argv element.
The C locale keeps tool messages in English, the form the parsers in virt.py expect.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from typing import Callable, Dict, NamedTuple, Optional, Sequence, Type

from agent.errors import CommandError, one_line

log = logging.getLogger(__name__)

_ENV_OVERRIDES = {"LC_ALL": "C", "LANG": "C"}


class Outcome(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def tool_env() -> Dict[str, str]:
    env = dict(os.environ)
    env.update(_ENV_OVERRIDES)
    return env


def execute(
    argv: Sequence[str],
    timeout: float,
    error: Type[CommandError] = CommandError,
    what: Optional[str] = None,
) -> Outcome:
    """Run ``argv`` to completion; raise ``error`` only if it hangs or is not installed.

    For callers that judge the exit status themselves (a virsh batch reports the
    status of its last command only).
    """
    label = what or os.path.basename(argv[0])
    started = time.monotonic()
    try:
        proc = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=timeout,
            env=tool_env(),
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise error(f"{label} timed out after {timeout:g} s") from exc
    except FileNotFoundError as exc:
        raise error(f"{label}: {argv[0]} is not installed") from exc
    log.debug("%s exited %s after %.2f s", label, proc.returncode, time.monotonic() - started)
    return Outcome(
        proc.returncode,
        proc.stdout.decode("utf-8", "replace"),
        proc.stderr.decode("utf-8", "replace"),
    )


def run(
    argv: Sequence[str],
    timeout: float,
    error: Type[CommandError] = CommandError,
    what: Optional[str] = None,
    fold: Callable[[str], str] = one_line,
) -> str:
    """Run ``argv`` and return its stdout; raise ``error`` with the tool's own message.

    ``what`` names the step in the message ("virsh start"), so a timeout says which
    call hung rather than just "timed out". ``fold`` turns the tool's stderr into the
    one-line message (virsh gets its own, which drops the "error: " prefixes).
    """
    label = what or os.path.basename(argv[0])
    outcome = execute(argv, timeout, error, label)
    if outcome.returncode != 0:
        message = (
            fold(outcome.stderr) or fold(outcome.stdout) or f"exit status {outcome.returncode}"
        )
        raise error(f"{label}: {message}")
    return outcome.stdout
