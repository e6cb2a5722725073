"""The route to a host as the operator's OpenSSH client config describes it.

Operators already say how to reach their hosts in ``~/.ssh/config`` (or a file the
inventory names in ``ssh.config``, which replaces it as ``ssh -F`` does): HostName,
User, Port, IdentityFile, ProxyJump, ServerAliveInterval. herd reads that file with
asyncssh's own parser, asking about the inventory's ``address`` as ``ssh ADDRESS``
would, and decides every field once, here:

- a field the inventory sets (``ssh.user``, ``ssh.port``, ``ssh.key``,
  ``ssh.proxy_jump``) wins, as a command-line option wins over the file in OpenSSH;
- then the config file;
- then herd's own defaults for the host (user root, port 22, ssh-agent and the usual
  ``~/.ssh/id_*`` keys), and OpenSSH's for a jump host (the local user).

``IdentitiesOnly yes`` is honoured too: an agent holding many keys would otherwise use
up the server's ``MaxAuthTries`` before the right key is offered.

asyncssh could follow ProxyJump itself, but it would check the jump hosts' keys
against ``~/.ssh/known_hosts`` alone and explain a failure without naming the jump
host. So herd opens each hop itself (``ssh.connect``): every jump host is verified
against the same known_hosts files as the host it leads to, and every failure says
which hop it was.
"""

from __future__ import annotations

import getpass
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from asyncssh.config import SSHClientConfig

from orchestrator.errors import SshConfigError

if TYPE_CHECKING:
    from orchestrator.rpc.ssh import HostTarget

DEFAULT_PORT = 22
DEFAULT_USER = "root"
KEEPALIVE_INTERVAL = 15.0
KEEPALIVE_COUNT_MAX = 3
MAX_JUMPS = 8
"""OpenSSH has no limit; a chain longer than this is a loop in the config."""

# [user@]host[:port], host an IPv6 address in brackets; or ssh://[user@]host[:port].
_JUMP = re.compile(
    r"(?:ssh://)?(?:(?P<user>[^@\s/]+)@)?"
    r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^@:\s/\[\]]+))"
    r"(?::(?P<port>\d{1,5}))?/?"
)


@dataclass(frozen=True)
class Jump:
    """One ProxyJump entry, as written: only what it names is fixed."""

    host: str
    user: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{self.user}@" if self.user else ""
        return f"{user}{host}" + (f":{self.port}" if self.port else "")


def parse_proxy_jump(value: str) -> tuple[Jump, ...]:
    """``bastion``, ``ops@bastion:2222,inner`` or ``none`` (no jump host), as OpenSSH's
    ``-J`` and ``ProxyJump`` read them; raises ValueError with an operator's message."""
    if value.strip().lower() == "none":
        return ()
    jumps = []
    for entry in value.split(","):
        match = _JUMP.fullmatch(entry.strip())
        port = int(match["port"]) if match and match["port"] else None
        if match is None or (port is not None and not 1 <= port <= 65535):
            raise ValueError(
                f"{entry.strip()!r} is not [user@]host[:port] "
                "(several: comma-separated, the first is reached first; or none)"
            )
        jumps.append(Jump(match["v6"] or match["host"], match["user"], port))
    return tuple(jumps)


def config_paths(target: HostTarget) -> list[Path]:
    """The inventory's ``ssh.config`` (which must exist), else ``~/.ssh/config`` when
    there is one."""
    if target.ssh_config:
        path = Path(target.ssh_config).expanduser()
        if not path.is_file():
            raise SshConfigError(f"host {target.name}: ssh config {path}: no such file")
        return [path]
    default = Path.home() / ".ssh" / "config"
    return [default] if default.exists() else []


@dataclass(frozen=True)
class _Lookup:
    """What the config files say about one name, before herd's defaults."""

    hostname: str
    user: str | None
    port: int | None
    identity_files: tuple[str, ...]
    proxy_jump: str | None
    """None: the files do not say; "none": they say no jump host."""
    keepalive_interval: float
    keepalive_count_max: int
    identities_only: bool


