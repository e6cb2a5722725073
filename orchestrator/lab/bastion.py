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

from orchestrator.endpoints import host_port
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
    starts it (in network namespace ``netns`` if one is named), or, if it runs, has it
    read a changed config; ``down()`` ends it and the per-connection children it
    forked, by pid. The user logs in with ``client_key``, or with the key whose public
    half is ``authorized`` when one is given (a lab's own key)."""

    directory: Path
    address: str
    port: int
    user: str
    permit_open: list[tuple[str, int]]
    netns: str | None = None
    authorized: str | None = None
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

    @property
    def pidfile(self) -> Path:
        return self.directory / "sshd.pid"

    def host_public_key(self) -> str:
        return (self.directory / "ssh_host_ed25519_key.pub").read_text().strip()

    def up(self) -> bool:
        """True if it started sshd, False if one already ran (and now has this config)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        _keygen(self.host_key, "bastion host key")
        authorized = self.directory / "authorized_keys"
        if self.authorized is None:
            _keygen(self.client_key, "bastion client key")
            authorized.write_text(Path(f"{self.client_key}.pub").read_text())
        else:
            authorized.write_text(self.authorized.strip() + "\n")
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
        running = self.running()
        if running is not None:
            os.kill(running, signal.SIGHUP)  # sshd re-executes itself with the new config
            self._wait_until_it_answers(None)
            return False
        inside = ["nsenter", f"--net=/run/netns/{self.netns}", "--"] if self.netns else []
        self.process = subprocess.Popen(
            [*inside, SSHD, "-D", "-f", str(config), "-E", str(self.log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # outlives `herd lab up`, deaf to its terminal
        )
        self._wait_until_it_answers(self.process)
        return True

    def running(self) -> int | None:
        """The listener's pid, if its pid file names a live sshd."""
        try:
            pid = int(self.pidfile.read_text().split()[0])
            # sshd retitles itself ("sshd: /usr/sbin/sshd -D -f ... [listener]"): one
            # string, so look for the config's path in it rather than in argv's parts.
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            return None
        return pid if str(self.directory / "sshd_config").encode() in command else None

    def _wait_until_it_answers(self, process: subprocess.Popen[bytes] | None) -> None:
        deadline = time.monotonic() + READY_WITHIN
        time.sleep(0.05)
        while not self._answers():
            died = process is not None and process.poll() is not None
            if died or time.monotonic() > deadline:
                self.down()
                tail = self.log.read_text()[-300:] if self.log.exists() else ""
                where = host_port(self.address, self.port)
                raise LabError(f"bastion sshd on {where} did not start: {tail}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            with socket.create_connection((self.address, self.port), timeout=2) as conn:
                return conn.recv(64).startswith(b"SSH-")
        except OSError:
            return False

    def down(self) -> None:
        pid = self.process.pid if self.process is not None else self.running()
        if pid is None:
            return
        for each in (pid, *_children(pid)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(each, signal.SIGTERM)
        if self.process is not None:
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
