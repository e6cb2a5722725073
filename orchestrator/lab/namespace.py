"""A lab host's directory and namespace, and running commands inside it.

The namespace is made by `unshare --mount --uts --net --propagation private`: a short
shell script binds the host's directories over /var/lib/herd, /run, /etc/libvirt and
the rest (private propagation keeps those mounts out of the root namespace), sets the
hostname, mounts a sysfs of the host's own, brings up loopback with IPv6 and
forwarding off in the host's fresh network stack (its links come from network.py), and
leaves a `sleep infinity` behind to hold the namespaces open, then exits so its exit
status tells us whether the setup worked. Every later command enters the namespaces
with `nsenter --target <holder>`; nothing else needs to be remembered, and when the
last process of a namespace dies its mounts and links go with it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from orchestrator.errors import LabError
from orchestrator.lab import procs, render, users
from orchestrator.lab.commands import run
from orchestrator.lab.model import BINDS, CAPABILITIES_CACHE, MARKER, SERVICES, LabHost

_SETUP = """set -eu
name=$1
shift
while [ "$#" -gt 0 ]; do
    mount --bind "$1" "$2"
    shift 2
done
hostname "$name"
# A sysfs of its own, as a real host has: /sys/class/net then lists this host's
# links (bridges included), not the machine's. The cgroup tree is carried across.
if [ -d /sys/fs/cgroup ]; then
    mkdir -p /run/.herd-cgroup
    mount --rbind /sys/fs/cgroup /run/.herd-cgroup
fi
mount -t sysfs sysfs /sys
if [ -d /run/.herd-cgroup ]; then
    mount --move /run/.herd-cgroup /sys/fs/cgroup
    rmdir /run/.herd-cgroup
fi
# A network stack of its own, quiet until the lab cables it: IPv6 off before any
# link exists (so none sends a router solicitation), no forwarding, no routes.
sysctl -q -w net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 \
    net.ipv4.ip_forward=0
ip link set lo up
sleep infinity </dev/null >/dev/null 2>&1 &
echo "$!"
"""

_MODES = {"home": 0o700}


def prepare(host: LabHost, authorized_keys: Path) -> None:
    """The host's directories and config files; rewritten on every `up`, so a lab made
    by an older herd picks up today's settings at its next daemon start."""
    for part, _target in BINDS:
        directory = host.path(part)
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(_MODES.get(part, 0o755))
    (host.path("run") / "sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privsep chroot
    # /var/lock is /run/lock: `virsh console` locks the guest's pty there.
    (host.path("run") / "lock").mkdir(mode=0o1777, exist_ok=True)
    # The mount point of the lab's shared capabilities cache, inside the host's cache.
    (host.path("cache-libvirt") / "qemu" / "capabilities").mkdir(parents=True, exist_ok=True)
    shared_capabilities(host).mkdir(mode=0o755, exist_ok=True)
    ssh = host.path("ssh")
    ssh.mkdir(mode=0o700, exist_ok=True)
    etc = host.path("etc-libvirt")
    _write(etc / "libvirtd.conf", render.libvirtd_conf())
    _write(etc / "virtlogd.conf", render.virtlogd_conf())
    _write(etc / "qemu.conf", render.qemu_conf())
    _write(host.sshd_config, render.sshd_config(host, authorized_keys))
    if not host.host_key.exists():
        keygen(host.host_key, comment=host.name)


def shared_capabilities(host: LabHost) -> Path:
    return host.dir.parent / "qemu-capabilities"


def binds(host: LabHost) -> list[tuple[Path, str]]:
    """(source, target) in mount order: the host's own directories, then the lab's
    shared capabilities cache, which lands inside the host's /var/cache/libvirt, then
    the host's own account files (users.py)."""
    own = [(host.path(part), target_path) for part, target_path in BINDS]
    return [*own, (shared_capabilities(host), CAPABILITIES_CACHE), *users.binds(host)]


def keygen(path: Path, comment: str) -> None:
    """An ed25519 key pair without a passphrase: the lab is for tests and demos."""
    for stale in (path, path.with_name(path.name + ".pub")):
        stale.unlink(missing_ok=True)
    run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        "ssh-keygen",
    )


def holder(host: LabHost) -> int | None:
    """The pid holding the host's namespace open, if it is alive and really in it."""
    pid = procs.read_pid(host.holder_pidfile)
    if pid is not None and procs.belongs(pid, host.path(MARKER)):
        return pid
    return None


def target(host: LabHost) -> int | None:
    """A process to enter the host's namespace through: the holder, or any of its
    daemons if someone killed the holder (the namespace lives while they do)."""
    pid = holder(host)
    if pid is not None:
        return pid
    for service in SERVICES:
        pid = procs.read_pid(host.path("run") / f"{service}.pid")
        if pid is not None and procs.belongs(pid, host.path(MARKER)):
            return pid
    return None


def create(host: LabHost) -> int:
    """A fresh namespace for the host. /run starts empty, as after a reboot, so no
    stale pid file or socket of an earlier namespace misleads anyone."""
    run_dir = host.path("run")
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(mode=0o755)
    (run_dir / "sshd").mkdir(mode=0o755)
    (run_dir / "lock").mkdir(mode=0o1777)
    pairs = [item for source, target_path in binds(host) for item in (str(source), target_path)]
    argv = [
        "unshare",
        "--mount",
        "--uts",
        "--net",
        "--propagation",
        "private",
        "--",
        "/bin/sh",
        "-c",
        _SETUP,
        "herd-lab-setup",
        host.name,
        *pairs,
    ]
    done = run(argv, f"{host.name}: namespace setup")
    try:
        pid = int(done.stdout.split()[-1])
    except (ValueError, IndexError):
        raise LabError(
            f"{host.name}: namespace setup printed no holder pid: {done.stdout!r}"
        ) from None
    host.holder_pidfile.write_text(f"{pid}\n")
    return pid


def ensure_mountpoints() -> None:
    """The bind targets must exist in the root namespace. On a machine without the
    libvirt daemon packages' state dirs this creates them, empty, as those packages
    would; they are left in place by `down` (other labs, or a root libvirtd, use them)."""
    for _part, target_path in BINDS:
        Path(target_path).mkdir(parents=True, exist_ok=True)


def nsenter(pid: int, argv: list[str]) -> list[str]:
    return ["nsenter", "--target", str(pid), "--mount", "--uts", "--net", "--", *argv]


def _write(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
