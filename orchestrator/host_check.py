"""`herd host check`: what a hypervisor lacks for herd, one problem a line, each with its fix.

The check runs as one POSIX shell script over plain SSH, as the inventory's user, and
never starts the agent: the hosts worth checking are exactly those where the agent
could not start (no python3, an agent directory it cannot write). The script only
looks (``id``, ``virsh uri``, ``test -w``, ``df``, ``stat``) and prints ``key=value``
lines; ``evaluate`` turns them into findings, so every rule is tested as data.
"""

from __future__ import annotations

import asyncio
import shlex
from dataclasses import asdict, dataclass
from typing import Any

import asyncssh
from sqlmodel import select

from orchestrator.db.engine import Database
from orchestrator.db.models import Host, Network
from orchestrator.errors import HostUnreachable
from orchestrator.rpc.ssh import HostTarget, connect

MIN_PYTHON = (3, 9)
DEFAULT_MIN_FREE_GB = 5
SCRIPT_TIMEOUT = 30.0
AGENT_SUBDIRS = ("images", "instances", "jobs", "locks", "state")
# Debian's: libvirt-daemon-system runs QEMU as libvirt-qemu, group kvm, and makes
# group libvirt the one polkit lets at the read-write socket.
DEFAULT_QEMU_USER = "libvirt-qemu"
DEFAULT_QEMU_GROUP = "kvm"
LIBVIRT_GROUP = "libvirt"


@dataclass(frozen=True)
class Finding:
    """One thing looked at: ``ok``, what was seen, and when not ok how to fix it."""

    check: str
    ok: bool
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class HostCheck:
    host: str
    findings: tuple[Finding, ...]

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if not f.ok]

    def as_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "ok": not self.problems,
            "checks": [f.as_dict() for f in self.findings],
        }


_SCRIPT = r"""
agent_dir=$1; uri=$2; shift 2
echo "user=$(id -un)"
echo "groups=$(id -Gn)"
py=/usr/bin/python3
[ -x "$py" ] || py=$(command -v python3 2>/dev/null)
if [ -n "$py" ]; then
    echo "python=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)"
fi
echo "qemu_img=$(command -v qemu-img 2>/dev/null)"
if command -v virsh >/dev/null 2>&1; then
    echo "virsh=yes"
    if said=$(virsh -c "$uri" uri 2>&1 </dev/null); then echo "libvirt=ok"
    else echo "libvirt_error=$(printf '%s' "$said" | tr '\n' ' ' | cut -c1-300)"; fi
fi
for sock in /run/libvirt/virtqemud-sock /run/libvirt/libvirt-sock; do
    if [ -S "$sock" ]; then echo "socket=$(stat -c '%a %G %n' "$sock")"; break; fi
done
conf=/etc/libvirt/qemu.conf
setting() {  # the last `NAME = "value"` line of qemu.conf, if it can be read
    sed -n "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*\"\\(.*\\)\".*/\\1/p" "$conf" 2>/dev/null \
        | tail -n 1
}
qemu=$(setting user)
echo "qemu_user=$qemu"
echo "qemu_group=$(setting group)"
echo "qemu_user_groups=$(id -Gn "${qemu:-libvirt-qemu}" 2>/dev/null)"
if [ -d "$agent_dir" ]; then
    echo "dir=exists"
    [ -w "$agent_dir" ] && [ -x "$agent_dir" ] && echo "dir_writable=yes"
    for sub in images instances jobs locks state; do
        d=$agent_dir/$sub
        if [ -e "$d" ] && ! { [ -w "$d" ] && [ -x "$d" ]; }; then echo "unwritable=$d"; fi
    done
    existing=$agent_dir
else
    existing=$agent_dir
    while [ ! -d "$existing" ]; do existing=$(dirname "$existing"); done
    echo "dir=missing"
    echo "parent=$existing"
    [ -w "$existing" ] && echo "parent_writable=yes"
fi
echo "free_kb=$(df -Pk "$existing" 2>/dev/null | awk 'NR == 2 { print $4 }')"
p=$existing
while :; do
    echo "path=$(stat -c '%a %U %G' "$p" 2>/dev/null) $p"
    [ "$p" = / ] && break
    p=$(dirname "$p")
done
for bridge in "$@"; do
    if [ -d "/sys/class/net/$bridge/bridge" ]; then echo "bridge=$bridge"
    else echo "nobridge=$bridge"; fi
done
"""


def command(target: HostTarget, bridges: list[str]) -> str:
    """The remote command: the script on sh's command line, its arguments quoted (the
    agent dir, URI and bridge names are already held to plain characters)."""
    args = " ".join(shlex.quote(a) for a in (target.agent_dir, target.libvirt_uri, *bridges))
    return f"sh -c {shlex.quote(_SCRIPT)} herd-host-check {args}"


def parse(output: str) -> dict[str, list[str]]:
    """``key=value`` lines, every value of a repeated key kept in order."""
    facts: dict[str, list[str]] = {}
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            facts.setdefault(key.strip(), []).append(value.strip())
    return facts


