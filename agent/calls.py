"""The calls answered directly, one method per op, and the session ``hello`` sets up.

Requests arrive on many threads at once; the only shared state is the session,
replaced whole by ``hello``, and the journal, which is safe across processes.
"""

from __future__ import annotations

import logging
import os
import pwd
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

from agent import (
    PROTOCOL_VERSION,
    __version__,
    confine,
    image_format,
    images,
    reach,
    rescue,
    snapshots,
    volume_snapshots,
    volumes,
)
from agent import facts as host_facts
from agent.errors import BadRequest, NotFound, UnknownOp
from agent.fsutil import DIR_MODE, ensure_dir
from agent.jobs import RUNNING, Journal, check_job_id
from agent.kvm import BackgroundProbe
from agent.ops import JOBS, herd_domain
from agent.runner import Runners
from agent.specs import check_libvirt_uri, check_state_dir, sha256
from agent.specs import uuid as uuid_arg
from agent.virt import Virsh

log = logging.getLogger(__name__)

DOMAIN_TYPE_MODES = ("auto", "kvm", "qemu")
MAX_WAIT = 600.0
CONSOLE_MAX_BYTES = 1 << 20  # read at most the last MiB of a console log
_POLL = 0.05

Handler = Callable[[Mapping[str, Any]], Dict[str, Any]]


@dataclass(frozen=True)
class Session:
    """What hello configured: where the agent keeps state, which libvirt, which accel."""

    state_dir: Path
    libvirt_uri: str
    domain_type: str
    probe: Optional[BackgroundProbe]
    journal: Journal
    images: images.ImagePolicy

    @property
    def context(self) -> Dict[str, Any]:
        """What a job runner needs to know of the session."""
        return {"state_dir": str(self.state_dir), "libvirt_uri": self.libvirt_uri}


def _make_state_dir(root: Path) -> None:
    """Create the state directory and its subdirectories, or refuse one that is not herd's.

    The agent (root, or a user in groups libvirt and kvm) trusts what it finds there
    (job records name processes, the cache holds disks), so a directory anyone may
    write to, or someone else owns, is refused rather than used; its mode is left as it
    was either way. A non-root agent cannot create the default /var/lib/herd: the
    operator does, once, and the refusal says how.
    """
    try:
        ensure_dir(root, DIR_MODE)
        info = root.stat()
    except OSError as exc:
        raise _cannot_create(root, exc) from None
    mode = stat.S_IMODE(info.st_mode)
    if mode & stat.S_IWOTH:
        raise BadRequest(f"state_dir {root} is writable by everyone (mode {mode:04o}): not herd's")
    if info.st_uid not in (0, os.geteuid()):
        raise BadRequest(f"state_dir {root} belongs to uid {info.st_uid}, not to the agent's user")
    if not mode & stat.S_IXOTH:
        log.warning("state_dir %s is mode %04o: QEMU may not reach the disks in it", root, mode)
    try:
        for sub in ("images", "instances", "jobs", "locks", "state"):
            ensure_dir(root / sub, DIR_MODE)
    except OSError as exc:
        raise _cannot_create(root, exc) from None


def _cannot_create(root: Path, exc: OSError) -> BadRequest:
    where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(root) else ""
    hint = ""
    if isinstance(exc, PermissionError) and os.geteuid() != 0:
        user = _user_name()
        hint = (
            f"; as root: install -d -o {user} -g {os.getegid()} -m 0755 {root} "
            "(`herd host check` lists what else the host lacks)"
        )
    return BadRequest(f"cannot create state_dir {root}{where}: {exc.strerror or exc}{hint}")


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


