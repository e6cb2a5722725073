"""What must hold before a lab is touched, each refusal saying what to do about it."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
from pathlib import Path

from orchestrator.errors import LabError
from orchestrator.lab.commands import SYSTEM_PATH
from orchestrator.lab.model import BINDS
from orchestrator.lab.render import QEMU_GROUP, QEMU_USER

TOOLS: dict[str, str] = {
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "mount": "mount",
    "hostname": "hostname",
    "ip": "iproute2",
    "sysctl": "procps",
    "libvirtd": "libvirt-daemon",
    "virtlogd": "libvirt-daemon",
    "virsh": "libvirt-clients",
    "sshd": "openssh-server",
    "ssh-keygen": "openssh-client",
    "qemu-img": "qemu-utils",
    "qemu-system-x86_64": "qemu-system-x86",
}

# Debian builds libvirt with qemu user and group `libvirt-qemu`, and libvirtd looks
# both up before it even reads qemu.conf (which then selects group kvm, as Debian's
# own qemu.conf does); the libvirt-daemon-system package normally creates them.
_ACCOUNT_FIXES: dict[tuple[str, str], str] = {
    ("group", QEMU_GROUP): f"groupadd --system {QEMU_GROUP}",
    ("group", QEMU_USER): f"groupadd --system {QEMU_USER}",
    ("user", QEMU_USER): (
        f"useradd --system --gid {QEMU_GROUP} --home-dir /var/lib/libvirt --no-create-home "
        f"--shell /usr/sbin/nologin {QEMU_USER}"
    ),
}

# Paths a lab root must stay clear of: the namespace replaces what is bound over
# them, and sshd inside reads its config and keys from the root's real path.
_FORBIDDEN = (*(target for _part, target in BINDS), "/proc", "/sys", "/dev")


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError(
            "herd lab needs root: it makes mount namespaces and runs libvirtd and sshd; "
            "run it with sudo"
        )


def missing_tools() -> list[str]:
    return [name for name in TOOLS if shutil.which(name, path=SYSTEM_PATH) is None]


def missing_accounts() -> list[tuple[str, str]]:
    missing: list[tuple[str, str]] = []
    for kind, name in _ACCOUNT_FIXES:
        try:
            (grp.getgrnam if kind == "group" else pwd.getpwnam)(name)
        except KeyError:
            missing.append((kind, name))
    return missing


def accounts_error(missing: list[tuple[str, str]]) -> str:
    """One line naming what is missing and the commands that create it, in order
    (the user's primary group must exist before the user)."""
    names = ", ".join(f"{kind} {name}" for kind, name in missing)
    fixes = " && ".join(_ACCOUNT_FIXES[item] for item in missing)
    return f"libvirtd needs the qemu accounts; missing {names}; create them with: {fixes}"


def tools_error(missing: list[str]) -> str:
    packages = sorted({TOOLS[name] for name in missing})
    return (
        f"the lab needs {', '.join(missing)}; install them with: "
        f"apt-get install {' '.join(packages)}"
    )


def check_prerequisites() -> None:
    tools = missing_tools()
    if tools:
        raise LabError(tools_error(tools))
    accounts = missing_accounts()
    if accounts:
        raise LabError(accounts_error(accounts))


def lab_root(path: Path | str) -> Path:
    """The lab root as an absolute path, refused where the lab could not work or
    could do harm: inside a path the namespaces replace, or with characters that
    sshd_config and libvirt's config files would need quoting for."""
    root = Path(path).expanduser().resolve()
    text = str(root)
    if root == Path("/") or any(ch.isspace() or ch in "\"'\\#" for ch in text):
        raise LabError(
            f"lab root {text!r} is not usable; pick a plain directory like /var/lib/herd-lab"
        )
    for forbidden in _FORBIDDEN:
        place = Path(forbidden)
        if root == place or place in root.parents:
            raise LabError(
                f"lab root {text} is inside {forbidden}, which lab hosts replace with their "
                "own; pick another --root"
            )
    return root
