"""The SSH key herd logs in to a host with (the inventory's ``ssh.key``).

Read once per process and checked here, before asyncssh sees it: asyncssh raises a bare
``ValueError`` for a key it cannot load, which used to escape ``connect()`` and take
every host's work down with it. Every problem with the file is a
``HostCredentialsError`` naming the file and the cause, so it fails the hosts that use
that key and no others. Only good keys are cached; a bad file is looked at again on
the next connection, so fixing it needs no restart.

A key protected by a passphrase is never decrypted by herd (there is no one to ask in
cron); it must be in ssh-agent, which herd uses whenever ``SSH_AUTH_SOCK`` is set.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from orchestrator.errors import HerdError, HostCredentialsError
from orchestrator.files import os_reason, read_limited

log = logging.getLogger(__name__)

# A 16384-bit RSA key with a certificate appended is under 20 KiB.
MAX_KEY_FILE = 64 * 1024

_cache: dict[tuple[str, int, int, int, int], ClientKey] = {}
_warned: set[str] = set()


@dataclass(frozen=True)
class ClientKey:
    path: Path
    keypairs: tuple[asyncssh.SSHKeyPair, ...]
    """The loaded key (and its certificate, if any); empty when the file is encrypted."""
    public: asyncssh.SSHKey | None = None
    """An encrypted key's public half (from ``PATH.pub``), to pick it out of the agent."""

    @property
    def encrypted(self) -> bool:
        return not self.keypairs

    def connect_options(self) -> dict[str, object]:
        """``asyncssh.connect`` options that log in with this key."""
        if not self.encrypted:
            # ssh-agent's keys (SSH_AUTH_SOCK) are still offered first, as before.
            return {"client_keys": list(self.keypairs)}
        agent = os.environ.get("SSH_AUTH_SOCK") or ""
        if not agent or not os.path.exists(agent):
            state = f"ssh-agent is not running at {agent}" if agent else "SSH_AUTH_SOCK is unset"
            raise HostCredentialsError(
                f"ssh key {self.path} is protected by a passphrase ({state}); load it into "
                f"ssh-agent (ssh-add {self.path}) and herd will use the agent"
            )
        # Not `client_keys=None`: asyncssh turns the agent off along with the file keys
        # then. Naming the file with `ignore_encrypted` skips it and keeps the agent.
        return {
            "client_keys": [str(self.path)],
            "ignore_encrypted": True,
            "agent_path": agent,
            "agent_identities": [self.public] if self.public is not None else None,
        }

    def refused(self) -> str:
        """What to add to "the host refused the login" when this key was the cause."""
        if not self.encrypted:
            return ""
        which = "it" if self.public is None else f"{self.public.get_fingerprint('sha256')}"
        return (
            f"; ssh key {self.path} is protected by a passphrase and ssh-agent did not "
            f"offer {which}: ssh-add {self.path}"
        )


def load_client_key(path: Path) -> ClientKey:
    """The key at ``path``, from the cache while the file is unchanged."""
    path = path.expanduser()
    what = f"ssh key {path}"
    try:
        info = path.stat()
    except OSError as exc:
        raise HostCredentialsError(f"{what}: {os_reason(exc)}") from None
    identity = (str(path), info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size)
    cached = _cache.get(identity)
    if cached is not None:
        return cached
    data = read_limited(path, MAX_KEY_FILE, what, HostCredentialsError)
    key = _parse(path, data, what)
    _warn_if_unprotected(path, info)
    _cache[identity] = key
    return key


def _parse(path: Path, data: bytes, what: str) -> ClientKey:
    try:
        # ignore_encrypted: an encrypted key comes back as no key at all, not an error.
        keypairs = asyncssh.load_keypairs(str(path), ignore_encrypted=True)
    except (asyncssh.KeyImportError, ValueError, OSError) as exc:
        if str(exc).startswith("Passphrase"):  # several keys in one encrypted PEM file
            keypairs = []
        else:
            raise HostCredentialsError(f"{what}: {_not_a_key(data, exc)}") from None
    if keypairs:
        return ClientKey(path, tuple(keypairs))
    return ClientKey(path, (), _public_half(path))


def _not_a_key(data: bytes, exc: Exception) -> str:
    try:
        asyncssh.import_public_key(data)
    except (asyncssh.KeyImportError, ValueError):
        return f"not a private key ({exc})"
    return "is a public key; name the private key file (without .pub)"


def _public_half(path: Path) -> asyncssh.SSHKey | None:
    """The ``.pub`` file ssh-keygen writes beside a key, if it is there and readable."""
    try:
        data = read_limited(path.with_name(path.name + ".pub"), MAX_KEY_FILE, "pub")
        return asyncssh.import_public_key(data)
    except (HerdError, asyncssh.KeyImportError, ValueError):
        return None


def _warn_if_unprotected(path: Path, info: os.stat_result) -> None:
    """OpenSSH refuses a private key others can read ("UNPROTECTED PRIVATE KEY FILE");
    herd warns, once per file and process, and goes on: refusing would turn a fleet
    that works today into one where no host answers, for a secret already exposed."""
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077 and str(path) not in _warned:
        _warned.add(str(path))
        log.warning(
            "ssh key %s is accessible by others (mode %04o); OpenSSH would refuse it: chmod 600 %s",
            path,
            mode,
            path,
        )
