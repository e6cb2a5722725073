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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from orchestrator.endpoints import host_port
from orchestrator.errors import HerdError, HostCredentialsError, HostKeyNotTrusted, HostUnreachable
from orchestrator.rpc import jumps
from orchestrator.rpc.client_keys import ClientKey, load_client_key
from orchestrator.rpc.known_hosts import HostKeys, host_keys
from orchestrator.rpc.ssh_config import route

CONNECT_TIMEOUT = 10.0


def herd_known_hosts() -> Path:
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config_home / "herd" / "known_hosts"


@dataclass(frozen=True)
class HostTarget:
    """Everything needed to reach one host's agent, copied out of its DB row.

    ``port`` and ``user`` are None when the inventory leaves them to the OpenSSH client
    config; ``ssh_config.route()`` returns copies with every field decided, one per
    login on the way (jump hosts first, ``jump`` naming each as ProxyJump wrote it)."""

    name: str
    address: str
    port: int | None = None
    user: str | None = None
    key: str | None = None
    known_hosts: str | None = None
    agent_dir: str = "/var/lib/herd"
    libvirt_uri: str = "qemu:///system"
    domain_type: str = "auto"
    image_source_dirs: tuple[str, ...] = ()
    max_image_gb: int = 64
    ssh_config: str | None = None
    proxy_jump: str | None = None
    jump: str | None = None
    identity_files: tuple[str, ...] = ()
    """IdentityFile lines of the config, used when the inventory names no key."""
    keepalive_interval: float = 15.0
    keepalive_count_max: int = 3
    identities_only: bool = False
    """The config's IdentitiesOnly: offer the key files, not every key the agent holds."""

    @property
    def endpoint(self) -> str:
        user = f"{self.user}@" if self.user else ""
        return f"{user}{host_port(self.address, self.port or 22)}"

    @property
    def hop(self) -> str:
        """How messages name this login: the host's address, or the jump host's."""
        where = host_port(self.address, self.port or 22)
        if not self.jump:
            return where
        if self.jump.rpartition("@")[2] == where:
            return f"jump host {where}"
        return f"jump host {self.jump} ({where})"

    def known_hosts_files(self) -> list[Path]:
        """The host's own file if the inventory names one, else herd's then the user's."""
        if self.known_hosts:
            return [Path(self.known_hosts).expanduser()]
        return [herd_known_hosts(), Path.home() / ".ssh" / "known_hosts"]

    def trust_file(self) -> Path:
        return self.known_hosts_files()[0]

    def known_hosts_entry(self) -> str:
        port = self.port or 22
        return self.address if port == 22 else f"[{self.address}]:{port}"


def _client_key(target: HostTarget) -> tuple[ClientKey | None, dict[str, object]]:
    """The client key of one login and the options that log in with it; a bad key file
    fails this host only. The inventory's key, else the config's IdentityFile lines
    (a missing one skipped, as OpenSSH does), else asyncssh's defaults: ssh-agent's
    keys and the usual ``~/.ssh/id_*`` files."""
    key, options = _client_key_options(target)
    if target.identities_only and key is not None and not key.encrypted:
        options["agent_path"] = None  # the files' keys only
    return key, options


def _client_key_options(target: HostTarget) -> tuple[ClientKey | None, dict[str, object]]:
    try:
        if target.key:
            key = load_client_key(Path(target.key))
            return key, key.connect_options()
        keys = [
            load_client_key(path)
            for path in (Path(name).expanduser() for name in target.identity_files)
            if path.exists()
        ]
        plain = [pair for key in keys for pair in key.keypairs]
        if plain:
            return next(k for k in keys if not k.encrypted), {"client_keys": plain}
        if keys:  # only keys with a passphrase: the agent must hold them
            options = keys[0].connect_options()
            options["agent_identities"] = [k.public for k in keys if k.public] or None
            return keys[0], options
        return None, {}
    except HostCredentialsError as exc:
        raise HostCredentialsError(f"host {target.name}: {exc}") from None