def _one(facts: dict[str, list[str]], key: str) -> str:
    values = facts.get(key)
    return values[-1] if values else ""


def _traversable(mode: int, owner: str, group: str, user: str, groups: set[str]) -> bool:
    if owner == user:
        return bool(mode & 0o100)
    if group in groups:
        return bool(mode & 0o010)
    return bool(mode & 0o001)


def evaluate(
    facts: dict[str, list[str]],
    target: HostTarget,
    bridges: list[str],
    min_free_gb: int = DEFAULT_MIN_FREE_GB,
) -> list[Finding]:
    """Every finding about one host, from what the script printed."""
    user = _one(facts, "user") or target.user
    groups = set(_one(facts, "groups").split())
    root = user == "root"
    agent_dir = target.agent_dir
    findings: list[Finding] = []

    # python3: the agent's interpreter.
    python = _one(facts, "python")
    version = tuple(int(p) for p in python.split(".")[:2] if p.isdigit())
    if not python:
        findings.append(
            Finding("python3", False, "no python3", "apt-get install python3 (3.9 or newer)")
        )
    elif version < MIN_PYTHON:
        findings.append(
            Finding(
                "python3",
                False,
                f"python3 is {python}, the agent needs 3.9 or newer",
                "install Python 3.9+ as /usr/bin/python3 (Debian 11 or newer has it)",
            )
        )
    else:
        findings.append(Finding("python3", True, python))

    # qemu-img: the agent makes and inspects disks with it.
    qemu_img = _one(facts, "qemu_img")
    findings.append(
        Finding("qemu-img", True, qemu_img)
        if qemu_img
        else Finding("qemu-img", False, "qemu-img is not installed", "apt-get install qemu-utils")
    )

    # libvirt: the read-write socket behind the URI.
    findings.append(_libvirt(facts, target, user, groups, root))

    # The agent's directory.
    findings.append(_agent_dir(facts, agent_dir, user, root))

    # Free disk where the agent keeps disks and images.
    free_kb = _one(facts, "free_kb")
    if free_kb.isdigit():
        free_gb = int(free_kb) / (1 << 20)
        where = agent_dir if _one(facts, "dir") == "exists" else _one(facts, "parent")
        if free_gb < min_free_gb:
            findings.append(
                Finding(
                    "free disk",
                    False,
                    f"{free_gb:.1f} GiB free on {where}, below {min_free_gb} GiB",
                    f"free space on the file system of {where}, or move agent_dir",
                )
            )
        else:
            findings.append(Finding("free disk", True, f"{free_gb:.0f} GiB free on {where}"))

    # QEMU's user must traverse every directory down to the disks.
    findings.append(_traversal(facts, agent_dir))

    # A non-root agent reads the images libvirt gave to QEMU through QEMU's group.
    if not root:
        qemu_group = _one(facts, "qemu_group") or DEFAULT_QEMU_GROUP
        if qemu_group in groups:
            findings.append(Finding(f"group {qemu_group}", True, f"{user} is a member"))
        else:
            findings.append(
                Finding(
                    f"group {qemu_group}",
                    False,
                    f"{user} is not in group {qemu_group} (QEMU's group): it cannot read an "
                    "image a running guest holds, so a second server from it fails",
                    f"usermod -aG {qemu_group} {user} (as root; herd's next login picks it up)",
                )
            )

    # Bridges that networks of type bridge attach NICs to.
    missing = facts.get("nobridge", [])
    for bridge in missing:
        findings.append(
            Finding(
                f"bridge {bridge}",
                False,
                f"no bridge {bridge} (a network of type bridge attaches NICs to it)",
                f"create it, e.g. `ip link add {bridge} type bridge && ip link set {bridge} up`, "
                "and make it persistent in /etc/network/interfaces or systemd-networkd",
            )
        )
    present = facts.get("bridge", [])
    if present:
        findings.append(Finding("bridges", True, ", ".join(present)))
    elif not bridges:
        findings.append(Finding("bridges", True, "no network of type bridge"))
    return findings


def _libvirt(
    facts: dict[str, list[str]], target: HostTarget, user: str, groups: set[str], root: bool
) -> Finding:
    uri = target.libvirt_uri
    if _one(facts, "virsh") != "yes":
        return Finding(
            "libvirt", False, "virsh is not installed", "apt-get install libvirt-clients"
        )
    if _one(facts, "libvirt") == "ok":
        return Finding("libvirt", True, f"{uri} answers {user}")
    said = _one(facts, "libvirt_error")
    socket = _one(facts, "socket").split()
    socket_group = socket[1] if len(socket) > 2 else LIBVIRT_GROUP
    if not root and socket_group not in groups:
        where = f" {socket[2]}" if len(socket) > 2 else ""
        return Finding(
            "libvirt",
            False,
            f"{user} is not in group {socket_group}, which the libvirt socket{where} "
            f"lets in ({uri}: {said})",
            f"usermod -aG {socket_group} {user} (as root; herd's next login picks it up)",
        )
    if not socket:
        return Finding(
            "libvirt",
            False,
            f"{uri}: {said} (no libvirt socket in /run/libvirt)",
            "apt-get install libvirt-daemon-system, and start libvirtd (or virtqemud)",
        )
    return Finding(
        "libvirt",
        False,
        f"{uri}: {said}",
        "check that libvirtd runs and that its socket's group and polkit let this user in",
    )


