"""`Lab`: bring a lab of real hypervisors up on this machine, look at it, take it down.

A lab lives in one root directory: `lab.json` (what it was made with), the lab's SSH
client key and known_hosts, the inventory, a placeholder image, and a directory per
host (see model.BINDS). Hosts come up concurrently, one thread each: every step is a
subprocess, and a thread per host keeps a slow libvirtd from holding up the others.

`down` relies on nothing `up` might not have finished: it finds a host's processes by
what they see (procs.py), so it cleans up after a half-failed `up` as well.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from orchestrator.endpoints import host_port
from orchestrator.errors import LabError
from orchestrator.lab import (
    checks,
    commands,
    daemons,
    guest_image,
    namespace,
    network,
    procs,
    render,
    users,
)
from orchestrator.lab.addressing import check_port, host_addresses
from orchestrator.lab.bastion import Bastion
from orchestrator.lab.model import (
    BASTION_USER,
    DEFAULT_BASE_ADDRESS,
    DEFAULT_HOSTS,
    DEFAULT_ROOT,
    DEFAULT_SSH_PORT,
    LIBVIRT_URI,
    MARKER,
    ROOT_ENV,
    SERVICES,
    BastionStatus,
    LabHost,
    LabHostStatus,
    LabInfo,
    host_name,
)

Progress = Callable[[str], None]

STATE_FILE = "lab.json"
STATE_FORMAT = 1


@dataclass(frozen=True)
class LabState:
    """What `lab.json` records: enough to rebuild the LabInfo of every host."""

    base_address: str
    ssh_port: int
    hosts: int
    bastion: bool = False

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": STATE_FORMAT,
                "base_address": self.base_address,
                "ssh_port": self.ssh_port,
                "hosts": self.hosts,
                "bastion": self.bastion,
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> LabState:
        data = json.loads(text)
        bastion = data.get("bastion", False)
        if not isinstance(bastion, bool):
            raise ValueError(f"bastion is {bastion!r}, not true or false")
        return cls(str(data["base_address"]), int(data["ssh_port"]), int(data["hosts"]), bastion)


def resolve_settings(
    root: Path,
    recorded: LabState | None,
    base_address: str | None,
    ssh_port: int | None,
    bastion: bool | None = None,
) -> tuple[str, int, bool]:
    """A lab keeps the addresses and the bastion it was made with: asking for others is
    an error rather than a silent move, since the inventory and known_hosts already
    name them."""
    if recorded is None:
        port = check_port(ssh_port or DEFAULT_SSH_PORT)
        return base_address or DEFAULT_BASE_ADDRESS, port, bool(bastion)
    if not recorded.base_address.startswith("198.18."):
        raise LabError(
            f"the lab at {root} was made by an older herd on loopback address "
            f"{recorded.base_address}; `herd lab down --root {root}` first, then `herd lab up`"
        )
    if base_address is not None and base_address != recorded.base_address:
        raise LabError(
            f"the lab at {root} uses base address {recorded.base_address}; "
            f"`herd lab down --root {root}` first to move it to {base_address}"
        )
    if ssh_port is not None and ssh_port != recorded.ssh_port:
        raise LabError(
            f"the lab at {root} uses ssh port {recorded.ssh_port}; "
            f"`herd lab down --root {root}` first to move it to {ssh_port}"
        )
    if bastion is not None and bastion != recorded.bastion:
        made = "behind a bastion" if recorded.bastion else "without a bastion"
        raise LabError(
            f"the lab at {root} was made {made}; `herd lab down --root {root}` first to "
            f"make it {'without' if recorded.bastion else 'with'} one"
        )
    return recorded.base_address, recorded.ssh_port, recorded.bastion


def lab_hosts(
    root: Path, base_address: str, ssh_port: int, count: int, bastion: bool = False
) -> tuple[LabHost, ...]:
    reached_from = network.LabNetwork.for_base(base_address).bastion_netns if bastion else None
    return tuple(
        LabHost(
            name=host_name(i),
            address=address,
            port=ssh_port,
            dir=root / host_name(i),
            user=users.ssh_user(host_name(i)),
            reached_from=reached_from,
        )
        for i, address in enumerate(host_addresses(base_address, count), start=1)
    )


class Lab:
    """A lab rooted at one directory (default: $HERD_LAB_DIR, else /var/lib/herd-lab).
    Construct it freely; every method that touches the machine needs root.
    `base_address` and `ssh_port` matter to the first `up` only: afterwards the lab's
    own record wins (and a different explicit value is an error)."""

    def __init__(
        self,
        root: Path | str | None = None,
        base_address: str | None = None,
        ssh_port: int | None = None,
        bastion: bool | None = None,
    ) -> None:
        self.root = checks.lab_root(root or os.environ.get(ROOT_ENV) or DEFAULT_ROOT)
        self.base_address = base_address
        self.ssh_port = ssh_port
        self.bastion = bastion

    # -- reading -----------------------------------------------------------------

    @property
    def state_file(self) -> Path:
        return self.root / STATE_FILE

    def recorded(self) -> LabState | None:
        try:
            return LabState.from_json(self.state_file.read_text())
        except FileNotFoundError:
            return None
        except (ValueError, KeyError) as exc:
            raise LabError(
                f"{self.state_file} is damaged ({exc}); `herd lab down` removes the lab"
            ) from None

    def info(self) -> LabInfo:
        state = self.recorded()
        if state is None:
            raise LabError(f"no lab at {self.root}; `herd lab up` makes one")
        hosts = lab_hosts(self.root, state.base_address, state.ssh_port, state.hosts, state.bastion)
        return LabInfo(self.root, state.base_address, state.ssh_port, hosts, state.bastion)

    @property
    def hosts(self) -> tuple[LabHost, ...]:
        return self.info().hosts

    # -- up ----------------------------------------------------------------------

    def up(self, hosts: int | None = None, progress: Progress | None = None) -> LabInfo:
        """Make sure hosts lab-1..lab-N are up, N being `hosts` or the lab's current
        size, whichever is larger (a lab never shrinks but by `down`). Idempotent:
        what runs is left alone, what is missing is started, and `progress` hears of
        each thing done, so silence means the lab was already up."""
        say = progress or _quiet
        checks.require_root()
        checks.check_prerequisites()
        recorded = self.recorded()
        if recorded is None and self.root.exists() and any(self.root.iterdir()):
            raise LabError(
                f"{self.root} exists and is not a herd lab (no {STATE_FILE}); pick another --root"
            )
        base_address, ssh_port, bastion = resolve_settings(
            self.root, recorded, self.base_address, self.ssh_port, self.bastion
        )
        count = max(hosts or 0, recorded.hosts if recorded else 0) or DEFAULT_HOSTS
        if recorded is not None and hosts is not None and hosts < recorded.hosts:
            say(f"the lab keeps its {recorded.hosts} hosts; `herd lab down` removes a lab")
        lab_hosts(self.root, base_address, ssh_port, count)  # validates the addresses first

        self.root.mkdir(parents=True, exist_ok=True)
        # Recorded before any host exists, so `down` knows the lab even if `up` fails.
        state = LabState(base_address, ssh_port, count, bastion)
        _write(self.state_file, state.to_json() + "\n")
        info = self.info()
        namespace.ensure_mountpoints()
        if not info.key.exists():
            namespace.keygen(info.key, comment=f"herd-lab@{self.root}")
            say("lab SSH key created")
        if not info.image.exists():
            info.image.parent.mkdir(exist_ok=True)
            commands.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", str(info.image), "1G"],
                "qemu-img create",
            )
            say(f"placeholder image {info.image} created")
        info.host_images.mkdir(mode=0o755, exist_ok=True)
        for bridge in network.ensure_bridges(info.network, self.root, bastion):
            say(f"bridge {bridge} created")
        if bastion:
            # Before the hosts: their sshd is ready once it answers in the bastion's
            # namespace, which is where the lab (like herd) reaches them from.
            for made in network.ensure_bastion(info.network, self.root):
                say(f"bastion: {made} created")
        had_guest = guest_image.paths(info.image.parent).initrd.exists()
        built = guest_image.build(info.image.parent)
        if not had_guest:
            say(f"test guest image ({built.kernel_version}) built in {info.image.parent}")

        authorized = info.key.with_name(info.key.name + ".pub")
        ids = users.lab_ids(self.root)
        failures = _each(
            info.hosts, lambda host: self._ensure_host(info, host, authorized, ids, say)
        )
        lines = [
            render.known_hosts_line(
                host.address,
                host.port,
                host.host_key.with_name(host.host_key.name + ".pub").read_text(),
                host.name,
            )
            for host in info.hosts
            if host.host_key.exists()
        ]
        if bastion and not failures:
            jump = self._bastion(info)
            if jump.up():
                say(f"bastion sshd started on {host_port(jump.address, jump.port)}")
            lines.append(
                render.known_hosts_line(jump.address, jump.port, jump.host_public_key(), "bastion")
            )
        _write(info.known_hosts, render.known_hosts(lines))
        _write(info.inventory, render.inventory(info))
        _raise_first(failures, "`herd lab down` removes a half-made lab")
        self._probe_qemu(info.hosts[0], say)
        return info

    def _bastion(self, info: LabInfo) -> Bastion:
        """The lab's bastion: the lab key logs in, forwards go to the hosts' sshds only."""
        return Bastion(
            info.bastion_dir,
            info.network.bastion_address,
            info.ssh_port,
            BASTION_USER,
            [(host.address, host.port) for host in info.hosts],
            netns=info.network.bastion_netns,
            authorized=info.key.with_name(info.key.name + ".pub").read_text(),
        )

    def _ensure_host(
        self, info: LabInfo, host: LabHost, authorized_keys: Path, ids: users.Ids, say: Progress
    ) -> None:
        namespace.prepare(host, authorized_keys)
        users.prepare(host, ids, authorized_keys.read_text())
        holder = namespace.holder(host)
        fresh = holder is None
        if holder is None:
            if procs.host_pids(host.path(MARKER)):
                # Daemons of a namespace whose holder died: start from scratch.
                self._end_processes(host)
                say(f"{host.name}: cleared the remains of a broken namespace")
            holder = namespace.create(host)
            say(f"{host.name}: namespace created")
        elif not users.bound_in(holder):
            raise LabError(
                f"{host.name}: its namespace was made by an older herd, without the lab's "
                "accounts (users.py); `herd lab down` and `herd lab up` make it anew"
            )
        # Before any daemon: sshd binds the management address, and is only "ready"
        # once it answers there from the root namespace.
        network.attach_host(info.network, self.root, host.index, host.address, holder, fresh)
        for service in SERVICES:
            if daemons.start(host, service):
                say(f"{host.name}: {service} started")

    def _probe_qemu(self, host: LabHost, say: Progress) -> None:
        """Have one libvirtd probe QEMU now, into the lab's shared cache, so that no
        host pays for it in its first build, and hosts never probe all at once."""
        fresh = not any(namespace.shared_capabilities(host).iterdir())
        started = time.monotonic()
        argv = ["virsh", "-c", LIBVIRT_URI, "domcapabilities", "--virttype", "qemu"]
        done = self._exec(host, [*argv, "--arch", "x86_64"], None, 300)
        if done.returncode != 0:
            said = done.stderr.strip().splitlines()
            raise LabError(f"{host.name}: libvirt could not probe QEMU: {said[-1] if said else ''}")
        if fresh:
            say(f"QEMU capabilities probed once for all hosts ({time.monotonic() - started:.1f}s)")

    # -- looking -----------------------------------------------------------------

    def status(self) -> list[LabHostStatus]:
        """One record per host, read concurrently; a host that does not answer is
        reported as such, never skipped."""
        checks.require_root()
        info = self.info()
        with ThreadPoolExecutor(max_workers=max(1, min(len(info.hosts), 8))) as pool:
            return list(pool.map(lambda host: self._host_status(info, host), info.hosts))

    def bastion_status(self) -> BastionStatus | None:
        """The bastion of a lab made with one, else None."""
        checks.require_root()
        info = self.info()
        if not info.bastion:
            return None
        return BastionStatus(
            endpoint=info.bastion_endpoint,
            namespace=info.network.bastion_netns in network.netns_names(),
            sshd=self._bastion(info).running() is not None,
        )

    def _host_status(self, info: LabInfo, host: LabHost) -> LabHostStatus:
        alive = {service: daemons.running(host, service) is not None for service in SERVICES}
        domains: int | None = None
        if alive["libvirtd"]:
            try:
                done = self._exec(
                    host, ["virsh", "-c", LIBVIRT_URI, "list", "--all", "--name"], None, 15
                )
            except (LabError, subprocess.TimeoutExpired):
                done = None
            if done is not None and done.returncode == 0:
                domains = len([line for line in done.stdout.splitlines() if line.strip()])
        return LabHostStatus(
            name=host.name,
            address=host.address,
            port=host.port,
            namespace=namespace.holder(host) is not None,
            virtlogd=alive["virtlogd"],
            libvirtd=alive["libvirtd"],
            sshd=alive["sshd"],
            domains=domains,
            links=network.cabled(info.network, host.index),
        )

    # -- acting on one host ------------------------------------------------------

    def exec_in(
        self,
        host: str,
        argv: list[str],
        *,
        input: str | None = None,
        timeout: float = 60.0,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside a host's namespaces (its /run, /etc/libvirt, hostname),
        as root with a clean environment; `virsh -c qemu:///system` there talks to
        that host's libvirtd. For short commands: output is captured, so do not start
        daemons this way (start_service does that). A command still running after
        `timeout` seconds raises subprocess.TimeoutExpired."""
        checks.require_root()
        done = self._exec(self.info().host(host), argv, input, timeout)
        if check and done.returncode != 0:
            said = done.stderr.strip().splitlines()
            raise LabError(
                f"{host}: {' '.join(argv)} exited {done.returncode}: {said[-1] if said else ''}"
            )
        return done

    def _exec(
        self, host: LabHost, argv: list[str], input: str | None, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        target = namespace.target(host)
        if target is None:
            raise LabError(f"{host.name}: its namespace is not running; `herd lab up` recreates it")
        return subprocess.run(
            namespace.nsenter(target, argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=commands.ENV,
            stdin=None if input is not None else subprocess.DEVNULL,
        )

    def stop_service(self, host: str, service: str) -> None:
        """Stop one daemon of a host, to play a host whose sshd or libvirtd died."""
        checks.require_root()
        daemons.stop(self.info().host(host), service)

    def start_service(self, host: str, service: str) -> None:
        """Start one daemon of a host again (a no-op if it runs); waits until it answers."""
        checks.require_root()
        daemons.start(self.info().host(host), service)

    # -- down --------------------------------------------------------------------

    def down(self, progress: Progress | None = None) -> None:
        """Remove the lab: domains destroyed, every process of every host ended (TERM,
        then KILL), the root directory deleted. Safe to repeat, and after a failed
        `up`; it refuses a directory that is not a lab."""
        say = progress or _quiet
        checks.require_root()
        if not self.root.exists():
            say(f"no lab at {self.root}")
            return
        if self.recorded() is None and any(self.root.iterdir()):
            raise LabError(f"{self.root} is not a herd lab (no {STATE_FILE}); not removing it")
        hosts = [
            LabHost(name=path.name, address="", port=0, dir=path)
            for path in sorted(self.root.glob("lab-*"))
            if path.is_dir()
        ]
        failures = _each(hosts, lambda host: self._take_down(host, say))
        _raise_first(failures, f"the lab's files are left in {self.root}")
        self._remove_bastion(say)
        self._remove_links(say)
        self._unmount_leftovers()
        if self.root.is_mount():
            # Someone made the root a mount of its own: empty it, leave the mount.
            for child in self.root.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        else:
            shutil.rmtree(self.root)
        say(f"removed {self.root}")

    def _remove_bastion(self, say: Progress) -> None:
        """The bastion's sshd, then its namespace and the root namespace's route; a
        lab made without one has none of them, and nothing is said."""
        state = self.recorded()
        if state is None or not state.base_address.startswith("198.18."):
            return
        lab_network = network.LabNetwork.for_base(state.base_address)
        jump = Bastion(
            self.root / "bastion", lab_network.bastion_address, state.ssh_port, BASTION_USER, []
        )
        if jump.running() is not None:
            jump.down()
            say("bastion sshd stopped")
        for removed in network.remove_bastion(lab_network):
            say(f"removed {removed}")

    def _remove_links(self, say: Progress) -> None:
        """The lab's bridges and veths in the root namespace, once its hosts' network
        namespaces are gone (their ends of the veths go with them)."""
        state = self.recorded()
        if state is None:
            return
        try:
            lab_network = network.LabNetwork.for_base(state.base_address)
        except LabError:
            return  # a lab of an older herd, on loopback addresses: it made no links
        removed = network.remove(lab_network, self.root)
        if removed:
            say(f"removed {len(removed)} link(s): {', '.join(removed)}")

    def _take_down(self, host: LabHost, say: Progress) -> None:
        if daemons.running(host, "libvirtd") is not None:
            destroyed = self._destroy_domains(host)
            if destroyed:
                say(f"{host.name}: destroyed {destroyed} domain(s)")
        ended = self._end_processes(host)
        if ended:
            say(f"{host.name}: ended {ended} process(es)")

    def _destroy_domains(self, host: LabHost) -> int:
        """Through libvirt first, so qemu goes down the way libvirt expects; best
        effort, since the kill that follows catches whatever this misses."""
        try:
            listed = self._exec(host, ["virsh", "-c", LIBVIRT_URI, "list", "--name"], None, 15)
        except (LabError, subprocess.TimeoutExpired):
            return 0
        names = [line.strip() for line in listed.stdout.splitlines() if line.strip()]
        destroyed = 0
        for name in names:
            try:
                done = self._exec(host, ["virsh", "-c", LIBVIRT_URI, "destroy", name], None, 30)
            except (LabError, subprocess.TimeoutExpired):
                continue
            destroyed += done.returncode == 0
        return destroyed

    def _end_processes(self, host: LabHost) -> int:
        marker = host.path(MARKER)
        count = len(procs.host_pids(marker))
        survivors = procs.terminate_host(marker)
        if survivors:
            raise LabError(
                f"{host.name}: processes {', '.join(map(str, sorted(survivors)))} survived SIGKILL "
                "(stuck in the kernel?)"
            )
        return count

    def _unmount_leftovers(self) -> None:
        """Lab mounts live in the hosts' private namespaces and vanish with them; this
        catches any made below the root in the root namespace (by hand, say), deepest
        first, before the directory is deleted under them."""
        for mountpoint in sorted(
            _mounts_below(self.root), key=lambda p: len(p.parts), reverse=True
        ):
            commands.run(["umount", "--lazy", str(mountpoint)], f"umount {mountpoint}")


def _mounts_below(root: Path) -> list[Path]:
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = Path(_unescape(line.split()[4]))
        if root in point.parents:
            found.append(point)
    return found


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code in ("\\040", "\\011", "\\012", "\\134"):
        field = field.replace(code, chr(int(code[1:], 8)))
    return field


def _each(hosts: Iterable[LabHost], work: Callable[[LabHost], None]) -> list[LabError]:
    """Run `work` for every host at once; one host's failure never hides another's."""
    hosts = list(hosts)
    if not hosts:
        return []

    def attempt(host: LabHost) -> LabError | None:
        try:
            work(host)
        except LabError as exc:
            return exc
        except (OSError, subprocess.SubprocessError) as exc:
            return LabError(f"{host.name}: {exc}")
        return None

    with ThreadPoolExecutor(max_workers=min(len(hosts), 8)) as pool:
        return [failure for failure in pool.map(attempt, hosts) if failure is not None]


def _raise_first(failures: list[LabError], then: str) -> None:
    if not failures:
        return
    more = f" (and {len(failures) - 1} more host(s) failed)" if len(failures) > 1 else ""
    raise LabError(f"{failures[0]}{more}; {then}")


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _quiet(_message: str) -> None:
    pass