class _KeyRecorder(asyncssh.SSHClient):
    """Remembers the host key asyncssh could not verify (it is asked only then), so the
    refusal can show its fingerprint; it never trusts anything itself. ``on_lost`` is
    told when the connection closes (to give back the jump host connection it rode)."""

    def __init__(self, on_lost: Callable[[], None] | None = None) -> None:
        self.offered: asyncssh.SSHKey | None = None
        self.on_lost = on_lost

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        self.offered = key
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.on_lost is not None:
            self.on_lost()


async def connect(
    target: HostTarget, timeout: float = CONNECT_TIMEOUT
) -> asyncssh.SSHClientConnection:
    """Open a verified SSH connection through the host's jump hosts, if any, turning
    every failure into one line that names the hop it happened at. Hosts behind the
    same jump hosts share one connection to them (``jumps``), given back when the
    returned connection closes."""
    *through, host = route(target)
    if not through:
        return await login(host, None, timeout)
    identity = tuple(
        (h.jump, h.address, h.port, h.user, h.key, h.identity_files, h.known_hosts) for h in through
    )
    try:
        tunnel, release = await jumps.lease(identity, lambda: open_chain(through, timeout))
    except HostUnreachable as exc:
        raise _for_host(exc, target.name) from exc
    try:
        return await login(host, tunnel, timeout, on_lost=release)
    except BaseException:
        release()
        raise


async def open_chain(
    hops: Sequence[HostTarget], timeout: float = CONNECT_TIMEOUT
) -> asyncssh.SSHClientConnection:
    """Log in to each hop through the one before it; closing the last closes them all."""
    tunnel: asyncssh.SSHClientConnection | None = None
    try:
        for hop in hops:
            conn = await login(hop, tunnel, timeout)
            if tunnel is not None:
                # What asyncssh does for a ProxyJump it follows itself.
                conn.set_tunnel(tunnel)
            tunnel = conn
    except BaseException:
        if tunnel is not None:
            tunnel.close()
        raise
    assert tunnel is not None
    return tunnel


def _for_host(exc: HostUnreachable, name: str) -> HostUnreachable:
    """A shared jump host's failure, worded for this host (another one's attempt may
    have met it): every message from ``login()`` starts with ``host NAME: ``."""
    message = str(exc)
    if message.startswith("host ") and ": " in message:
        message = f"host {name}: {message.split(': ', 1)[1]}"
    return type(exc)(message)


async def login(
    hop: HostTarget,
    tunnel: asyncssh.SSHClientConnection | None = None,
    timeout: float = CONNECT_TIMEOUT,
    on_lost: Callable[[], None] | None = None,
) -> asyncssh.SSHClientConnection:
    """One SSH login with every field decided (a ``route()`` hop), over ``tunnel``
    when it is reached through a jump host; its key verified against known_hosts."""
    try:
        known = host_keys(hop)
    except HostKeyNotTrusted as exc:
        raise HostKeyNotTrusted(f"host {hop.name}: {exc}") from None
    client_key, options = _client_key(hop)
    recorder = _KeyRecorder(on_lost)
    reach = f"cannot reach {hop.hop if hop.jump else hop.endpoint}"
    try:
        return await asyncssh.connect(
            hop.address,
            hop.port or 22,
            tunnel=tunnel if tunnel is not None else (),
            username=hop.user,
            known_hosts=known.known_hosts,
            client_factory=lambda: recorder,
            config=None,
            connect_timeout=timeout,
            login_timeout=timeout,
            keepalive_interval=hop.keepalive_interval,
            keepalive_count_max=hop.keepalive_count_max,
            **options,  # type: ignore[arg-type]
        )
    except asyncssh.HostKeyNotVerifiable as exc:
        raise HostKeyNotTrusted(_not_trusted(hop, known, recorder.offered, exc)) from exc
    except asyncssh.KeyExchangeFailed as exc:
        if not known.trusted or "host key" not in exc.reason:
            raise HostUnreachable(f"host {hop.name}: {reach}: {exc.reason}") from exc
        # asyncssh asks only for the key types known_hosts holds for the host.
        raise HostKeyNotTrusted(host_key_changed(hop, known, None)) from exc
    except asyncssh.PermissionDenied as exc:
        hint = client_key.refused() if client_key is not None else _no_key_hint(hop)
        who = f"to {hop.hop} as {hop.user}" if hop.jump else f"as {hop.endpoint}"
        raise HostCredentialsError(
            f"host {hop.name}: SSH login {who} was refused ({exc.reason}){hint}"
        ) from exc
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        raise HostUnreachable(f"host {hop.name}: {reach}: {_why(exc)}") from exc
    except ValueError as exc:  # asyncssh's word for an option it cannot use
        raise HostUnreachable(
            f"host {hop.name}: cannot connect to {hop.hop if hop.jump else hop.endpoint}: {exc}"
        ) from exc


