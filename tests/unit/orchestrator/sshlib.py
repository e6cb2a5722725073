"""An SSH server in the test's own event loop (asyncssh), standing for a host's sshd,
and a real ssh-agent: enough to test how herd logs in and what it trusts, without root."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import pytest

from orchestrator.rpc.ssh import HostTarget


def write_key(path: Path, key: asyncssh.SSHKey, passphrase: str | None = None) -> Path:
    """A private key file as ssh-keygen leaves it: 0600, with its .pub beside it. The
    passphrase is set by ssh-keygen itself (asyncssh would need bcrypt for that)."""
    path.write_bytes(key.export_private_key("openssh"))
    path.chmod(0o600)
    path.with_name(path.name + ".pub").write_bytes(key.export_public_key("openssh"))
    if passphrase is not None:
        if shutil.which("ssh-keygen") is None:
            pytest.skip("ssh-keygen is not installed")
        subprocess.run(
            ["ssh-keygen", "-q", "-p", "-P", "", "-N", passphrase, "-f", str(path)],
            check=True,
            capture_output=True,
        )
    return path


class _Sshd(asyncssh.SSHServer):
    """Counts logins; as a jump host's sshd, lets direct-tcpip forwards through and
    notes each destination."""

    def __init__(self, host: FakeHost) -> None:
        self.host = host

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.host.logins += 1
        self.host.connected += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.host.connected -= 1

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> bool:
        if not self.host.jump:
            return False
        self.host.forwards.append((dest_host, dest_port))
        return True


@dataclass
class FakeHost:
    """sshd on 127.0.0.1 that lets in only ``authorized`` keys; no commands. A jump
    host (``jump=True``) forwards TCP connections, as ProxyJump needs, and records
    each destination in ``forwards``."""

    host_key: asyncssh.SSHKey
    authorized: list[asyncssh.SSHKey]
    server: asyncssh.SSHAcceptor | None = None
    jump: bool = False
    forwards: list[tuple[str, int]] = field(default_factory=list)
    logins: int = 0
    """TCP connections accepted so far; ``connected``: those still open."""
    connected: int = 0

    async def start(self) -> None:
        authorized = asyncssh.import_authorized_keys(
            "".join(k.export_public_key("openssh").decode() for k in self.authorized)
        )
        self.server = await asyncssh.create_server(
            lambda: _Sshd(self),
            "127.0.0.1",
            0,
            server_host_keys=[self.host_key],
            authorized_client_keys=authorized,
        )

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    def known_hosts_line(self, key: asyncssh.SSHKey | None = None) -> str:
        algorithm, blob = (key or self.host_key).export_public_key("openssh").decode().split()[:2]
        return f"[127.0.0.1]:{self.port} {algorithm} {blob}\n"

    def target(self, tmp_path: Path, key: Path | None, **kw: object) -> HostTarget:
        known = tmp_path / "known_hosts"
        if not known.exists():
            known.write_text(self.known_hosts_line())
        fields: dict[str, object] = {
            "name": "hv1",
            "address": "127.0.0.1",
            "port": self.port,
            "key": str(key) if key else None,
            "known_hosts": str(known),
        }
        fields.update(kw)
        return HostTarget(**fields)  # type: ignore[arg-type]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def agent_add(socket: Path, key: asyncssh.SSHKey) -> None:
    async with asyncssh.connect_agent(str(socket)) as agent:
        await agent.add_keys([key])
