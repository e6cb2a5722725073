"""Is KVM usable here? Ask a real kernel, because /dev/kvm existing is not enough.

Under nested virtualisation /dev/kvm can be present and even run SeaBIOS, yet a
Linux guest hangs at once ("emulation failure"), while plain emulation (TCG) boots.
So: boot the host's own newest kernel under ``-accel kvm`` with its console on
stdout; "Linux version" within a few seconds means KVM works. No kernel to try ->
trust /dev/kvm's accessibility. The verdict is cached per boot and per QEMU binary
in ``<state_dir>/state/kvm-probe.json``: it costs up to ~3 s and cannot change
until one of them does.
"""

from __future__ import annotations

import contextlib
import glob
import grp
import logging
import os
import platform
import pwd
import re
import selectors
import shutil
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Tuple

from agent.errors import one_line
from agent.fsutil import DIR_MODE, atomic_write_json, ensure_dir, read_json
from agent.jobs import boot_id

log = logging.getLogger(__name__)

PROBE_SECONDS = 3.0
KVM_DEVICE = "/dev/kvm"
BANNER = b"Linux version"
_INTERNAL_ERROR = "KVM internal error"
NO_PROGRESS = "a test kernel made no progress under KVM (nested virtualisation?)"

# arch -> (machine, kernel console): what a distribution kernel prints its banner on.
_TARGETS = {
    "x86_64": ("pc", "ttyS0"),
    "i686": ("pc", "ttyS0"),
    "aarch64": ("virt", "ttyAMA0"),
}


@dataclass(frozen=True)
class Verdict:
    usable: bool
    reason: str

    def to_wire(self) -> dict:
        return {"usable": self.usable, "reason": self.reason}


def qemu_binary(arch: Optional[str] = None) -> Optional[str]:
    arch = arch or platform.machine()
    return shutil.which(f"qemu-system-{arch}")


def newest_kernel() -> Optional[str]:
    kernels = [k for k in glob.glob("/boot/vmlinuz-*") if os.access(k, os.R_OK)]
    return max(kernels, key=os.path.getmtime) if kernels else None


QEMU_CONF = "/etc/libvirt/qemu.conf"
_CONF_USER = re.compile(r'^\s*user\s*=\s*"([^"]+)"', re.MULTILINE)


def qemu_user(conf: str = QEMU_CONF) -> str:
    """The account libvirtd runs QEMU as: qemu.conf's ``user``, else Debian's default."""
    with contextlib.suppress(OSError):
        match = _CONF_USER.search(Path(conf).read_text())
        if match:
            return match.group(1).lstrip("+")
    with contextlib.suppress(KeyError):
        return pwd.getpwnam("libvirt-qemu").pw_name
    return "root"


