"""The lab's accounts: libvirt's socket group, and the unprivileged user of its non-root host.

A real fleet logs in as a plain user in group ``libvirt`` (no sudo, no root login), so
the lab makes one such host by default: lab-2, user ``herd-lab``. Where the accounts
live: every lab host gets its own /etc/passwd and /etc/group, a copy of this machine's
plus group ``libvirt`` and user ``herd-lab``, bound over the machine's files in the
host's mount namespace. sshd (the login and its initgroups), libvirtd (its
``unix_sock_group``) and QEMU (libvirt-qemu's groups) all read them there. Nothing is
added to this machine's own accounts, so ``lab down`` has nothing to remove, two labs
never share (or remove) each other's users, and a test that takes ``herd-lab`` out of
``libvirt`` on one host (``set_libvirt_member``) changes that host alone.

The copies are rewritten in place, never renamed over: a bind mount holds the inode it
was made with, so a renamed file would never reach a running namespace. No /etc/shadow
entry: with ``UsePAM no`` sshd then sees no locked password and lets the key in.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from orchestrator.errors import LabError
from orchestrator.lab.model import AGENT_DIR, BINDS, LabHost

USER = "herd-lab"
GROUP = "libvirt"  # Debian's libvirt socket group (libvirt-daemon-system creates it)
# QEMU's group (render.QEMU_GROUP): the agent reads through it the images libvirt gave
# to a running guest's QEMU (agent/fsutil.guest_file_mode).
KVM_GROUP = "kvm"
HOME = f"/home/{USER}"
UNPRIVILEGED_HOSTS = ("lab-2",)
ACCOUNTS_DIR = "accounts"  # in each host's dir: its passwd and group
IDS_FILE = "accounts.json"  # in the lab root: the ids every host uses
FIRST_ID = 2000
LAST_ID = 59999


def ssh_user(host_name: str) -> str:
    """The user herd logs in as on a lab host."""
    return USER if host_name in UNPRIVILEGED_HOSTS else "root"


@dataclass(frozen=True)
class Ids:
    """herd-lab's uid and primary group, and group libvirt's gid: the same on every host
    of a lab, so files keep their owner's name wherever they are looked at from."""

    uid: int
    gid: int
    libvirt_gid: int


def _ids_in(text: str, field: int) -> set[int]:
    found = set()
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) > field and parts[field].isdigit():
            found.add(int(parts[field]))
    return found


def _entry(text: str, name: str) -> list[str] | None:
    for line in text.splitlines():
        parts = line.split(":")
        if parts[0] == name:
            return parts
    return None


def choose_ids(passwd: str, group: str) -> Ids:
    """Ids no account of this machine uses; a machine that has a ``libvirt`` group
    already (libvirt-daemon-system installed) keeps its gid."""
    used_uids = _ids_in(passwd, 2)
    used_gids = _ids_in(group, 2)
    existing = _entry(group, GROUP)
    libvirt_gid = int(existing[2]) if existing and existing[2].isdigit() else None
    free_uid = next((i for i in range(FIRST_ID, LAST_ID) if i not in used_uids), None)
    free_gids = [i for i in range(FIRST_ID, LAST_ID) if i not in used_gids][:2]
    if free_uid is None or len(free_gids) < 2:
        raise LabError(f"no free uid/gid from {FIRST_ID} to {LAST_ID} for the lab's {USER}")
    return Ids(free_uid, free_gids[0], libvirt_gid if libvirt_gid is not None else free_gids[1])


def passwd_text(machine: str, ids: Ids) -> str:
    """This machine's passwd without any ``herd-lab`` of its own, plus the lab's."""
    lines = [line for line in machine.splitlines() if line and line.split(":")[0] != USER]
    lines.append(f"{USER}:x:{ids.uid}:{ids.gid}:herd lab unprivileged user:{HOME}:/bin/sh")
    return "\n".join(lines) + "\n"


def _with_member(line: str, member: bool) -> str:
    name, password, gid, listed = [*line.split(":"), "", "", ""][:4]
    members = [m for m in listed.split(",") if m and m != USER]
    return ":".join([name, password, gid, ",".join(members + ([USER] if member else []))])


