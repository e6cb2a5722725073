"""Key pairs: SSH public keys herd gives guests (cloud-init's public-keys).

herd keeps only the public half. ``create`` generates an Ed25519 pair (asyncssh does
the cryptography) and hands the private key to the operator once, as Nova does.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncssh
from sqlmodel import select

from orchestrator.db.engine import Database
from orchestrator.db.models import KeyPair, utcnow
from orchestrator.errors import Conflict, InvalidInput, NotFound

MAX_PUBLIC_KEY = 16 * 1024


@dataclass(frozen=True)
class NewKeyPair:
    key: KeyPair
    private_key: str | None  # only when herd generated it


def parse_public_key(text: str, origin: str) -> tuple[str, str]:
    """The key in OpenSSH one-line form, and its SHA256 fingerprint; one-line errors."""
    text = text.strip()
    if not text or len(text) > MAX_PUBLIC_KEY or "\n" in text:
        raise InvalidInput(f"{origin}: expected one OpenSSH public key line")
    try:
        key = asyncssh.import_public_key(text)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise InvalidInput(f"{origin}: not an SSH public key ({exc})") from None
    line = key.export_public_key("openssh").decode().strip()
    return line, key.get_fingerprint("sha256")


async def _store(db: Database, name: str, public_key: str, fingerprint: str) -> KeyPair:
    async with db.session() as session:
        if (await session.exec(select(KeyPair).where(KeyPair.name == name))).first():
            raise Conflict(f"key pair {name!r} already exists")
        row = KeyPair(
            name=name, public_key=public_key, fingerprint=fingerprint, created_at=utcnow()
        )
        session.add(row)
    return row


async def create_key_pair(db: Database, name: str) -> NewKeyPair:
    private = asyncssh.generate_private_key("ssh-ed25519", comment=name)
    public = private.export_public_key("openssh").decode().strip()
    row = await _store(db, name, public, private.get_fingerprint("sha256"))
    return NewKeyPair(row, private.export_private_key("openssh").decode())


async def import_key_pair(db: Database, name: str, public_key: str, origin: str) -> NewKeyPair:
    line, fingerprint = parse_public_key(public_key, origin)
    return NewKeyPair(await _store(db, name, line, fingerprint), None)


async def list_key_pairs(db: Database) -> list[KeyPair]:
    async with db.read() as session:
        return list((await session.exec(select(KeyPair).order_by(KeyPair.name))).all())


async def delete_key_pair(db: Database, name: str) -> None:
    """Servers keep the key they were given (Nova copies key_data too): deleting a
    pair only stops new servers from using it."""
    async with db.session() as session:
        row = (await session.exec(select(KeyPair).where(KeyPair.name == name))).first()
        if row is None:
            raise NotFound(f"key pair {name!r} not found")
        await session.delete(row)
