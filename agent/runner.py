"""Durable jobs: start a detached runner process, and the runner's own main.

The runner is a separate process in its own session (``start_new_session``) so it
outlives the SSH connection and the serving agent: closing a laptop lid must not
kill a half-done build. It re-executes this very bundle with ``run-job <journal>``,
writes its result into the journal and exits; the serving agent reaps it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any, Dict, List, Mapping, Optional, Tuple

import agent
from agent.errors import AgentError, BadRequest, UnknownOp, internal
from agent.fsutil import DIR_MODE, ensure_dir, flocked
from agent.jobs import (
    FAILED,
    RUNNING,
    SUCCEEDED,
    JobRecord,
    Journal,
    Unreadable,
    process_start_time,
)
from agent.ops import JOBS, Context
from agent.virt import Virsh

log = logging.getLogger(__name__)

INSTANCE_LOCK_TIMEOUT = 900.0
LOG_MODE = 0o600
_REAP_INTERVAL = 0.5
# Resolved now: the bundle may have been started by a relative path.
_BUNDLE_ROOT = Path(os.path.abspath(agent.__file__)).parent.parent


def runner_command(journal_path: Path) -> Tuple[List[str], Dict[str, str]]:
    """argv and environment that run ``run-job`` from the code now running.

    In the zipapp that is ``python3 bundle.pyz run-job ...``; in a checkout it is
    ``python3 -m agent run-job ...`` with the checkout on PYTHONPATH.
    """
    env = dict(os.environ)
    if _BUNDLE_ROOT.is_file():
        return [sys.executable, str(_BUNDLE_ROOT), "run-job", str(journal_path)], env
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(_BUNDLE_ROOT) + (os.pathsep + path if path else "")
    return [sys.executable, "-m", "agent", "run-job", str(journal_path)], env


class Runners:
    """The runner processes this agent started, and a thread that reaps them."""

    def __init__(self) -> None:
        self._children: List[subprocess.Popen] = []
        self._lock = threading.Lock()
        self._reaper: Optional[threading.Thread] = None

    def start(
        self,
        journal: Journal,
        job_id: str,
        op: str,
        args: Mapping[str, Any],
        context: Mapping[str, Any],
    ) -> JobRecord:
        """Journal a job and start its runner; an existing job_id returns its record."""
        kind = JOBS.get(op)
        if kind is None:
            raise UnknownOp(f"unknown job op {op!r}; known: {', '.join(sorted(JOBS))}")
        with journal.locked():
            existing = journal.load(job_id)
            if existing is not None:
                if existing.op != op:
                    raise BadRequest(f"job {job_id} exists and is a {existing.op}, not a {op}")
                child = None
            else:
                kind.parse(args)  # BadRequest now, rather than from the runner later
                record = JobRecord(job_id=job_id, op=op, args=dict(args), context=dict(context))
                journal.save(record)  # journalled before it runs
                child = self._spawn(journal, record)
        if child is not None:
            self._track(child)
        record = journal.get(job_id)
        assert record is not None
        return record

    def _spawn(self, journal: Journal, record: JobRecord) -> Optional[subprocess.Popen]:
        """Start the runner; the caller holds the journal lock, so we save directly."""
        argv, env = runner_command(journal.path(record.job_id))
        try:
            # 0600: a job's log may quote what it was given (user data in a seed).
            fd = os.open(
                journal.log_path(record.job_id),
                os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                LOG_MODE,
            )
            os.fchmod(fd, LOG_MODE)
            with os.fdopen(fd, "ab") as log_file:
                child = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=log_file,
                    env=env,
                    cwd="/",
                    close_fds=True,
                    start_new_session=True,
                )
        except OSError as exc:
            record.state = FAILED
            record.error = {"type": "Internal", "message": f"cannot start the job runner: {exc}"}
            record.finished_at = time.time()
            journal.save(record)
            return None
        record.pid = child.pid
        record.pid_start = process_start_time(child.pid)
        journal.save(record)
        log.info("job %s (%s) started as pid %s", record.job_id, record.op, child.pid)
        return child

    def _track(self, child: subprocess.Popen) -> None:
        with self._lock:
            self._children.append(child)
            if self._reaper is None:
                self._reaper = threading.Thread(target=self._reap_loop, name="reaper", daemon=True)
                self._reaper.start()

    def _reap_loop(self) -> None:
        """Wait for finished runners so they do not linger as zombies; stop when none left."""
        while True:
            time.sleep(_REAP_INTERVAL)
            with self._lock:
                self._children = [c for c in self._children if c.poll() is None]
                if not self._children:
                    self._reaper = None
                    return


class Terminated(BaseException):
    """SIGTERM in a runner: unwinds like an exception so a build still cleans up."""


def _on_sigterm(signum: int, frame: Optional[FrameType]) -> None:
    raise Terminated(f"the job runner was terminated by signal {signum}")


def run_job(journal_path: Path) -> int:
    """The runner's main: run the journalled job once and record how it ended."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    journal = Journal(journal_path.parent)
    job_id = journal_path.name[: -len(".json")]
    try:
        record = journal.load(job_id)
    except Unreadable as exc:
        log.error("%s", exc)
        return 1
    if record is None:
        log.error("no job journal at %s", journal_path)
        return 1
    if record.state != RUNNING:
        log.info("job %s is already %s", job_id, record.state)
        return 0
    journal.update(job_id, pid=os.getpid(), pid_start=process_start_time(os.getpid()))
    log.info("job %s: %s starting", job_id, record.op)
    started = time.monotonic()
    try:
        result = _run(record)
    except AgentError as exc:
        log.error("job %s failed: %s", job_id, exc)
        journal.finish(job_id, FAILED, error=exc.to_wire())
    except Terminated as exc:
        log.error("job %s: %s", job_id, exc)
        journal.finish(job_id, FAILED, error={"type": "Internal", "message": str(exc)})
    except Exception as exc:
        log.exception("job %s failed", job_id)
        journal.finish(job_id, FAILED, error=internal(exc))
    else:
        log.info("job %s succeeded in %.2f s", job_id, time.monotonic() - started)
        journal.finish(job_id, SUCCEEDED, result=result)
    return 0


def _run(record: JobRecord) -> Dict[str, Any]:
    kind = JOBS.get(record.op)
    if kind is None:
        raise UnknownOp(f"unknown job op {record.op!r}")
    spec = kind.parse(record.args)
    ctx = Context(Path(record.context["state_dir"]), Virsh(record.context["libvirt_uri"]))
    locks = ensure_dir(ctx.state_dir / "locks", DIR_MODE)
    key = spec.lock_key
    # One lock per instance: a build and a delete of it never interleave.
    with flocked(locks / f"{key}.lock", INSTANCE_LOCK_TIMEOUT, f"instance {key}"):
        return kind.run(ctx, spec)