def group_text(machine: str, ids: Ids, member: bool = True) -> str:
    """This machine's group file with group ``herd-lab``, ``herd-lab`` added to
    ``kvm``, and ``libvirt`` holding its machine members plus ``herd-lab`` (or without
    it, to play a host not yet set up)."""
    lines = []
    members: list[str] = []
    for line in machine.splitlines():
        parts = line.split(":")
        if not line or parts[0] == USER:
            continue
        if parts[0] == GROUP:
            members = [m for m in (parts[3] if len(parts) > 3 else "").split(",") if m]
            continue
        lines.append(_with_member(line, True) if parts[0] == KVM_GROUP else line)
    members = [m for m in members if m != USER] + ([USER] if member else [])
    lines.append(f"{USER}:x:{ids.gid}:")
    lines.append(f"{GROUP}:x:{ids.libvirt_gid}:{','.join(members)}")
    return "\n".join(lines) + "\n"


def accounts_dir(host: LabHost) -> Path:
    return host.path(ACCOUNTS_DIR)


def binds(host: LabHost) -> list[tuple[Path, str]]:
    """The host's account files over the machine's, inside its namespace."""
    return [(accounts_dir(host) / name, f"/etc/{name}") for name in ("passwd", "group")]


def lab_ids(root: Path) -> Ids:
    """The ids this lab chose at its first ``up``, or new ones (recorded at once)."""
    path = root / IDS_FILE
    try:
        return Ids(**json.loads(path.read_text()))
    except FileNotFoundError:
        pass
    except (ValueError, TypeError) as exc:
        raise LabError(f"{path} is damaged ({exc}); `herd lab down` removes the lab") from None
    ids = choose_ids(Path("/etc/passwd").read_text(), Path("/etc/group").read_text())
    path.write_text(json.dumps(asdict(ids)) + "\n")
    return ids


def prepare(host: LabHost, ids: Ids, public_key: str) -> None:
    """The host's account files, and on the non-root host herd-lab's home, its key and
    the agent directory it owns (0755: QEMU's user traverses it to reach the disks)."""
    directory = accounts_dir(host)
    directory.mkdir(mode=0o755, exist_ok=True)
    _write_in_place(directory / "passwd", passwd_text(Path("/etc/passwd").read_text(), ids))
    # Always with herd-lab in libvirt: a host a test broke is mended by the next `up`.
    _write_in_place(directory / "group", group_text(Path("/etc/group").read_text(), ids))
    agent_dir = host.path(_part_for(AGENT_DIR))
    if host.name not in UNPRIVILEGED_HOSTS:
        os.chown(agent_dir, 0, 0)
        return
    home = host.path(_part_for("/home")) / USER
    ssh = home / ".ssh"
    ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys = ssh / "authorized_keys"
    _write_in_place(keys, public_key if public_key.endswith("\n") else public_key + "\n")
    keys.chmod(0o600)
    for path in (home, ssh, keys, agent_dir):
        os.chown(path, ids.uid, ids.gid)
    home.chmod(0o750)
    agent_dir.chmod(0o755)


def bound_in(pid: int) -> bool:
    """Whether the namespace ``pid`` lives in sees the lab's accounts (a namespace made
    by a herd before them does not, and its sshd would refuse herd-lab)."""
    try:
        text = Path(f"/proc/{pid}/root/etc/passwd").read_text()
    except OSError:
        return False
    return any(line.split(":")[0] == USER for line in text.splitlines())


def set_libvirt_member(host: LabHost, member: bool) -> None:
    """Put herd-lab in group libvirt on this host, or take it out (new logins see it)."""
    ids = lab_ids(host.dir.parent)
    _write_in_place(
        accounts_dir(host) / "group", group_text(Path("/etc/group").read_text(), ids, member)
    )


def _part_for(target: str) -> str:
    return next(part for part, bound in BINDS if bound == target)


def _write_in_place(path: Path, text: str) -> None:
    if path.exists() and path.read_text() == text:
        return
    with open(path, "w") as handle:
        handle.write(text)
