"""The files a lab writes, as pure functions of the lab's records.

Kept free of I/O so that what sshd, libvirtd and the inventory engineer get is tested
as data (tests/unit/lab/test_render.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from orchestrator.lab import guest_image
from orchestrator.lab.model import AGENT_DIR, LIBVIRT_URI, LabHost, LabInfo
from orchestrator.lab.network import PROVIDER_BRIDGE, LabNetwork

FLAVORS: tuple[dict[str, Any], ...] = (
    {"name": "m1.nano", "vcpus": 1, "ram_mb": 64, "disk_gb": 1},
    {"name": "m1.tiny", "vcpus": 1, "ram_mb": 128, "disk_gb": 1},
    {"name": "m1.small", "vcpus": 1, "ram_mb": 256, "disk_gb": 2},
)

# QEMU user-mode networking, kept for guests that need no neighbours: 10.0.2.0/24 is
# QEMU's own user-mode subnet (gateway .2, DNS .3), so the fixed IPs herd hands out
# match what QEMU routes. A guest that connects out gets nowhere: QEMU connects from
# the host's network namespace, which has no route off the lab.
LAB_NETWORK: dict[str, Any] = {
    "name": "lab-net",
    "type": "user",
    "subnet": "10.0.2.0/24",
    "gateway": "10.0.2.2",
    "allocation_pool": {"start": "10.0.2.100", "end": "10.0.2.250"},
    "dns": ["10.0.2.3"],
}
PROVIDER_NETWORK_NAME = "provider"


def provider_network(lab_network: LabNetwork) -> dict[str, Any]:
    """The lab's default network, bridged as on a real fleet: every host's
    br-provider, one layer-2 segment with the root namespace at .254. No gateway:
    nothing routes off the provider network, so guests get no default route."""
    start, end = lab_network.provider_pool
    return {
        "name": PROVIDER_NETWORK_NAME,
        "type": "bridge",
        "bridge": PROVIDER_BRIDGE,
        "subnet": str(lab_network.provider),
        "allocation_pool": {"start": start, "end": end},
        "default": True,
    }


QEMU_USER = "libvirt-qemu"
QEMU_GROUP = "kvm"


def sshd_config(host: LabHost, authorized_keys: Path) -> str:
    """sshd for one lab host: its own address, host key and pid file; only the lab key
    may log in, as root, or on a non-root host (``host.user``) as that user alone, from
    its own ~/.ssh/authorized_keys, with root logins refused as a hardened host would."""
    if host.user == "root":
        login = [f"AuthorizedKeysFile {authorized_keys}", "PermitRootLogin prohibit-password"]
    else:
        login = [
            "AuthorizedKeysFile .ssh/authorized_keys",
            "PermitRootLogin no",
            f"AllowUsers {host.user}",
        ]
    return "\n".join(
        [
            f"# Written by `herd lab up` for {host.name}; sshd runs in that host's namespace.",
            f"ListenAddress {host.address}",
            f"Port {host.port}",
            f"HostKey {host.host_key}",
            *login,
            f"PidFile {host.path('run') / 'sshd.pid'}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            # The lab key may sit below /tmp (pytest's tmp_path), whose mode StrictModes
            # rejects on every parent directory; the key itself is root's, 0644.
            "StrictModes no",
            "PrintMotd no",
            "X11Forwarding no",
            # The agent bundle is uploaded by SFTP; internal-sftp needs no helper path.
            "Subsystem sftp internal-sftp",
            "",
        ]
    )


def libvirtd_conf() -> str:
    """Logs to the host's own log dir, so a failed start can be explained from it; the
    read-write socket is Debian's: group ``libvirt``, mode 0770. Debian also asks polkit,
    which lets group libvirt in; the lab has no polkit, so the socket's group and mode
    are the whole access control (``auth_unix_rw = "none"``), to the same effect."""
    return (
        "# Written by `herd lab up`.\n"
        'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"\n'
        'unix_sock_group = "libvirt"\n'
        'unix_sock_ro_perms = "0777"\n'
        'unix_sock_rw_perms = "0770"\n'
        'auth_unix_ro = "none"\n'
        'auth_unix_rw = "none"\n'
    )


def virtlogd_conf() -> str:
    return '# Written by `herd lab up`.\nlog_outputs = "3:file:/var/log/libvirt/virtlogd.log"\n'


def qemu_conf() -> str:
    """Debian's qemu user and group, set explicitly because the lab's /etc/libvirt
    replaces the distribution's; and no cgroups, because every lab host shares one
    kernel and one cgroup tree: libvirt names a guest's cgroup after its per-daemon id
    and name, so two hosts would collide, and a SIGKILLed qemu would leave it behind."""
    return (
        "# Written by `herd lab up`.\n"
        f'user = "{QEMU_USER}"\n'
        f'group = "{QEMU_GROUP}"\n'
        "cgroup_controllers = [ ]\n"
    )


def known_hosts_line(address: str, port: int, public_key: str, name: str) -> str:
    """`[addr]:port keytype key name`, or `addr keytype key name` on port 22: the forms
    OpenSSH and asyncssh both match. The key file's own comment is replaced by `name`."""
    keytype, key, *_ = public_key.split()
    where = address if port == 22 else f"[{address}]:{port}"
    return f"{where} {keytype} {key} {name}"


def known_hosts(lines: list[str]) -> str:
    return "".join(f"{line}\n" for line in lines)


def inventory_document(info: LabInfo) -> dict[str, Any]:
    """The inventory's data, in the schema `herd inventory apply` reads."""
    return {
        "hosts": [
            {
                "name": host.name,
                "address": host.address,
                "ssh": {
                    "user": host.user,
                    "port": host.port,
                    "key": str(info.key),
                    "known_hosts": str(info.known_hosts),
                    **({"proxy_jump": info.bastion_endpoint} if info.bastion else {}),
                },
                "libvirt_uri": LIBVIRT_URI,
                "agent_dir": AGENT_DIR,
                "labels": {"lab": "true"},
                "availability_zone": "lab",
                "image_source_dirs": [str(info.host_images)],
            }
            for host in info.hosts
        ],
        "flavors": [dict(flavor) for flavor in FLAVORS],
        "images": [
            {
                "name": "blank",
                "source": str(info.image),
                "format": "qcow2",
                "properties": {"architecture": "x86_64"},
            },
            *guest_image.paths(info.image.parent).inventory_images(),
        ],
        "networks": [provider_network(info.network), dict(LAB_NETWORK)],
    }


def inventory(info: LabInfo) -> str:
    """The inventory file: a comment header, then YAML whose leaf mappings are in flow
    style, so each host, flavor and image reads on a few lines."""
    header = (
        f"# herd lab inventory: {len(info.hosts)} host(s) on this machine, "
        "written by `herd lab up`.\n"
        f"# Apply it with: herd inventory apply {info.inventory}\n"
        "# Rewritten on every `herd lab up`; `herd lab down` removes it with the lab.\n"
    )
    body = yaml.safe_dump(
        inventory_document(info), sort_keys=False, default_flow_style=None, width=1000
    )
    return header + body
