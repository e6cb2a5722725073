"""Finding and ending a lab host's processes, and nothing else.

A lab host's processes are not one process tree: the daemons double-fork, libvirt
starts qemu in a mount namespace of its own (for its private /dev), and an agent job
runner detaches into a session of its own. What they share is what they see: every
one of them has the host's directory bound over /var/lib/herd. So a process belongs
to a host when `/proc/PID/root/var/lib/herd` is that very directory (same device and
inode), or when it shares a mount or UTS namespace with such a process (which catches
sshd's privilege-separated child, chrooted to /run/sshd). This needs no record that
a half-failed `lab up` might not have written, and it cannot match a process of the
root namespace: a namespace that is our own is never treated as a lab's.

Signals go through pidfds, opened before membership is re-checked, so a pid reused by
an unrelated process between the scan and the signal is never hit.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from pathlib import Path

from orchestrator.lab.model import AGENT_DIR


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for a parent that is slow to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _namespace(pid: int | str, kind: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return None


def _sees(pid: int, marker: tuple[int, int]) -> bool:
    return _identity(Path(f"/proc/{pid}/root{AGENT_DIR}")) == marker


def _all_pids() -> set[int]:
    return {int(name) for name in os.listdir("/proc") if name.isdigit()} - {os.getpid()}


def belongs(pid: int, marker_dir: Path) -> bool:
    """Whether a single process (a daemon from its pid file) is alive in the host."""
    marker = _identity(marker_dir)
    return (
        marker is not None
        and alive(pid)
        and _sees(pid, marker)
        and _namespace(pid, "mnt") != _namespace("self", "mnt")
    )


def host_pids(marker_dir: Path) -> set[int]:
    """Every live process of the lab host whose agent dir is `marker_dir`."""
    marker = _identity(marker_dir)
    if marker is None:
        return set()
    own_mnt, own_uts = _namespace("self", "mnt"), _namespace("self", "uts")
    pids = _all_pids()
    found: set[int] = set()
    mnts: set[int] = set()
    utss: set[int] = set()
    for pid in pids:
        if not _sees(pid, marker):
            continue
        mnt, uts = _namespace(pid, "mnt"), _namespace(pid, "uts")
        if mnt is None or mnt == own_mnt:
            continue
        found.add(pid)
        mnts.add(mnt)
        if uts is not None and uts != own_uts:
            utss.add(uts)
    for pid in pids - found:
        if _namespace(pid, "mnt") in mnts or _namespace(pid, "uts") in utss:
            found.add(pid)
    return {pid for pid in found if alive(pid)}


def _send(pids: set[int], sig: signal.Signals, marker_dir: Path) -> None:
    """Signal those of `pids` that still belong to the host once pidfds pin them: a
    pid that was reused after the scan fails the check instead of being signalled."""
    handles: dict[int, int] = {}
    try:
        for pid in pids:
            try:
                handles[pid] = os.pidfd_open(pid)
            except OSError:
                continue
        members = host_pids(marker_dir)
        for pid, fd in handles.items():
            if pid in members:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(fd, sig)
    finally:
        for fd in handles.values():
            os.close(fd)


def signal_host(marker_dir: Path, sig: signal.Signals) -> int:
    """Signal every process of the host; returns how many there were."""
    pids = host_pids(marker_dir)
    if pids:
        _send(pids, sig, marker_dir)
    return len(pids)


def _wait_until_gone(marker_dir: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        if not host_pids(marker_dir):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def terminate_host(marker_dir: Path, grace: float = 5.0) -> set[int]:
    """SIGTERM every process of the host, then SIGKILL what is left (again, for any
    child forked meanwhile). Returns the pids that survived all of it."""
    if not signal_host(marker_dir, signal.SIGTERM):
        return set()
    if _wait_until_gone(marker_dir, grace):
        return set()
    for _ in range(3):
        if not signal_host(marker_dir, signal.SIGKILL):
            return set()
        if _wait_until_gone(marker_dir, 5.0):
            return set()
    return host_pids(marker_dir)


def terminate(pids: set[int], marker_dir: Path, grace: float = 10.0) -> bool:
    """SIGTERM some of a host's processes (one daemon), SIGKILL after `grace`;
    True once all of them are gone."""
    for sig, seconds in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        targets = {pid for pid in pids if alive(pid)}
        if not targets:
            return True
        _send(targets, sig, marker_dir)
        if _wait_exit(targets, seconds):
            return True
    return not any(alive(pid) for pid in pids)


def _wait_exit(pids: set[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            continue
        try:
            # A pidfd becomes readable when its process exits.
            select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        finally:
            os.close(fd)
    return not any(alive(pid) for pid in pids)


def command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
