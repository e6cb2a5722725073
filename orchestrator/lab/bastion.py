"""A bastion: one OpenSSH sshd that is the only way to the lab hosts' sshds.

Real fleets put their hypervisors' management network behind a jump host that
operators reach with ``ProxyJump``. This sshd stands for it: it lets one unprivileged
user in with one key, runs no shell for anyone, and forwards TCP only to the lab
hosts' SSH ports (``PermitOpen``). Its log, at DEBUG1 (the level at which sshd names
each direct-tcpip forward), tells that a connection really went through it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import LabError

SSHD = "/usr/sbin/sshd"
READY_WITHIN = 15.0


def sshd_config(
    address: str,
    port: int,
    directory: Path,
    user: str,
    permit_open: list[tuple[str, int]],
) -> str:
    """A forward-only sshd: ``user`` logs in with the key in ``authorized_keys`` and
    may open TCP connections to ``permit_open`` and nowhere else."""
    destinations = " ".join(f"{host}:{dest_port}" for host, dest_port in permit_open)
    return "\n".join(
        [
            "# Written for a herd lab bastion: forwarding to the lab hosts' sshds only.",
            f"ListenAddress {address}",
            f"Port {port}",
            f"HostKey {directory / 'ssh_host_ed25519_key'}",
            # sshd reads AuthorizedKeysFile as the user logging in, who may not be able
            # to reach a root-only directory (pytest's tmp is 0700); root reads it here.
            "AuthorizedKeysFile none",
            f"AuthorizedKeysCommand /bin/cat {directory / 'authorized_keys'}",
            "AuthorizedKeysCommandUser root",
            f"PidFile {directory / 'sshd.pid'}",
            f"AllowUsers {user}",
            "PermitRootLogin no",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "AllowTcpForwarding local",
            f"PermitOpen {destinations or 'none'}",
            "AllowAgentForwarding no",
            "AllowStreamLocalForwarding no",
            "X11Forwarding no",
            "PermitTTY no",
            # A jump host runs nothing: ProxyJump needs only the forward.
            "ForceCommand /bin/false",
            "PrintMotd no",
            # DEBUG1 is where sshd logs "server_request_direct_tcpip: ... to HOST port N".
            "LogLevel DEBUG1",
            "",
        ]
    )


def _keygen(path: Path, comment: str) -> None:
    if not path.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
            check=True,
            capture_output=True,
        )


@dataclass
class Bastion:
    """The bastion sshd of one directory: ``up()`` writes its keys and config and
    starts it in the foreground of a child process; ``down()`` ends it and the
    per-connection children it forked, by pid."""

    directory: Path
    address: str
    port: int
    user: str
    permit_open: list[tuple[str, int]]
    process: subprocess.Popen[bytes] | None = None

    @property
    def client_key(self) -> Path:
        """The private key that logs in as ``user``."""
        return self.directory / "client_ed25519"

    @property
    def host_key(self) -> Path:
        return self.directory / "ssh_host_ed25519_key"

    @property
    def log(self) -> Path:
        return self.directory / "sshd.log"

    def host_public_key(self) -> str:
        return (self.directory / "ssh_host_ed25519_key.pub").read_text().strip()

    def up(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        _keygen(self.host_key, "bastion host key")
        _keygen(self.client_key, "bastion client key")
        authorized = self.directory / "authorized_keys"
        authorized.write_text(Path(f"{self.client_key}.pub").read_text())
        authorized.chmod(0o644)
        config = self.directory / "sshd_config"
        config.write_text(
            sshd_config(self.address, self.port, self.directory, self.user, self.permit_open)
        )
        # sshd's privilege-separation chroot; Debian's ssh.service makes it at boot.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        checked = subprocess.run([SSHD, "-t", "-f", str(config)], capture_output=True, text=True)
        if checked.returncode != 0:
            raise LabError(f"bastion sshd config: {checked.stderr.strip()}")
        self.process = subprocess.Popen(
            [SSHD, "-D", "-f", str(config), "-E", str(self.log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + READY_WITHIN
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.down()
                tail = self.log.read_text()[-300:] if self.log.exists() else ""
                raise LabError(f"bastion sshd on {self.address}:{self.port} did not start: {tail}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            with socket.create_connection((self.address, self.port), timeout=2) as conn:
                return conn.recv(64).startswith(b"SSH-")
        except OSError:
            return False

    def down(self) -> None:
        if self.process is None:
            return
        children = _children(self.process.pid)
        for pid in (self.process.pid, *children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.process = None


def _children(pid: int) -> list[int]:
    """sshd's per-connection processes: forked by the listener, in sessions of their own."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found
