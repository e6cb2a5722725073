"""SSH to a host: verified connections and the explicit trust of a new host key.

There is no silent accept: a key that is not in known_hosts is refused with a message
that says how to trust it (``herd host trust NAME``), which records the key after the
operator has seen its fingerprint.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from orchestrator.errors import HerdError, HostKeyNotTrusted, HostUnreachable

CONNECT_TIMEOUT = 10.0


def herd_known_hosts() -> Path:
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config_home / "herd" / "known_hosts"


@dataclass(frozen=True)
class HostTarget:
    """Everything needed to reach one host's agent, copied out of its DB row."""

    name: str
    address: str
    port: int = 22
    user: str = "root"
    key: str | None = None
    known_hosts: str | None = None
    agent_dir: str = "/var/lib/herd"
    libvirt_uri: str = "qemu:///system"
    domain_type: str = "auto"
    image_source_dirs: tuple[str, ...] = ()
    max_image_gb: int = 64

    @property
    def endpoint(self) -> str:
        return f"{self.user}@{self.address}:{self.port}"

    def known_hosts_files(self) -> list[Path]:
        """The host's own file if the inventory names one, else herd's then the user's."""
        if self.known_hosts:
            return [Path(self.known_hosts).expanduser()]
        return [herd_known_hosts(), Path.home() / ".ssh" / "known_hosts"]

    def trust_file(self) -> Path:
        return self.known_hosts_files()[0]

    def known_hosts_entry(self) -> str:
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"


def _known_hosts(target: HostTarget) -> asyncssh.SSHKnownHosts:
    files = [str(p) for p in target.known_hosts_files() if p.is_file()]
    if not files:
        return asyncssh.import_known_hosts("")
    return asyncssh.read_known_hosts(files)


async def connect(
    target: HostTarget, timeout: float = CONNECT_TIMEOUT
) -> asyncssh.SSHClientConnection:
    """Open a verified SSH connection, turning every failure into one line."""
    options: dict[str, object] = {}
    if target.key:
        options["client_keys"] = [str(Path(target.key).expanduser())]
    try:
        return await asyncssh.connect(
            target.address,
            target.port,
            username=target.user,
            known_hosts=_known_hosts(target),
            config=None,
            connect_timeout=timeout,
            login_timeout=timeout,
            keepalive_interval=15,
            keepalive_count_max=3,
            **options,  # type: ignore[arg-type]
        )
    except asyncssh.HostKeyNotVerifiable as exc:
        files = ", ".join(str(p) for p in target.known_hosts_files())
        raise HostKeyNotTrusted(
            f"host {target.name}: SSH host key of {target.address}:{target.port} is not trusted "
            f"({exc.reason}; looked in {files}); check it and run `herd host trust {target.name}`"
        ) from exc
    except asyncssh.PermissionDenied as exc:
        raise HostUnreachable(
            f"host {target.name}: SSH login as {target.endpoint} was refused ({exc.reason})"
        ) from exc
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        raise HostUnreachable(
            f"host {target.name}: cannot reach {target.endpoint}: {_why(exc)}"
        ) from exc


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, asyncssh.Error):
        return exc.reason
    return exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc)


async def fetch_host_key(target: HostTarget, timeout: float = CONNECT_TIMEOUT) -> asyncssh.SSHKey:
    try:
        key = await asyncio.wait_for(
            asyncssh.get_server_host_key(target.address, target.port, config=None), timeout
        )
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        raise HostUnreachable(
            f"host {target.name}: cannot reach {target.endpoint}: {_why(exc)}"
        ) from exc
    if key is None:
        raise HerdError(f"host {target.name}: the server offered no host key")
    return key


def fingerprint(key: asyncssh.SSHKey) -> str:
    return key.get_fingerprint("sha256")


def record_host_key(target: HostTarget, key: asyncssh.SSHKey) -> Path:
    """Append the key to the host's known_hosts file, replacing older lines for it."""
    path = target.trust_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = target.known_hosts_entry()
    algorithm, blob = key.export_public_key("openssh").decode().split()[:2]
    kept = []
    if path.exists():
        kept = [
            line
            for line in path.read_text().splitlines()
            if not (line.split(" ", 1)[0] == entry and line.split()[1:2] == [algorithm])
        ]
    kept.append(f"{entry} {algorithm} {blob}")
    path.write_text("\n".join(kept) + "\n")
    return path