def _no_key_hint(hop: HostTarget) -> str:
    """What was offered when neither the inventory nor the config named a key."""
    if os.environ.get("SSH_AUTH_SOCK"):
        return "; no key is set for it: ssh-agent's keys and ~/.ssh/id_* were offered"
    return (
        "; no key is set for it (inventory ssh.key or IdentityFile in ssh config) and "
        "SSH_AUTH_SOCK is unset: only ~/.ssh/id_* were offered"
    )


def _not_trusted(
    target: HostTarget,
    known: HostKeys,
    offered: asyncssh.SSHKey | None,
    exc: asyncssh.HostKeyNotVerifiable,
) -> str:
    where = target.hop
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
        f"host {target.name}: host key CHANGED for {target.hop}: known "
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
    target: HostTarget,
    timeout: float = CONNECT_TIMEOUT,
    algorithms: Sequence[str] = (),
    tunnel: asyncssh.SSHClientConnection | None = None,
) -> asyncssh.SSHKey:
    """The key one login (a ``route()`` hop) offers, over ``tunnel`` when it sits
    behind a jump host; with ``algorithms``, of one of those types (the ones
    known_hosts already holds for it, as ``connect()`` would ask)."""
    try:
        key = await asyncio.wait_for(
            asyncssh.get_server_host_key(
                target.address,
                target.port or 22,
                tunnel=tunnel if tunnel is not None else (),
                config=None,
                server_host_key_algs=list(algorithms) if algorithms else (),
            ),
            timeout,
        )
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        where = target.hop if target.jump else target.endpoint
        raise HostUnreachable(f"host {target.name}: cannot reach {where}: {_why(exc)}") from exc
    if key is None:
        raise HerdError(f"host {target.name}: the server offered no host key")
    return key


def fingerprint(key: asyncssh.SSHKey) -> str:
    return key.get_fingerprint("sha256")


@dataclass(frozen=True)
class Offer:
    """The key one login on the way to a host offers, beside what known_hosts says."""

    hop: HostTarget
    known: HostKeys
    key: asyncssh.SSHKey


async def walk_route(target: HostTarget, visit: Callable[[Offer], Awaitable[None]]) -> None:
    """Show ``visit`` each hop's key in the order they are reached (the jump hosts',
    then the host's); after each jump host is visited it is logged into, so the next
    key is fetched through it, as ``connect()`` will. ``visit`` trusts a key by
    recording it, or raises to stop."""
    hops = route(target)
    tunnel: asyncssh.SSHClientConnection | None = None
    try:
        for index, hop in enumerate(hops):
            try:
                known = host_keys(hop)
            except HostKeyNotTrusted as exc:
                raise HostKeyNotTrusted(f"host {hop.name}: {exc}") from None
            await visit(Offer(hop, known, await _offered_key(hop, known, tunnel)))
            if index < len(hops) - 1:
                conn = await login(hop, tunnel)
                if tunnel is not None:
                    conn.set_tunnel(tunnel)
                tunnel = conn
    finally:
        if tunnel is not None:
            tunnel.close()


async def _offered_key(
    hop: HostTarget, known: HostKeys, tunnel: asyncssh.SSHClientConnection | None
) -> asyncssh.SSHKey:
    """The hop's key of a type known_hosts holds for it, as `connect()` would check;
    any key when it no longer offers any of those (that, too, is a change)."""
    try:
        return await fetch_host_key(hop, algorithms=known.algorithms(), tunnel=tunnel)
    except HostUnreachable as exc:
        if not known.trusted or not isinstance(exc.__cause__, asyncssh.KeyExchangeFailed):
            raise
    return await fetch_host_key(hop, tunnel=tunnel)