def _lookup(
    target: HostTarget, paths: list[Path], name: str, user: str | None, port: int | None
) -> _Lookup:
    """Ask the files about ``name``; ``user`` and ``port`` are fixed already (first
    value wins in OpenSSH, and asyncssh seeds them so), and ``Match user`` sees them."""
    try:
        config = SSHClientConfig.load(
            None,
            paths,
            False,
            False,
            False,
            getpass.getuser(),
            user if user is not None else (),
            name,
            port if port is not None else (),
        )
    except (ValueError, OSError) as exc:  # asyncssh's ConfigParseError is a ValueError
        raise SshConfigError(f"host {target.name}: ssh config {_reason(exc)}") from None
    if config.get("ProxyCommand"):
        raise SshConfigError(
            f"host {target.name}: ssh config for {name} sets ProxyCommand, which herd does "
            "not run; reach the host with ProxyJump (or the inventory's ssh.proxy_jump)"
        )
    jump = config.get("ProxyJump", ())
    interval = config.get("ServerAliveInterval")
    count = config.get("ServerAliveCountMax")
    return _Lookup(
        hostname=str(config.get("Hostname") or name),
        user=_str_or_none(config.get("User")),
        port=int(str(config.get("Port"))) if config.get("Port") else None,
        identity_files=tuple(str(p) for p in config.get("IdentityFile", None) or ()),
        proxy_jump=None if jump == () else (jump or "none"),
        keepalive_interval=float(str(interval)) if interval is not None else KEEPALIVE_INTERVAL,
        keepalive_count_max=int(str(count)) if count is not None else KEEPALIVE_COUNT_MAX,
        identities_only=bool(config.get("IdentitiesOnly")),
    )


def _str_or_none(value: object) -> str | None:
    return str(value) if value else None


def _reason(exc: BaseException) -> str:
    """asyncssh words a bad line as ``PATH line N: reason``: keep it, minus the noise."""
    if isinstance(exc, OSError):
        name = exc.filename or ""
        return f"{name}: cannot read it: {exc.strerror or exc}".strip()
    return str(exc)


def route(target: HostTarget) -> tuple[HostTarget, ...]:
    """The logins that reach ``target``: its jump hosts in the order they are reached,
    then the host itself, each with address, port, user and keys decided."""
    paths = config_paths(target)
    found = _lookup(target, paths, target.address, target.user, target.port)
    host = replace(
        target,
        address=found.hostname,
        port=target.port or found.port or DEFAULT_PORT,
        user=target.user or found.user or DEFAULT_USER,
        identity_files=() if target.key else found.identity_files,
        keepalive_interval=found.keepalive_interval,
        keepalive_count_max=found.keepalive_count_max,
        identities_only=found.identities_only,
    )
    written = target.proxy_jump if target.proxy_jump is not None else found.proxy_jump
    return (*_jump_hops(target, paths, written, ()), host)


def _jump_hops(
    target: HostTarget, paths: list[Path], written: str | None, seen: tuple[str, ...]
) -> list[HostTarget]:
    """The hops of one ProxyJump value. As in OpenSSH, the first jump host's own
    ProxyJump (from the config) is followed; later ones are reached through the one
    before them."""
    if written is None:
        return []
    try:
        jumps = parse_proxy_jump(written)
    except ValueError as exc:
        raise SshConfigError(f"host {target.name}: ProxyJump {exc}") from None
    hops: list[HostTarget] = []
    for index, jump in enumerate(jumps):
        if str(jump) in seen or len(seen) >= MAX_JUMPS:
            chain = " -> ".join((*seen, str(jump)))
            raise SshConfigError(
                f"host {target.name}: ProxyJump goes round in a loop or too deep ({chain})"
            )
        seen = (*seen, str(jump))
        found = _lookup(target, paths, jump.host, jump.user, jump.port)
        if index == 0 and found.proxy_jump is not None:
            hops += _jump_hops(target, paths, found.proxy_jump, seen)
        hops.append(
            replace(
                target,
                address=found.hostname,
                port=jump.port or found.port or DEFAULT_PORT,
                user=jump.user or found.user or getpass.getuser(),
                # The host's own key is offered to a jump host the config gives no
                # IdentityFile for: one operator key often opens both.
                key=None if found.identity_files else target.key,
                identity_files=found.identity_files,
                proxy_jump=None,
                jump=str(jump),
                keepalive_interval=found.keepalive_interval,
                keepalive_count_max=found.keepalive_count_max,
                identities_only=found.identities_only,
            )
        )
    return hops