def _agent_dir(facts: dict[str, list[str]], agent_dir: str, user: str, root: bool) -> Finding:
    owner = "" if root else f"-o {user} -g {user} "
    create = f"install -d {owner}-m 0755 {agent_dir} (as root)"
    if _one(facts, "dir") == "missing":
        if _one(facts, "parent_writable") == "yes":
            return Finding("agent dir", True, f"{agent_dir} will be created by the agent")
        return Finding(
            "agent dir",
            False,
            f"agent dir {agent_dir} does not exist and {user} cannot create it "
            f"in {_one(facts, 'parent')}",
            create,
        )
    unwritable = facts.get("unwritable", [])
    if _one(facts, "dir_writable") != "yes" or unwritable:
        what = agent_dir if _one(facts, "dir_writable") != "yes" else ", ".join(unwritable)
        return Finding(
            "agent dir",
            False,
            f"agent dir {what} is not writable by {user}",
            f"chown -R {user}: {agent_dir} (as root)" if not root else f"chmod u+rwx {what}",
        )
    return Finding("agent dir", True, f"{agent_dir} writable by {user}")


def _traversal(facts: dict[str, list[str]], agent_dir: str) -> Finding:
    qemu_user = _one(facts, "qemu_user") or DEFAULT_QEMU_USER
    qemu_groups = set(_one(facts, "qemu_user_groups").split())
    qemu_groups.add(_one(facts, "qemu_group") or DEFAULT_QEMU_GROUP)
    blocked = []
    for entry in facts.get("path", []):
        parts = entry.split(None, 3)
        if len(parts) < 4 or not parts[0].isdigit():
            continue
        mode, owner, group, path = int(parts[0], 8), parts[1], parts[2], parts[3]
        if not _traversable(mode, owner, group, qemu_user, qemu_groups):
            blocked.append(path)
    if blocked:
        deepest = blocked[0]
        return Finding(
            "QEMU traversal",
            False,
            f"QEMU's user {qemu_user} cannot traverse {', '.join(reversed(blocked))}, "
            f"so it cannot reach the disks in {agent_dir}",
            f"chmod o+x {' '.join(reversed(blocked))} (as root; or give {deepest} to group "
            f"{DEFAULT_QEMU_GROUP} with g+x)",
        )
    return Finding("QEMU traversal", True, f"{qemu_user} reaches {agent_dir}")


async def check_host(
    target: HostTarget, bridges: list[str], min_free_gb: int = DEFAULT_MIN_FREE_GB
) -> HostCheck:
    """Log in, run the script, judge what it printed. An SSH failure is the host's
    one problem, raised as HostUnreachable (or a subclass) with its usual message."""
    conn = await connect(target)
    try:
        result = await asyncio.wait_for(
            conn.run(command(target, bridges), check=False, stdin=asyncssh.DEVNULL),
            SCRIPT_TIMEOUT,
        )
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        raise HostUnreachable(f"host {target.name}: the check did not finish: {exc}") from exc
    finally:
        conn.close()
    output = result.stdout if isinstance(result.stdout, str) else ""
    facts = parse(output)
    if "user" not in facts:
        said = (result.stderr or "").strip().splitlines() if isinstance(result.stderr, str) else []
        raise HostUnreachable(
            f"host {target.name}: the check printed nothing "
            f"(exit {result.exit_status}): {said[-1] if said else 'no message'}"
        )
    return HostCheck(target.name, tuple(evaluate(facts, target, bridges, min_free_gb)))


@dataclass(frozen=True)
class CheckOutcome:
    """One host's check, or why it could not run (SSH refused, host down)."""

    host: str
    check: HostCheck | None = None
    error: HostUnreachable | None = None


async def check_hosts(
    db: Database, names: list[str], min_free_gb: int = DEFAULT_MIN_FREE_GB
) -> list[CheckOutcome]:
    """Check the named hosts at once; one host's SSH failure is its own outcome."""
    from orchestrator.api.hosts import find_hosts
    from orchestrator.conductor.hosts import target_of

    hosts = await find_hosts(db, names)
    async with db.read() as session:
        networks = (await session.exec(select(Network).where(Network.kind == "bridge"))).all()
    bridges = sorted({n.source for n in networks if n.source})

    async def one(host: Host) -> CheckOutcome:
        try:
            return CheckOutcome(host.name, await check_host(target_of(host), bridges, min_free_gb))
        except HostUnreachable as exc:
            return CheckOutcome(host.name, error=exc)

    return list(await asyncio.gather(*(one(h) for h in hosts)))
