"""Key pairs: SSH public keys herd gives guests (cloud-init's public-keys).

herd keeps only the public half. ``create`` generates an Ed25519 pair (asyncssh does
the cryptography) and hands the private key to the operator once, as Nova does: so it
is delivered first (written to its file, or printed) and the pair is stored only once
that worked; if storing fails, the file is removed again. Either both exist, or neither.

A stored public key becomes one line of every guest's ``authorized_keys``. So a pair
holds exactly one key, in the form asyncssh re-exports it, with a comment that cannot
start a second line, and a name in the alphabet of server names.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import asyncssh
from sqlmodel import select

from orchestrator import names
from orchestrator.db.duplicates import duplicates_conflict
from orchestrator.db.engine import Database
from orchestrator.db.models import KeyPair, utcnow
from orchestrator.errors import Conflict, InvalidInput, NotFound
from orchestrator.files import os_reason

MAX_PUBLIC_KEY = 16 * 1024


@dataclass(frozen=True)
class NewKeyPair:
    key: KeyPair
    private_key: str | None  # only when herd generated it


class PrivateKeyDelivery(Protocol):
    """Where a generated private key goes before its pair is stored."""

    def save(self, new: NewKeyPair) -> None:
        """Deliver the key; raise a ``HerdError`` if it cannot be, and nothing is stored."""

    def undo(self) -> None:
        """The pair could not be stored: take back what ``save`` left, if anything."""


def check_name(name: str) -> str:
    """Names as for servers: a generated key carries its pair's name as its comment,
    into guests' authorized_keys, so a newline in it would add a line there."""
    return names.check_name("key pair", name)


def parse_public_key(text: str, origin: str) -> tuple[str, str]:
    """The key as stored (asyncssh's re-export plus the comment, if it is printable)
    and its SHA256 fingerprint; a one-line refusal for anything else. Refused rather
    than cleaned up, so the operator is never surprised by what guests get: a second
    key, an authorized_keys line with options (``command="..."``), a comment with
    control characters."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if "PRIVATE KEY-----" in text:
        raise InvalidInput(f"{origin}: is a private key; give its public half (the .pub file)")
    if not lines:
        raise InvalidInput(f"{origin}: empty; expected one OpenSSH public key line")
    if len(lines) > 1:
        raise InvalidInput(
            f"{origin}: {len(lines)} lines; a key pair holds one public key, one line "
            "(as in id_ed25519.pub)"
        )
    line = lines[0]
    if len(line) > MAX_PUBLIC_KEY:
        raise InvalidInput(f"{origin}: longer than {MAX_PUBLIC_KEY} characters; not a public key")
    algorithm, blob, comment = [*line.split(None, 2), "", ""][:3]
    try:
        key = asyncssh.import_public_key(f"{algorithm} {blob}")
    except (asyncssh.KeyImportError, ValueError) as exc:
        if _has_options(line):
            raise InvalidInput(
                f"{origin}: an authorized_keys line with options; give the public key alone "
                "(herd gives guests no per-key options)"
            ) from None
        raise InvalidInput(f"{origin}: not an SSH public key ({exc})") from None
    if not all(ch.isprintable() for ch in comment):
        raise InvalidInput(f"{origin}: the key's comment has control characters; remove them")
    stored = key.export_public_key("openssh").decode().strip()
    return (f"{stored} {comment}" if comment else stored), key.get_fingerprint("sha256")


def _has_options(line: str) -> bool:
    try:
        keys = asyncssh.import_authorized_keys(line)
    except (asyncssh.KeyImportError, ValueError):
        return False
    return bool(keys)


async def _refuse_taken(db: Database, name: str) -> None:
    async with db.session() as session:
        if (await session.exec(select(KeyPair).where(KeyPair.name == name))).first():
            raise Conflict(f"key pair {name!r} already exists")


async def _store(db: Database, row: KeyPair) -> KeyPair:
    taken = f"key pair {row.name!r} already exists"
    # The check answers the common case; the constraint, another process storing the
    # same name meanwhile.
    async with duplicates_conflict("key_pairs", taken), db.session() as session:
        if (await session.exec(select(KeyPair).where(KeyPair.name == row.name))).first():
            raise Conflict(taken)
        session.add(row)
    return row


async def create_key_pair(
    db: Database, name: str, delivery: PrivateKeyDelivery | None = None
) -> NewKeyPair:
    check_name(name)
    await _refuse_taken(db, name)  # before anything is delivered, in the common case
    private = asyncssh.generate_private_key("ssh-ed25519", comment=name)
    public = private.export_public_key("openssh").decode().strip()
    row = KeyPair(
        name=name,
        public_key=public,
        fingerprint=private.get_fingerprint("sha256"),
        created_at=utcnow(),
    )
    new = NewKeyPair(row, private.export_private_key("openssh").decode())
    if delivery is not None:
        delivery.save(new)
    try:
        await _store(db, row)
    except BaseException:
        if delivery is not None:
            delivery.undo()
        raise
    return new


async def import_key_pair(db: Database, name: str, public_key: str, origin: str) -> NewKeyPair:
    check_name(name)
    line, fingerprint = parse_public_key(public_key, origin)
    row = KeyPair(name=name, public_key=line, fingerprint=fingerprint, created_at=utcnow())
    return NewKeyPair(await _store(db, row), None)


class PrivateKeyFile:
    """A new file, mode 0600 from its creation, never an existing file or symlink
    (``O_EXCL``), synced before the pair is stored; ``undo`` removes it."""

    def __init__(self, path: Path) -> None:
        self.path = path.expanduser()
        self._written = False

    def save(self, new: NewKeyPair) -> None:
        assert new.private_key is not None
        what = f"--private-key {self.path}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o600)
        except FileExistsError:
            raise Conflict(f"{what} exists; not overwriting it") from None
        except FileNotFoundError:
            raise InvalidInput(f"{what}: no such directory {self.path.parent}") from None
        except OSError as exc:
            raise InvalidInput(f"{what}: {os_reason(exc)}") from None
        self._written = True
        try:
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(new.private_key)
                handle.flush()
                os.fsync(handle.fileno())
            _sync_directory(self.path.parent)
        except OSError as exc:
            self.undo()
            raise InvalidInput(f"{what}: {os_reason(exc)}") from None

    def undo(self) -> None:
        if self._written:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self._written = False


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def list_key_pairs(db: Database) -> list[KeyPair]:
    async with db.read() as session:
        return list((await session.exec(select(KeyPair).order_by(KeyPair.name))).all())


async def delete_key_pair(db: Database, name: str) -> None:
    """Servers keep the key they were given (Nova copies key_data too): deleting a
    pair only stops new servers from using it."""
    if not _storable(name):
        raise NotFound(f"key pair {name!r} not found")
    async with db.session() as session:
        row = (await session.exec(select(KeyPair).where(KeyPair.name == name))).first()
        if row is None:
            raise NotFound(f"key pair {name!r} not found")
        await session.delete(row)


def _storable(name: str) -> bool:
    """Names from before names were checked stay deletable; a name with a lone
    surrogate (undecodable bytes in argv) was never storable, so it is not there."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
