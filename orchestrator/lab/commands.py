"""How the lab runs a setup command: a clean environment and one-line failures.

Its own module because every part of the lab runs commands (namespaces, links,
daemons) and none of them should have to import another to do it.
"""

from __future__ import annotations

import subprocess

from orchestrator.errors import LabError

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Commands in a lab host get a clean environment, as a login on a real host would,
# not the caller's (a pytest run's, a virtualenv's).
ENV = {"PATH": SYSTEM_PATH, "HOME": "/root", "LC_ALL": "C.UTF-8"}


def run(argv: list[str], what: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run a setup step; a failure is a LabError naming the step and its last words."""
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=ENV,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise LabError(f"{what}: no answer after {timeout:.0f}s") from None
    except FileNotFoundError:
        raise LabError(f"{what}: {argv[0]} is not installed") from None
    if done.returncode != 0:
        last = " / ".join(line for line in done.stderr.strip().splitlines()[-2:] if line)
        raise LabError(f"{what} failed (exit {done.returncode}): {last or 'no message'}")
    return done
