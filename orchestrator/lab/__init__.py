"""A local multi-hypervisor lab: real libvirtd + sshd hosts, each in network, mount and
UTS namespaces of its own, joined by a management and a provider network (network.py).

`herd lab up` (orchestrator/cli/lab.py) and the e2e tests use this API:

    lab = Lab(Path("/var/lib/herd-lab"))
    info = lab.up(hosts=3)          # LabInfo: hosts, key, known_hosts, inventory
    lab.exec_in("lab-1", ["virsh", "-c", "qemu:///system", "list"])
    lab.stop_service("lab-2", "sshd"); lab.start_service("lab-2", "sshd")
    lab.status()                    # list[LabHostStatus]
    lab.down()
"""

from orchestrator.lab.lab import Lab, LabState
from orchestrator.lab.model import (
    BASTION_USER,
    DEFAULT_BASE_ADDRESS,
    DEFAULT_HOSTS,
    DEFAULT_ROOT,
    DEFAULT_SSH_PORT,
    ROOT_ENV,
    SERVICES,
    LabHost,
    LabHostStatus,
    LabInfo,
)

__all__ = [
    "BASTION_USER",
    "DEFAULT_BASE_ADDRESS",
    "DEFAULT_HOSTS",
    "DEFAULT_ROOT",
    "DEFAULT_SSH_PORT",
    "ROOT_ENV",
    "SERVICES",
    "Lab",
    "LabHost",
    "LabHostStatus",
    "LabInfo",
    "LabState",
]
