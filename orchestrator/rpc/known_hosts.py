"""known_hosts files: which keys herd trusts for a host, and recording a new one.

Lines are matched by asyncssh's own parser, so what `herd host trust` finds is what
``connect()`` trusts: hashed names (``|1|salt|hash``), ``[addr]:port`` for a port other
than 22, comma-separated names, patterns and the ``@revoked`` / ``@cert-authority``
markers. Unlike asyncssh, which refuses a whole file for one line it cannot read, a bad
line is skipped with a warning, as OpenSSH does: one stray line must not make every
host in the file untrusted.

Knowing which keys a host had is what tells a *changed* key (OpenSSH's "REMOTE HOST
IDENTIFICATION HAS CHANGED") from an unknown one.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import ipaddress
import logging
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import asyncssh

from orchestrator.errors import HerdError, HostKeyNotTrusted
from orchestrator.files import os_reason, read_limited

if TYPE_CHECKING:
    from orchestrator.rpc.ssh import HostTarget

log = logging.getLogger(__name__)

MAX_KNOWN_HOSTS = 16 * 1024 * 1024
_warned: set[str] = set()


@dataclass(frozen=True)
class KnownLine:
    path: Path
    number: int
    text: str
    """The line as written, without its line break; kept as is when the file is rewritten."""
    entries: asyncssh.SSHKnownHosts | None
    """None for a blank line, a comment, or a line asyncssh cannot read."""

    @property
    def where(self) -> str:
        return f"{self.path}:{self.number}"


@dataclass(frozen=True)
class KnownKey:
    key: asyncssh.SSHKey
    path: Path
    number: int

    @property
    def where(self) -> str:
        return f"{self.path}:{self.number}"

    def describe(self) -> str:
        return f"{self.key.get_algorithm()} {self.key.get_fingerprint('sha256')} ({self.where})"


@dataclass(frozen=True)
class HostKeys:
    """What a host's known_hosts files say about it, as ``connect()`` reads them."""

    known_hosts: asyncssh.SSHKnownHosts
    lines: tuple[KnownLine, ...]
    target: HostTarget

    @functools.cached_property
    def trusted(self) -> tuple[KnownKey, ...]:
        return self._attributed()[0]

    @functools.cached_property
    def revoked(self) -> tuple[KnownKey, ...]:
        return self._attributed()[1]

    def _attributed(self) -> tuple[tuple[KnownKey, ...], tuple[KnownKey, ...]]:
        """The keys asyncssh trusts and revokes for the host, each with its line. The
        answer for the whole set is the truth; each line is asked only which of those
        keys it holds (with and without the port: on its own, a line that only revokes
        would lose its answer to asyncssh's retry without the port)."""
        host, addr, port = _match_args(self.target)
        trusted_keys, _, revoked_keys, *_ = self.known_hosts.match(host, addr, port)
        trusted: list[KnownKey] = []
        revoked: list[KnownKey] = []
        for line in self.lines:
            if line.entries is None:
                continue
            mine, _, theirs_revoked, *_ = line.entries.match(host, addr, None)
            if port is not None:
                exact = line.entries.match(self.target.known_hosts_entry(), "", None)
                mine, theirs_revoked = [*mine, *exact[0]], [*theirs_revoked, *exact[2]]
            trusted += [KnownKey(k, line.path, line.number) for k in mine if k in trusted_keys]
            revoked += [
                KnownKey(k, line.path, line.number) for k in theirs_revoked if k in revoked_keys
            ]
        return tuple(_unique(trusted)), tuple(_unique(revoked))

    def trusts(self, key: asyncssh.SSHKey) -> bool:
        return any(k.key == key for k in self.trusted)

    def revokes(self, key: asyncssh.SSHKey) -> KnownKey | None:
        return next((k for k in self.revoked if k.key == key), None)

    def algorithms(self) -> list[str]:
        """The host key algorithms of the trusted keys, as asyncssh negotiates them:
        asking the host for one of these gets the key ``connect()`` would check."""
        names: list[str] = []
        for known in self.trusted:
            for alg in known.key.sig_algorithms:
                if alg.decode() not in names:
                    names.append(alg.decode())
        return names


_Identity = tuple[str, int, int, int, int]
_files: dict[_Identity, tuple[KnownLine, ...]] = {}
_merged: dict[tuple[_Identity, ...], asyncssh.SSHKnownHosts] = {}