class Agent:
    """Dispatches each op to its handler; every op but ``hello`` needs a session."""

    def __init__(self, runners: Optional[Runners] = None) -> None:
        self.runners = runners or Runners()
        self._session: Optional[Session] = None
        self._hello_lock = threading.Lock()
        self._probes = reach.Probes()
        self._handlers: Dict[str, Handler] = {
            "hello": self.hello,
            "ping": self.ping,
            "facts": self.facts,
            "list": self.list,
            "image_status": self.image_status,
            "image_commit": self.image_commit,
            "image_fetch": self.image_fetch,
            "image_list": self.image_list,
            "image_remove": self.image_remove,
            "console_log": self.console_log,
            "domain_power": self.domain_power,
            "job_start": self.job_start,
            "job_status": self.job_status,
            "job_wait": self.job_wait,
            "jobs": self.jobs,
            "job_forget": self.job_forget,
            "reach_listen": lambda args: reach.listen_op(self._probes, args),
            "reach_close": lambda args: reach.close_op(self._probes, args),
            "reach_check": lambda args: reach.check_op(self.session.state_dir, args),
            "volume_create": lambda args: volumes.create(self.session.state_dir, args),
            "volume_list": lambda args: volumes.list_volumes(self.session.state_dir, args),
            "volume_adopt": lambda args: volumes.adopt(self.session.state_dir, args),
            "image_snapshot": lambda args: snapshots.snapshot(
                *self._volume_context(), self.session.images, args
            ),
            "image_snapshot_settle": lambda args: snapshots.settle(*self._volume_context(), args),
            "volume_delete": lambda args: volumes.delete(*self._volume_context(), args),
            "volume_extend": lambda args: volumes.extend(*self._volume_context(), args),
            "volume_attach": lambda args: volumes.attach(*self._volume_context(), args),
            "volume_detach": lambda args: volumes.detach(*self._volume_context(), args),
            "volume_snapshot_create": lambda args: volume_snapshots.create(
                *self._volume_context(), args
            ),
            "volume_snapshot_delete": lambda args: volume_snapshots.delete(
                self.session.state_dir, args
            ),
            "volume_snapshot_revert": lambda args: volume_snapshots.revert(
                *self._volume_context(), args
            ),
            "rescue": lambda args: rescue.rescue(*self._volume_context(), args),
            "unrescue": lambda args: rescue.unrescue(*self._volume_context(), args),
        }

    def _volume_context(self) -> "tuple[Path, Virsh]":
        return self.session.state_dir, Virsh(self.session.libvirt_uri)

    @property
    def capabilities(self) -> List[str]:
        """Every call op, then every job op (what job_start accepts)."""
        return [*self._handlers, *JOBS]

    def dispatch(self, op: str, args: Mapping[str, Any]) -> Dict[str, Any]:
        handler = self._handlers.get(op)
        if handler is None:
            raise UnknownOp(f"unknown op {op!r}")
        if op != "hello" and self._session is None:
            raise BadRequest("hello must be the first request")
        return handler(args)

    def close(self) -> None:
        """Let a running KVM probe finish: its QEMU must not outlive the agent."""
        session = self._session
        if session is not None and session.probe is not None:
            session.probe.result(host_facts.PROBE_WAIT)

    @property
    def session(self) -> Session:
        assert self._session is not None  # dispatch checked
        return self._session

    def hello(self, args: Mapping[str, Any]) -> Dict[str, Any]:
        state_dir = args.get("state_dir", "/var/lib/herd")
        uri = args.get("libvirt_uri", "qemu:///system")
        mode = args.get("domain_type", "auto")
        try:
            check_state_dir(state_dir)
        except ValueError as exc:
            raise BadRequest(f"state_dir {state_dir!r} {exc}") from None
        try:
            check_libvirt_uri(uri)
        except ValueError as exc:
            raise BadRequest(f"libvirt_uri {exc}") from None
        if mode not in DOMAIN_TYPE_MODES:
            raise BadRequest(f"domain_type must be one of {', '.join(DOMAIN_TYPE_MODES)}")
        policy = _image_policy(args)
        root = Path(state_dir)
        _make_state_dir(root)
        with self._hello_lock:
            old = self._session
            probe = None
            if mode == "auto":
                same_dir = old is not None and old.state_dir == root and old.probe is not None
                probe = old.probe if same_dir else BackgroundProbe(root)
            self._session = Session(root, uri, mode, probe, Journal.of(root), policy)
        log.info(
            "hello from orchestrator %s: state_dir=%s uri=%s domain_type=%s",
            args.get("orchestrator_version"),
            root,
            uri,
            mode,
        )
        return {
            "agent_version": __version__,
            "protocol": PROTOCOL_VERSION,
            "capabilities": self.capabilities,
            "facts": self.facts({}),
        }

    def ping(self, args: Mapping[str, Any]) -> Dict[str, Any]:
        """A liveness check that touches nothing: what round-trip latency is made of."""
        return {}

    def facts(self, args: Mapping[str, Any]) -> Dict[str, Any]:
        s = self.session
        return host_facts.gather(s.state_dir, s.libvirt_uri, s.domain_type, s.probe)

    def list(self, args: Mapping[str, Any]) -> Dict[str, Any]:
        include_all = args.get("all", False)
        if not isinstance(include_all, bool):
            raise BadRequest("all must be true or false")
        domains = Virsh(self.session.libvirt_uri).list_domains(include_unmanaged=include_all)
        return {"domains": [d.to_wire() for d in domains]}

    def image_status(self, args: Mapping[str, Any]) -> Dict[str, Any]:
        cached = images.status(self.session.state_dir, sha256(args, "sha256"))
        return {"present": cached.present, "path": str(cached.path), "size": cached.size}

    def image_commit(self, args: Mapping[str, Any]) -> Dict[str, Any]:
        digest = sha256(args, "sha256")
        upload = args.get("upload")
        if not isinstance(upload, str) or not upload.startswith("/"):
            raise BadRequest("upload must be the absolute path of the uploaded file")
        s = self.session
        cached = images.commit(s.state_dir, digest, Path(upload), _format(args), s.images)
        return {"path": str(cached.path), "size": cached.size}

    def image_fetch(self, args: Mapping[str, Any]) -> Dict[str, Any]:
        """Download a URL, or copy a path on this host, into the cache (see images.fetch)."""
        source = args.get("source")
        if not isinstance(source, str) or not source:
            raise BadRequest("source must be an http(s) URL or an absolute path")
        digest = sha256(args, "sha256") if args.get("sha256") is not None else None
        s = self.session
        cached, actual = images.fetch(s.state_dir, source, digest, _format(args), s.images)
        return {"sha256": actual, "path": str(cached.path), "size": cached.size}

    def image_list(self, args: Mapping[str, Any]) -> Dict[str, Any]:
        entries, problems = images.list_cached(self.session.state_dir)
        return {"images": entries, "unreadable": problems}

    def image_remove(self, args: Mapping[str, Any]) -> Dict[str, Any]:
        return {"removed": images.remove(self.session.state_dir, sha256(args, "sha256"))}

    def console_log(self, args: Mapping[str, Any]) -> Dict[str, Any]:
        """The tail of an instance's serial console log (virtlogd writes it)."""
        path = self.session.state_dir / "instances" / uuid_arg(args, "uuid") / "console.log"
        lines = args.get("lines", 100)
        if isinstance(lines, bool) or not isinstance(lines, int) or not 1 <= lines <= 100000:
            raise BadRequest("lines must be an integer from 1 to 100000")
        try:
            with open(path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - CONSOLE_MAX_BYTES))
                data = fh.read()
        except FileNotFoundError:
            raise NotFound("this instance has no console log on this host") from None
        text = data.decode("utf-8", "replace")
        tail = text.splitlines()[-lines:]
        return {"lines": tail, "size": size, "truncated": size > CONSOLE_MAX_BYTES}

    def domain_power(self, args: Mapping[str, Any]) -> Dict[str, Any]:
        """Start, or hard-stop, one of herd's domains (what reconcile's repairs need).

        Only a domain named ``herd-<uuid>`` is touched; the answer is its state after.
        """
        uuid = uuid_arg(args, "uuid")
        action = args.get("action")
        if action not in ("start", "stop"):
            raise BadRequest("action must be start or stop")
        virsh = Virsh(self.session.libvirt_uri)
        info = herd_domain(virsh, uuid)
        if action == "start" and info.state in ("shutoff", "crashed"):
            virsh.start(info.name)
        elif action == "stop" and info.state != "shutoff":
            virsh.destroy(info.name)
        after = virsh.dominfo(uuid)
        return {"state": after.state if after else "unknown"}

    def job_start(self, args: Mapping[str, Any]) -> Dict[str, Any]:
        job_id = check_job_id(args.get("job_id"))
        op = args.get("op")
        job_args = args.get("args", {})
        if not isinstance(op, str):
            raise BadRequest("op must be a string")
        if not isinstance(job_args, Mapping):
            raise BadRequest("args must be an object")
        s = self.session
        return self.runners.start(s.journal, job_id, op, job_args, s.context).to_wire()

    def _record(self, args: Mapping[str, Any]) -> Dict[str, Any]:
        job_id = check_job_id(args.get("job_id"))
        record = self.session.journal.get(job_id)
        if record is None:
            raise NotFound(f"no job {job_id} on this host")
        return record.to_wire()

    def job_status(self, args: Mapping[str, Any]) -> Dict[str, Any]:
        return self._record(args)

    def job_wait(self, args: Mapping[str, Any]) -> Dict[str, Any]:
        """Long-poll the journal: cheaper for both ends than the orchestrator polling."""
        timeout = args.get("timeout", 30)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise BadRequest("timeout must be a number of seconds")
        if not 0 <= timeout <= MAX_WAIT:
            raise BadRequest(f"timeout must be between 0 and {MAX_WAIT:g} seconds")
        deadline = time.monotonic() + timeout
        while True:
            record = self._record(args)
            if record["state"] != RUNNING or time.monotonic() >= deadline:
                return record
            time.sleep(min(_POLL, max(0.0, deadline - time.monotonic())))

    def jobs(self, args: Mapping[str, Any]) -> Dict[str, Any]:
        records, problems = self.session.journal.all()
        return {"jobs": [r.to_wire() for r in records], "unreadable": problems}

    def job_forget(self, args: Mapping[str, Any]) -> Dict[str, Any]:
        self.session.journal.forget(check_job_id(args.get("job_id")))
        return {}


def _format(args: Mapping[str, Any]) -> str:
    value = args.get("format")
    if value not in image_format.FORMATS:
        raise BadRequest(f"format must be one of {', '.join(image_format.FORMATS)}")
    return value


def _image_policy(args: Mapping[str, Any]) -> images.ImagePolicy:
    """hello's ``image_source_dirs`` and ``max_image_bytes`` (the inventory's)."""
    dirs = args.get("image_source_dirs", [])
    if not isinstance(dirs, list) or not all(isinstance(d, str) for d in dirs):
        raise BadRequest("image_source_dirs must be a list of directories")
    for value in dirs:
        try:
            confine.check_image_source_dir(value)
        except ValueError as exc:
            raise BadRequest(f"image_source_dirs: {value!r} {exc}") from None
    limit = args.get("max_image_bytes", images.DEFAULT_MAX_IMAGE_BYTES)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise BadRequest("max_image_bytes must be a positive integer")
    return images.ImagePolicy(tuple(dirs), limit)
