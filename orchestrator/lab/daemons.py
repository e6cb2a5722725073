"""virtlogd, libvirtd and sshd of one lab host: start, stop, alive, and why not.

Each daemon daemonizes itself and writes a pid file under the host's /run (that is
`<host>/run/` seen from outside), so it outlives `herd lab up` and is found again by
`status`, `down` and the next `up`. A daemon counts as alive only if the process in
its pid file is running *inside the host* (procs.belongs), so a stale pid file or a
reused pid never passes for a live daemon.

libvirtd's `--daemon` returns before its drivers are initialised, and sshd's before it
binds its port, so a start is only done once the daemon answers: libvirtd to virsh,
sshd with its banner. When it does not, the error names the host, the daemon and the
last lines of its log.
"""

from __future__ import annotations

import re
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import LabError
from orchestrator.lab import commands, namespace, procs
from orchestrator.lab.model import LIBVIRT_URI, MARKER, SERVICES, LabHost


@dataclass(frozen=True)
class Daemon:
    name: str
    log: str  # relative to the host's dir
    ready_within: float
    argv: Callable[[LabHost], list[str]]
    ready: Callable[[LabHost, int], bool]  # (host, namespace target pid)
    # libvirt's daemons write their pid file before `--daemon` returns; sshd only
    # after it has bound its port, and exits without one when it cannot (its config
    # and keys are checked with `sshd -t` first, so binding is what is left to fail).
    pidfile_on_return: bool = True
    fatal: str | None = None


def _virtlogd_ready(host: LabHost, _target: int) -> bool:
    return (host.path("run") / "libvirt" / "virtlogd-sock").exists()


