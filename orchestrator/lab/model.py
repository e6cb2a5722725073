"""The lab's records and fixed facts: what a lab host is, where its pieces live.

A lab host is a directory on this machine plus a mount+UTS+network namespace that
binds that directory's parts over the paths libvirtd, virtlogd, sshd and the agent use. Keeping
the layout in one place lets the namespace setup, the daemons and `down` agree on it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from orchestrator.endpoints import host_port
from orchestrator.errors import LabError
from orchestrator.lab.network import LabNetwork

DEFAULT_ROOT = Path("/var/lib/herd-lab")
DEFAULT_BASE_ADDRESS = "198.18.100.1"  # the first host's management address
DEFAULT_SSH_PORT = 2222
DEFAULT_HOSTS = 3
ROOT_ENV = "HERD_LAB_DIR"

AGENT_DIR = "/var/lib/herd"
# Who a lab's bastion lets in (with the lab key) to forward to the hosts' sshds: an
# account every Debian machine has, with no shell, as a jump host's users have none.
BASTION_USER = "nobody"
LIBVIRT_URI = "qemu:///system"

# (directory inside the host's dir, path it is bound over inside the namespace).
# The agent's state dir comes first: every process of a lab host sees it, so it is
# also how `down` recognises the host's processes (see procs.py).
BINDS: tuple[tuple[str, str], ...] = (
    ("herd", AGENT_DIR),
    ("run", "/run"),
    ("etc-libvirt", "/etc/libvirt"),  # libvirtd.conf, qemu.conf and persistent domain XML
    ("lib-libvirt", "/var/lib/libvirt"),
    ("cache-libvirt", "/var/cache/libvirt"),
    ("log", "/var/log/libvirt"),
    ("home", "/root"),  # each hypervisor has its own ~/.cache/herd for the agent bundle
    ("home-users", "/home"),  # the non-root host's herd-lab lives in /home/herd-lab
)
MARKER = BINDS[0][0]

# libvirtd probes each QEMU binary on first use (4-8 s here) and caches the result;
# every lab host runs the same binaries on the same kernel, so the hosts of a lab
# share one cache (<root>/qemu-capabilities), bound over this path, and probe once.
CAPABILITIES_CACHE = "/var/cache/libvirt/qemu/capabilities"

# Start order: libvirtd hands guest consoles to virtlogd, sshd is what makes a host
# reachable, so it comes last and a reachable host is a complete one.
SERVICES: tuple[str, ...] = ("virtlogd", "libvirtd", "sshd")


def host_name(index: int) -> str:
    """Lab hosts are numbered from 1, like the instances of `server create --count`."""
    return f"lab-{index}"


@dataclass(frozen=True)
class LabHost:
    """One lab hypervisor, as the orchestrator and the tests see it."""

    name: str
    address: str
    port: int
    dir: Path
    user: str = "root"  # who herd logs in as (users.py: herd-lab on the non-root host)
    reached_from: str | None = None
    """The network namespace (``ip netns`` name) the host's sshd is reached from, when
    not the root namespace: the bastion's, in a lab made with ``--bastion``."""

    def path(self, part: str) -> Path:
        return self.dir / part

    @property
    def index(self) -> int:
        """N of lab-N: which links of the lab's bridges are this host's."""
        return int(self.name.removeprefix("lab-"))

    @property
    def holder_pidfile(self) -> Path:
        return self.dir / "holder.pid"

    @property
    def sshd_config(self) -> Path:
        return self.dir / "ssh" / "sshd_config"

    @property
    def host_key(self) -> Path:
        return self.dir / "ssh" / "ssh_host_ed25519_key"


@dataclass(frozen=True)
class LabInfo:
    """Everything a caller needs to reach a lab: hosts, keys and the inventory."""

    root: Path
    base_address: str
    ssh_port: int
    hosts: tuple[LabHost, ...]
    bastion: bool = False
    """Whether herd reaches the hosts only through the lab's bastion sshd."""

    @property
    def network(self) -> LabNetwork:
        """The lab's management and provider subnets and link names."""
        return LabNetwork.for_base(self.base_address)

    @property
    def inventory(self) -> Path:
        return self.root / "inventory.yaml"

    @property
    def key(self) -> Path:
        return self.root / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    @property
    def image(self) -> Path:
        return self.root / "images" / "blank.qcow2"

    @property
    def bastion_dir(self) -> Path:
        return self.root / "bastion"

    @property
    def bastion_endpoint(self) -> str:
        """The bastion as ProxyJump names it: ``user@address:port``."""
        return f"{BASTION_USER}@{host_port(self.network.bastion_address, self.ssh_port)}"

    @property
    def host_images(self) -> Path:
        """The lab hosts' one ``image_source_dirs`` entry: where ``host://`` images
        may be read (every lab host sees this machine's files)."""
        return self.root / "host-images"

    def host(self, name: str) -> LabHost:
        for host in self.hosts:
            if host.name == name:
                return host
        raise LabError(
            f"no lab host named {name!r} (hosts: {', '.join(h.name for h in self.hosts)})"
        )

    def ssh_argv(self, host: LabHost, *remote: str) -> list[str]:
        """The `ssh` command line that reaches a host the way the orchestrator does:
        the lab key, and the lab known_hosts with no trust on first use."""
        return [
            "ssh",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-i",
            str(self.key),
            "-p",
            str(host.port),
            f"{host.user}@{host.address}",
            *remote,
        ]


@dataclass(frozen=True)
class BastionStatus:
    """What `lab status` saw of a lab's bastion: its namespace and its sshd."""

    endpoint: str
    namespace: bool
    sshd: bool

    @property
    def healthy(self) -> bool:
        return self.namespace and self.sshd

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "healthy": self.healthy}


@dataclass(frozen=True)
class LabHostStatus:
    """What `lab status` saw on one host; `domains` is None when libvirtd did not answer."""

    name: str
    address: str
    port: int
    namespace: bool
    virtlogd: bool
    libvirtd: bool
    sshd: bool
    domains: int | None
    links: bool = True
    """Both of its veths are up in the lab's bridges."""

    @property
    def healthy(self) -> bool:
        return self.namespace and self.links and self.virtlogd and self.libvirtd and self.sshd

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "healthy": self.healthy}