def _identity(path: Path) -> _Identity | None:
    """What tells one version of a file from another; None when there is no file."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HostKeyNotTrusted(f"known_hosts {path}: {os_reason(exc)}") from None
    return (str(path), info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size)


def read_lines(path: Path) -> tuple[KnownLine, ...]:
    """Every line of a known_hosts file (none for a missing one), parsed once per
    version of the file: ``connect()`` asks for every host of a fleet."""
    identity = _identity(path)
    if identity is None:
        return ()
    cached = _files.get(identity)
    if cached is not None:
        return cached
    data = read_limited(path, MAX_KNOWN_HOSTS, f"known_hosts {path}", HostKeyNotTrusted)
    text = data.decode("utf-8", "surrogateescape")
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        entries = None
        if stripped and not stripped.startswith("#"):
            try:
                entries = asyncssh.import_known_hosts(stripped)
            except (ValueError, asyncssh.KeyImportError) as exc:
                _warn_once(f"{path}:{number}", exc)
        lines.append(KnownLine(path, number, line, entries))
    if len(_files) > 64:
        _files.clear()
    _files[identity] = tuple(lines)
    return _files[identity]


def _warn_once(where: str, exc: Exception) -> None:
    if where not in _warned:
        _warned.add(where)
        log.warning("%s: skipping a known_hosts line herd cannot read (%s)", where, exc)


def _match_args(target: HostTarget) -> tuple[str, str, int | None]:
    """``match()``'s arguments as ``asyncssh.connect`` makes them for this host."""
    try:
        ipaddress.ip_address(target.address)
        addr = target.address
    except ValueError:
        addr = ""  # asyncssh matches the peer's IP; without resolving, the name only
    return target.address, addr, None if (target.port or 22) == 22 else target.port


def names_exactly(entries: asyncssh.SSHKnownHosts, target: HostTarget) -> list[asyncssh.SSHKey]:
    """The unmarked host keys a line gives for exactly this host's entry: for a port
    other than 22, ``[addr]:port`` only, without asyncssh's fallback to the bare address
    (which is the entry of whatever listens on port 22 there)."""
    if (target.port or 22) == 22:
        host, addr, _ = _match_args(target)
        return list(entries.match(host, addr, None)[0])
    return list(entries.match(target.known_hosts_entry(), "", None)[0])


def host_keys(target: HostTarget) -> HostKeys:
    files = target.known_hosts_files()
    lines = [line for path in files for line in read_lines(path)]
    identities = tuple(i for i in (_identity(p) for p in files) if i is not None)
    merged = _merged.get(identities)
    if merged is None:
        good = "\n".join(line.text.strip() for line in lines if line.entries is not None)
        merged = _merged.setdefault(identities, asyncssh.import_known_hosts(good))
    return HostKeys(merged, tuple(lines), target)


def _unique(keys: list[KnownKey]) -> list[KnownKey]:
    seen: list[tuple[bytes, str]] = []
    kept = []
    for known in keys:
        identity = (known.key.public_data, known.where)
        if identity not in seen:
            seen.append(identity)
            kept.append(known)
    return kept


def record_host_key(target: HostTarget, key: asyncssh.SSHKey, *, replace: bool = False) -> Path:
    """Add the host's key to its trust file, atomically, keeping every other line.

    The lines that name exactly this host with the key's algorithm go (the key they
    held is being replaced); with ``replace`` (the host's key changed) every unmarked
    line for it goes, since a reinstalled host has new keys of every type. ``@revoked``
    and ``@cert-authority`` lines always stay."""
    path = Path(os.path.realpath(target.trust_file().expanduser()))
    algorithm, blob = key.export_public_key("openssh").decode().split()[:2]
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with _locked(path.parent):
            kept = []
            for line in read_lines(path):
                names = names_exactly(line.entries, target) if line.entries is not None else []
                if names and (replace or any(k.get_algorithm() == algorithm for k in names)):
                    continue
                kept.append(line.text)
            kept.append(f"{target.known_hosts_entry()} {algorithm} {blob}")
            _write_atomically(path, "".join(f"{line}\n" for line in kept))
    except OSError as exc:
        raise HerdError(f"known_hosts {path}: cannot write it: {os_reason(exc)}") from None
    return path


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Two `herd host trust` runs at once must not each write the file they read."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_atomically(path: Path, text: str) -> None:
    """A temporary file beside it, synced, renamed over it: a reader sees the old file
    or the new one, never half. The mode is kept (0644 for a new file, OpenSSH's) but
    never group- or world-writable; as root, so is the owner."""
    try:
        old: os.stat_result | None = path.stat()
    except FileNotFoundError:
        old = None
    mode = stat.S_IMODE(old.st_mode) & ~0o022 if old is not None else 0o644
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as handle:
            os.fchmod(handle.fileno(), mode)
            if old is not None and os.geteuid() == 0:
                os.fchown(handle.fileno(), old.st_uid, old.st_gid)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
