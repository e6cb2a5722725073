"""SSH to a host: verified connections and the explicit trust of a new host key.

There is no silent accept: a key that is not in known_hosts is refused with a message
that says how to trust it (``herd host trust NAME``), which records the key after the
operator has seen its fingerprint; a key that differs from the one known is refused as
CHANGED, with both fingerprints. The client key comes from ``client_keys``: whatever is
wrong with it fails that host alone.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from orchestrator.errors import HerdError, HostCredentialsError, HostKeyNotTrusted, HostUnreachable
from orchestrator.rpc.client_keys import ClientKey, load_client_key
from orchestrator.rpc.known_hosts import HostKeys, host_keys

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


def _client_key(target: HostTarget) -> tuple[ClientKey | None, dict[str, object]]:
    """The host's client key and the options that log in with it; a bad key file fails
    this host only."""
    if not target.key:
        return None, {}
    try:
        key = load_client_key(Path(target.key))
        return key, key.connect_options()
    except HostCredentialsError as exc:
        raise HostCredentialsError(f"host {target.name}: {exc}") from None


class _KeyRecorder(asyncssh.SSHClient):
    """Remembers the host key asyncssh could not verify (it is asked only then), so the
    refusal can show its fingerprint; it never trusts anything itself."""

    def __init__(self) -> None:
        self.offered: asyncssh.SSHKey | None = None

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        self.offered = key
        return False


async def connect(
    target: HostTarget, timeout: float = CONNECT_TIMEOUT
) -> asyncssh.SSHClientConnection:
    """Open a verified SSH connection, turning every failure into one line."""
    try:
        known = host_keys(target)
    except HostKeyNotTrusted as exc:
        raise HostKeyNotTrusted(f"host {target.name}: {exc}") from None
    client_key, options = _client_key(target)
    recorder = _KeyRecorder()
    try:
        return await asyncssh.connect(
            target.address,
            target.port,
            username=target.user,
            known_hosts=known.known_hosts,
            client_factory=lambda: recorder,
            config=None,
            connect_timeout=timeout,
            login_timeout=timeout,
            keepalive_interval=15,
            keepalive_count_max=3,
            **options,  # type: ignore[arg-type]
        )
    except asyncssh.HostKeyNotVerifiable as exc:
        raise HostKeyNotTrusted(_not_trusted(target, known, recorder.offered, exc)) from exc
    except asyncssh.KeyExchangeFailed as exc:
        if not known.trusted or "host key" not in exc.reason:
            raise HostUnreachable(
                f"host {target.name}: cannot reach {target.endpoint}: {exc.reason}"
            ) from exc
        # asyncssh asks only for the key types known_hosts holds for the host.
        raise HostKeyNotTrusted(host_key_changed(target, known, None)) from exc
    except asyncssh.PermissionDenied as exc:
        hint = client_key.refused() if client_key is not None else ""
        raise HostCredentialsError(
            f"host {target.name}: SSH login as {target.endpoint} was refused ({exc.reason}){hint}"
        ) from exc
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        raise HostUnreachable(
            f"host {target.name}: cannot reach {target.endpoint}: {_why(exc)}"
        ) from exc
    except ValueError as exc:  # asyncssh's word for an option it cannot use
        raise HostUnreachable(
            f"host {target.name}: cannot connect to {target.endpoint}: {exc}"
        ) from exc


def _not_trusted(
    target: HostTarget,
    known: HostKeys,
    offered: asyncssh.SSHKey | None,
    exc: asyncssh.HostKeyNotVerifiable,
) -> str:
    where = f"{target.address}:{target.port}"
    if offered is not None and known.trusted:
        return host_key_changed(target, known, offered)
    if known.revoked and "revoked" in exc.reason:
        return (
            f"host {target.name}: SSH host key of {where} is revoked ("
            + ", ".join(f"@revoked {k.describe()}" for k in known.revoked)
            + "); not connecting"
        )
    files = ", ".join(str(p) for p in target.known_hosts_files())
    return (
        f"host {target.name}: SSH host key of {where} is not trusted "
        f"({exc.reason}; looked in {files}); check it and run `herd host trust {target.name}`"
    )


def host_key_changed(
    target: HostTarget, known: HostKeys, offered: asyncssh.SSHKey | None, advice: bool = True
) -> str:
    """OpenSSH's "REMOTE HOST IDENTIFICATION HAS CHANGED", in one line. ``offered`` is
    None when the host offers no key of the known types at all."""
    now = (
        f"offered {offered.get_algorithm()} {fingerprint(offered)}"
        if offered is not None
        else "the host offers no key of those types"
    )
    message = (
        f"host {target.name}: host key CHANGED for {target.address}:{target.port}: known "
        + ", ".join(k.describe() for k in known.trusted)
        + f"; {now}"
    )
    if not advice:
        return message
    return (
        f"{message}; someone may be impersonating the host, or it was reinstalled: check "
        f"the new key, then run `herd host trust {target.name} --replace`"
    )


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, asyncssh.Error):
        return exc.reason
    return exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc)


async def fetch_host_key(
    target: HostTarget, timeout: float = CONNECT_TIMEOUT, algorithms: Sequence[str] = ()
) -> asyncssh.SSHKey:
    """The key the host offers; with ``algorithms``, of one of those types (the ones
    known_hosts already holds for it, as ``connect()`` would ask)."""
    try:
        key = await asyncio.wait_for(
            asyncssh.get_server_host_key(
                target.address,
                target.port,
                config=None,
                server_host_key_algs=list(algorithms) if algorithms else (),
            ),
            timeout,
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