def _libvirtd_ready(host: LabHost, target: int) -> bool:
    # Through nsenter and the host's own /run/libvirt/libvirt-sock, so a lab root with
    # a long path never meets the 108-byte limit of a unix socket address.
    try:
        done = subprocess.run(
            namespace.nsenter(target, ["virsh", "-c", LIBVIRT_URI, "hostname"]),
            capture_output=True,
            text=True,
            timeout=10,
            env=commands.ENV,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def _sshd_ready(host: LabHost, _target: int) -> bool:
    """sshd answers where herd stands: the root namespace, or behind a bastion the
    bastion's namespace (the root namespace has no route to the host then)."""
    if host.reached_from is not None:
        probe = 'exec 3<>"/dev/tcp/$0/$1" && head -c 4 <&3'
        try:
            done = subprocess.run(
                [
                    "nsenter",
                    f"--net=/run/netns/{host.reached_from}",
                    "--",
                    "timeout",
                    "2",
                    "bash",
                    "-c",
                    probe,
                    host.address,
                    str(host.port),
                ],
                capture_output=True,
                timeout=5,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            return False
        return done.stdout.startswith(b"SSH-")
    try:
        with socket.create_connection((host.address, host.port), timeout=2) as conn:
            return conn.recv(64).startswith(b"SSH-")
    except OSError:
        return False


DAEMONS: dict[str, Daemon] = {
    "virtlogd": Daemon(
        name="virtlogd",
        log="log/virtlogd.log",
        ready_within=15,
        argv=lambda host: [
            "/usr/sbin/virtlogd",
            "--daemon",
            "--config",
            "/etc/libvirt/virtlogd.conf",
            "--pid-file",
            "/run/virtlogd.pid",
        ],
        ready=_virtlogd_ready,
    ),
    "libvirtd": Daemon(
        name="libvirtd",
        log="log/libvirtd.log",
        ready_within=60,
        argv=lambda host: [
            "/usr/sbin/libvirtd",
            "--daemon",
            "--config",
            "/etc/libvirt/libvirtd.conf",
            "--pid-file",
            "/run/libvirtd.pid",
        ],
        ready=_libvirtd_ready,
    ),
    "sshd": Daemon(
        name="sshd",
        log="log/sshd.log",
        ready_within=15,
        # sshd re-executes itself for every connection, so it wants an absolute path.
        argv=lambda host: [
            "/usr/sbin/sshd",
            "-f",
            str(host.sshd_config),
            "-E",
            str(host.path("log/sshd.log")),
        ],
        ready=_sshd_ready,
        pidfile_on_return=False,
        fatal="Cannot bind any address",
    ),
}


def pidfile(host: LabHost, service: str) -> Path:
    return host.path("run") / f"{service}.pid"


def running(host: LabHost, service: str) -> int | None:
    """The daemon's pid if it is alive in the host."""
    pid = procs.read_pid(pidfile(host, service))
    if pid is not None and procs.belongs(pid, host.path(MARKER)):
        return pid
    return None


def start(host: LabHost, service: str) -> bool:
    """Start the daemon unless it runs; True if it was started. Raises LabError with
    the host, the daemon and the tail of its log when it does not come up."""
    daemon = _daemon(service)
    if running(host, service):
        return False
    target = namespace.target(host)
    if target is None:
        raise LabError(f"{host.name}: its namespace is not running; `herd lab up` recreates it")
    pidfile(host, service).unlink(missing_ok=True)
    log = host.path(daemon.log)
    offset = log.stat().st_size if log.exists() else 0
    if service == "sshd":
        commands.run(
            namespace.nsenter(target, ["/usr/sbin/sshd", "-t", "-f", str(host.sshd_config)]),
            f"{host.name}: sshd config check",
        )
    with tempfile.TemporaryFile(mode="w+") as output:
        # A file rather than a pipe: a daemon that keeps its parent's stderr would hold
        # a pipe open and make us wait for it forever.
        done = subprocess.run(
            namespace.nsenter(target, daemon.argv(host)),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            env=commands.ENV,
            timeout=60,
        )
        output.seek(0)
        said = output.read()
    if done.returncode != 0:
        raise _failed(host, daemon, f"exited {done.returncode}", said, log, offset)
    deadline = time.monotonic() + daemon.ready_within
    seen = procs.read_pid(pidfile(host, service))
    if seen is None and daemon.pidfile_on_return:
        raise _failed(host, daemon, "exited while starting", said, log, offset)
    while time.monotonic() < deadline:
        pid = procs.read_pid(pidfile(host, service))
        # A daemon that gives up removes its pid file, or leaves a dead pid in it.
        if (pid is None and seen is not None) or (seen is not None and not procs.alive(seen)):
            raise _failed(host, daemon, "exited while starting", said, log, offset)
        if daemon.fatal is not None and daemon.fatal in _read_from(log, offset):
            raise _failed(host, daemon, "gave up", said, log, offset)
        seen = pid or seen
        if pid is not None and daemon.ready(host, target) and procs.alive(pid):
            return True
        time.sleep(0.05)
    raise _failed(host, daemon, f"not ready after {daemon.ready_within:.0f}s", said, log, offset)


def stop(host: LabHost, service: str) -> bool:
    """Stop the daemon; True if it was running. Stopping sshd ends its open sessions
    too, so the host looks to the orchestrator like one that dropped off the network
    (processes those sessions started, like a detached agent job, keep running)."""
    _daemon(service)
    marker = host.path(MARKER)
    pids: set[int] = set()
    pid = running(host, service)
    if pid is not None:
        pids.add(pid)
    if service == "sshd":
        pids |= {p for p in procs.host_pids(marker) if procs.command_name(p) == "sshd"}
    if not pids:
        return False
    if not procs.terminate(pids, marker):
        raise LabError(
            f"{host.name}: {service} (pid {', '.join(map(str, sorted(pids)))}) did not stop"
        )
    pidfile(host, service).unlink(missing_ok=True)
    return True


_LIBVIRT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d [\d:.+-]+: \d+: (?P<level>\w+) : (?:[\w.]+:\d+ : )?(?P<message>.*)$"
)


def log_tail(text: str, lines: int = 2) -> str:
    """The last lines worth showing, on one line. For libvirt's logs that is the last
    errors, without timestamps (their start-up log is full of harmless warnings);
    for anything else, the last non-empty lines."""
    entries = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [
        match["message"]
        for line in entries
        if (match := _LIBVIRT_LINE.match(line)) and match["level"] == "error"
    ]
    chosen = errors[-lines:] if errors else entries[-lines:]
    summary = " / ".join(chosen)
    return summary if len(summary) <= 400 else summary[:397] + "..."


def _read_from(log: Path, offset: int) -> str:
    try:
        with log.open() as f:
            f.seek(offset)
            return f.read()
    except OSError:
        return ""


def _failed(host: LabHost, daemon: Daemon, how: str, said: str, log: Path, offset: int) -> LabError:
    tail = log_tail(_read_from(log, offset)) or log_tail(said) or "no log output"
    return LabError(f"{host.name}: {daemon.name} {how}: {tail} (log: {log})")


def _daemon(service: str) -> Daemon:
    try:
        return DAEMONS[service]
    except KeyError:
        raise LabError(f"unknown lab service {service!r}; one of: {', '.join(SERVICES)}") from None
