"""The job journal: one JSON file per durable job, ``<state_dir>/jobs/<job_id>.json``.

The journal is the only thing the serving agent and a detached runner share. It is
written before the runner starts and rewritten (tmp + rename, under one flock) at
each transition: running -> succeeded | failed, or -> lost when the runner died
without a word (killed, host rebooted). "Dead" is judged by the runner's pid *and*
its start time in /proc, because pids are reused; and by the boot id, because a
reboot restarts pid numbering.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from agent.errors import AgentError, BadRequest
from agent.fsutil import DIR_MODE, atomic_write_json, ensure_dir, flocked, read_json

log = logging.getLogger(__name__)

RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
LOST = "lost"
FINISHED = (SUCCEEDED, FAILED, LOST)

JOB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")  # with fullmatch
JOURNAL_LOCK_TIMEOUT = 30.0
# A runner records its pid within milliseconds; one that has not after this long
# never started (its parent died between writing the journal and spawning it).
RUNNER_START_GRACE = 60.0

_WIRE_FIELDS = ("job_id", "op", "state", "result", "error", "started_at", "finished_at")
_STATES = (RUNNING, *FINISHED)


class Unreadable(AgentError):
    """A journal file that is not a job record (a crash mid-write on a filesystem
    without atomic rename, an operator's editor): reported, never fatal to others."""

    type = "Unreadable"

    def __init__(self, job_id: str, path: Path, reason: str) -> None:
        super().__init__(f"job {job_id}: its journal {path} is unreadable: {reason}")
        self.problem = {"job_id": job_id, "file": str(path), "error": reason}


def check_job_id(job_id: Any) -> str:
    """Job ids become file names: only a safe alphabet, never a path."""
    if not isinstance(job_id, str) or not JOB_ID_RE.fullmatch(job_id):
        raise BadRequest(
            "job_id must be 1-128 characters of [A-Za-z0-9._:-], not starting with ._:-"
        )
    return job_id


def boot_id() -> Optional[str]:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return None


def process_start_time(pid: int) -> Optional[int]:
    """The process's start time in clock ticks since boot; None if it is gone or a zombie.

    A zombie has finished: it counts as gone (its parent simply has not reaped it yet).
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ")".
    fields = data[data.rfind(")") + 2 :].split()
    if not fields or fields[0] in ("Z", "X"):
        return None
    try:
        return int(fields[19])  # field 22 overall: starttime
    except (IndexError, ValueError):
        return None


@dataclass
class JobRecord:
    job_id: str
    op: str
    args: Dict[str, Any]
    state: str = RUNNING
    started_at: float = field(default_factory=time.time)
    result: Optional[Dict[str, Any]] = None
    error: Optional[Dict[str, str]] = None
    finished_at: Optional[float] = None
    pid: Optional[int] = None
    pid_start: Optional[int] = None
    boot_id: Optional[str] = field(default_factory=boot_id)
    # What the runner needs besides args: state_dir and libvirt_uri of the session.
    context: Dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> Dict[str, Any]:
        return {name: getattr(self, name) for name in _WIRE_FIELDS}

    def to_json(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> JobRecord:
        """The record ``data`` describes; ``ValueError`` if it is not one."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            record = cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as exc:  # a field missing
            raise ValueError(str(exc)) from None
        numbers = (record.started_at, record.finished_at, record.pid, record.pid_start)
        if (
            not isinstance(record.job_id, str)
            or not isinstance(record.op, str)
            or not isinstance(record.args, dict)
            or record.state not in _STATES
            or not isinstance(record.context, dict)
            or any(n is not None and not isinstance(n, (int, float)) for n in numbers)
            or isinstance(record.pid, bool)
        ):
            raise ValueError("not a job record")
        return record

    def lost_reason(self, now: float, current_boot: Optional[str]) -> Optional[str]:
        """Why this running job's runner must be dead, or None while it may be alive."""
        if self.state != RUNNING:
            return None
        if self.boot_id and current_boot and self.boot_id != current_boot:
            return "the host rebooted while the job ran"
        if self.pid is None:
            if now - self.started_at > RUNNER_START_GRACE:
                return "the job runner never started"
            return None
        current = process_start_time(self.pid)
        if current is None or (self.pid_start is not None and current != self.pid_start):
            return f"the job runner (pid {self.pid}) died without recording a result"
        return None


class Journal:
    """The jobs directory of one state_dir."""

    def __init__(self, jobs_dir: Path) -> None:
        self.dir = jobs_dir

    @classmethod
    def of(cls, state_dir: Path) -> Journal:
        return cls(ensure_dir(state_dir / "jobs", DIR_MODE))

    def path(self, job_id: str) -> Path:
        return self.dir / f"{job_id}.json"

    def log_path(self, job_id: str) -> Path:
        return self.dir / f"{job_id}.log"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise read-modify-write of any record, across processes.

        Plain reads need no lock: every write is an atomic rename.
        """
        with flocked(self.dir / ".journal.lock", JOURNAL_LOCK_TIMEOUT, "the job journal"):
            yield

    def load(self, job_id: str) -> Optional[JobRecord]:
        """The record, None if there is none, ``Unreadable`` if the file is not one."""
        path = self.path(job_id)
        try:
            data = read_json(path)
            return JobRecord.from_json(data) if data is not None else None
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise Unreadable(job_id, path, reason) from None

    def save(self, record: JobRecord) -> None:
        atomic_write_json(self.path(record.job_id), record.to_json(), mode=0o600)

    def update(self, job_id: str, **changes: Any) -> Optional[JobRecord]:
        """Apply ``changes`` to a record under the lock; None if it does not exist."""
        with self.locked():
            record = self.load(job_id)
            if record is None:
                return None
            record = dataclasses.replace(record, **changes)
            self.save(record)
            return record

    def finish(
        self,
        job_id: str,
        state: str,
        result: Optional[Dict[str, Any]] = None,
        error: Optional[Dict[str, str]] = None,
    ) -> Optional[JobRecord]:
        return self.update(job_id, state=state, result=result, error=error, finished_at=time.time())

    def get(self, job_id: str) -> Optional[JobRecord]:
        """The record, with a dead runner's job turned to ``lost`` (and journalled so)."""
        record = self.load(job_id)
        if record is None or record.lost_reason(time.time(), boot_id()) is None:
            return record
        with self.locked():
            # Re-read: the runner writes its result before it exits, so a result
            # that appeared after our first read wins over our suspicion.
            record = self.load(job_id)
            if record is None:
                return None
            reason = record.lost_reason(time.time(), boot_id())
            if reason is None:
                return record
            log.warning("job %s is lost: %s", job_id, reason)
            record = dataclasses.replace(
                record,
                state=LOST,
                error={"type": "Lost", "message": reason},
                finished_at=time.time(),
            )
            self.save(record)
            return record

    def job_ids(self) -> List[str]:
        return sorted(p.stem for p in self.dir.glob("*.json") if JOB_ID_RE.fullmatch(p.stem))

    def all(self) -> Tuple[List[JobRecord], List[Dict[str, str]]]:
        """Every record; and the files that are not records, skipped and reported, so
        one bad file never hides the other jobs (nor makes the host look down)."""
        records: List[JobRecord] = []
        problems: List[Dict[str, str]] = []
        for job_id in self.job_ids():
            try:
                record = self.get(job_id)
            except Unreadable as exc:
                problems.append(exc.problem)
                continue
            if record is not None:
                records.append(record)
        return records, problems

    def forget(self, job_id: str) -> None:
        self.get(job_id)  # a dead runner's job becomes lost, and so forgettable
        with self.locked():
            record = self.load(job_id)
            if record is not None and record.state == RUNNING:
                raise BadRequest(f"job {job_id} is still running")
            for path in (self.path(job_id), self.log_path(job_id)):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