def user_can_use(path: str, user: str) -> bool:
    """Would ``user`` get read-write access to ``path`` by its mode bits?

    The probe runs as root, which can open anything; QEMU runs as ``user`` and
    cannot (a container without udev leaves /dev/kvm at 0600 root:root).
    """
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        return user == "root"
    if account.pw_uid == 0:
        return True
    st = os.stat(path)
    if st.st_uid == account.pw_uid:
        return st.st_mode & 0o600 == 0o600
    groups = {account.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    if st.st_gid in groups:
        return st.st_mode & 0o060 == 0o060
    return st.st_mode & 0o006 == 0o006


def device_access() -> Optional[str]:
    """None when QEMU (as libvirt runs it) can open /dev/kvm read-write, else why not."""
    try:
        fd = os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"{KVM_DEVICE} is not accessible: {exc.strerror}"
    os.close(fd)
    user = qemu_user()
    if not user_can_use(KVM_DEVICE, user):
        return f"{KVM_DEVICE} is not accessible to the QEMU user {user!r}"
    return None


def boot_test_kernel(qemu: str, kernel: str, machine: str, console: str) -> Verdict:
    """Boot ``kernel`` under KVM and wait for its banner; stop QEMU either way."""
    cpu = ["-cpu", "host"] if machine == "virt" else []  # virt has no default KVM CPU
    argv = [
        qemu, "-accel", "kvm", "-nodefaults", "-display", "none", "-machine", machine, *cpu,
        "-m", "256", "-no-reboot", "-kernel", kernel,
        "-append", f"console={console} panic=-1", "-serial", "stdio",
    ]  # fmt: skip
    started = time.monotonic()
    qemu_proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        seen, exited, errors = _watch(qemu_proc, started + PROBE_SECONDS)
    finally:
        with contextlib.suppress(ProcessLookupError):
            qemu_proc.kill()
        qemu_proc.wait(timeout=10)
        for stream in (qemu_proc.stdout, qemu_proc.stderr):
            if stream is not None:
                stream.close()
    elapsed = time.monotonic() - started
    if seen:
        return Verdict(True, f"a test kernel booted under KVM in {elapsed:.1f} s")
    if exited or _INTERNAL_ERROR in errors:
        return Verdict(False, f"QEMU could not use KVM: {one_line(errors)[:300]}")
    return Verdict(False, NO_PROGRESS)


def _watch(qemu_proc: subprocess.Popen, deadline: float) -> Tuple[bool, bool, str]:
    """Read QEMU's console and stderr until the banner, an exit, or the deadline.

    Returns (banner seen, QEMU exited, its stderr). QEMU's warnings about CPU
    features are not failures; only an exit or KVM's own error is.
    """
    console = b""
    errors = b""
    with selectors.DefaultSelector() as sel:
        sel.register(qemu_proc.stdout, selectors.EVENT_READ)
        sel.register(qemu_proc.stderr, selectors.EVENT_READ)
        open_streams = 2
        failed = False
        while open_streams and not failed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for key, _ in sel.select(remaining):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    open_streams -= 1
                elif key.fileobj is qemu_proc.stdout:
                    console = (console + chunk)[-4096:]
                    if BANNER in console:
                        return True, False, ""
                else:
                    errors = (errors + chunk)[-8192:]
                    # Nested KVM's "emulation failure": no need to wait it out.
                    failed = _INTERNAL_ERROR.encode() in errors
    exited = open_streams == 0
    return False, exited, errors.decode("utf-8", "replace")


def probe(arch: Optional[str] = None) -> Verdict:
    arch = arch or platform.machine()
    denied = device_access()
    if denied:
        return Verdict(False, denied)
    qemu = qemu_binary(arch)
    if qemu is None:
        return Verdict(False, f"qemu-system-{arch} is not installed")
    kernel = newest_kernel()
    target = _TARGETS.get(arch)
    if kernel is None or target is None:
        return Verdict(True, f"{KVM_DEVICE} is accessible (no test kernel to boot)")
    log.info("probing KVM: booting %s under %s", kernel, qemu)
    try:
        return boot_test_kernel(qemu, kernel, *target)
    except (OSError, subprocess.SubprocessError) as exc:
        return Verdict(False, f"the KVM probe failed: {exc}")


def _cache_key(qemu: Optional[str]) -> dict:
    mtime = os.path.getmtime(qemu) if qemu else None
    return {"boot_id": boot_id(), "qemu": qemu, "qemu_mtime": mtime}


def cached_probe(state_dir: Path) -> Verdict:
    """The probe's verdict, run at most once per boot and QEMU binary."""
    cache = ensure_dir(state_dir / "state", DIR_MODE) / "kvm-probe.json"
    key = _cache_key(qemu_binary())
    try:
        data = read_json(cache)
    except (OSError, ValueError) as exc:
        log.warning("ignoring the unreadable %s (%s): probing again", cache, exc)
        data = None
    if isinstance(data, dict) and data.get("key") == key and "usable" in data:
        return Verdict(bool(data["usable"]), str(data.get("reason", "")))
    verdict = probe()
    log.info("KVM probe: usable=%s (%s)", verdict.usable, verdict.reason)
    atomic_write_json(cache, {"key": key, "probed_at": time.time(), **asdict(verdict)})
    return verdict


class BackgroundProbe:
    """Runs ``cached_probe`` in a thread, started at hello, so hello rarely waits."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._verdict: Optional[Verdict] = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kvm-probe", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._verdict = cached_probe(self.state_dir)
        except Exception as exc:
            log.exception("KVM probe failed")
            self._verdict = Verdict(False, f"the KVM probe failed: {exc}")
        finally:
            self._done.set()

    def result(self, timeout: float) -> Optional[Verdict]:
        """The verdict, or None if the probe has not finished within ``timeout``."""
        self._done.wait(timeout)
        return self._verdict
