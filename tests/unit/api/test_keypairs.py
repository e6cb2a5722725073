"""Key pairs: names in the alphabet of server names, one safe public key per pair, and
a generated private key delivered before its pair is stored, or neither."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import asyncssh
import pytest
import yaml
from sqlmodel import select

from orchestrator import cloudinit
from orchestrator.api import keypairs
from orchestrator.db.engine import Database
from orchestrator.db.models import KeyPair
from orchestrator.errors import Conflict, InvalidInput, NotFound

UUID = "0b7e6a52-6a43-4c2c-9d55-3a3b9a1b2c3d"


@pytest.fixture
def public_line() -> str:
    return asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()


async def stored(db: Database) -> list[KeyPair]:
    async with db.session() as session:
        return list((await session.exec(select(KeyPair))).all())


BAD_NAMES = [
    pytest.param("", id="empty"),
    pytest.param("x" * 5000, id="5000-characters"),
    pytest.param("a" * 64, id="64-characters"),
    pytest.param("../../etc/passwd", id="path"),
    pytest.param("a\nssh-rsa AAAAB3NzaC1yc2E evil@attacker", id="newline-injects-a-key"),
    pytest.param("db\n", id="trailing-newline"),
    pytest.param("\udcff", id="undecodable-argv-byte"),
    pytest.param("-me", id="leading-dash"),
    pytest.param("my key", id="space"),
    pytest.param("[/oops]", id="markup"),
]


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_a_bad_key_pair_name_is_refused_and_nothing_is_stored(
    db: Database, name: str, public_line: str
) -> None:
    with pytest.raises(InvalidInput, match=r"key pair name .* is invalid"):
        await keypairs.create_key_pair(db, name)
    with pytest.raises(InvalidInput, match=r"key pair name .* is invalid"):
        await keypairs.import_key_pair(db, name, public_line, "test")
    assert await stored(db) == []


@pytest.mark.parametrize("name", ["me", "a.b-c_d", "A" * 63, "9lives"])
async def test_good_names_are_accepted(db: Database, name: str) -> None:
    new = await keypairs.create_key_pair(db, name)
    assert new.key.name == name


async def test_a_generated_key_gives_guests_exactly_one_authorized_key(db: Database) -> None:
    new = await keypairs.create_key_pair(db, "me")
    docs = cloudinit.render(cloudinit.SeedInstance(UUID, "a"), [], [new.key.public_key])
    (key,) = yaml.safe_load(docs["meta-data"])["public-keys"]
    assert "\n" not in key and "\r" not in key
    assert key.split()[2:] == ["me"]


async def test_a_long_name_is_shown_cut_short(db: Database) -> None:
    with pytest.raises(InvalidInput) as caught:
        await keypairs.create_key_pair(db, "x" * 5000)
    assert len(str(caught.value)) < 300 and "5000 characters" in str(caught.value)


async def test_an_undecodable_name_is_not_found_on_delete(db: Database) -> None:
    with pytest.raises(NotFound):
        await keypairs.delete_key_pair(db, "\udcff")


async def test_a_pair_stored_before_names_were_checked_can_still_be_deleted(
    db: Database, public_line: str
) -> None:
    async with db.session() as session:
        session.add(KeyPair(name="old\nname", public_key=public_line, fingerprint="x"))
    await keypairs.delete_key_pair(db, "old\nname")
    assert await stored(db) == []


# -- public keys --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        pytest.param("{key}\n{key}\n", "2 lines; a key pair holds one public key", id="two-keys"),
        pytest.param('command="rm -rf /" {key}', "options", id="options-prefix"),
        pytest.param('no-pty,from="10.0.0.1" {key}', "options", id="options-list"),
        pytest.param("{key} me\rroot", "2 lines", id="comment-cr"),
        pytest.param("{key} me\x1b[2Jx", "control characters", id="comment-escape"),
        pytest.param("{key} me\x00x", "control characters", id="comment-nul"),
        pytest.param("{key} me\u202eevil", "control characters", id="comment-bidi"),
        pytest.param("", "empty", id="empty"),
        pytest.param(
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl\n-----END OPENSSH PRIVATE KEY-----\n",
            "is a private key; give its public half",
            id="private-key",
        ),
        pytest.param("ssh-ed25519", "not an SSH public key", id="no-blob"),
        pytest.param("ssh-ed25519 AAAA", "not an SSH public key", id="bad-blob"),
        pytest.param("x" * 20000, "longer than", id="huge"),
    ],
)
def test_anything_but_one_plain_public_key_is_refused(
    text: str, reason: str, public_line: str
) -> None:
    with pytest.raises(InvalidInput, match=reason):
        keypairs.parse_public_key(text.replace("{key}", public_line), "--public-key k.pub")


def test_a_key_is_stored_as_the_parser_exports_it_with_its_printable_comment(
    public_line: str,
) -> None:
    algorithm, blob = public_line.split()[:2]
    line, fingerprint = keypairs.parse_public_key(
        f"  {algorithm}\t{blob}   josé@laptop (work)\r\n", "k.pub"
    )
    assert line == f"{algorithm} {blob} josé@laptop (work)"
    assert fingerprint == asyncssh.import_public_key(public_line).get_fingerprint("sha256")
    assert keypairs.parse_public_key(f"{algorithm} {blob}\n", "k.pub")[0] == f"{algorithm} {blob}"


# -- the private key: its file first, then the row; or neither ------------------------


async def test_a_private_key_file_that_cannot_be_made_stores_nothing(
    db: Database, tmp_path: Path
) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "key"
    with pytest.raises(InvalidInput, match=f"no such directory {missing.parent}"):
        await keypairs.create_key_pair(db, "me", keypairs.PrivateKeyFile(missing))
    assert await stored(db) == []
    good = tmp_path / "key"
    new = await keypairs.create_key_pair(db, "me", keypairs.PrivateKeyFile(good))  # no "exists"
    assert good.read_text() == new.private_key
    assert stat.S_IMODE(good.stat().st_mode) == 0o600


async def test_an_existing_private_key_file_is_never_overwritten(
    db: Database, tmp_path: Path
) -> None:
    path = tmp_path / "key"
    path.write_text("precious\n")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    for target in (path, link):
        with pytest.raises(Conflict, match="exists; not overwriting"):
            await keypairs.create_key_pair(db, "me", keypairs.PrivateKeyFile(target))
    assert path.read_text() == "precious\n" and not (tmp_path / "elsewhere").exists()
    assert await stored(db) == []


async def test_a_taken_name_writes_no_private_key_file(db: Database, tmp_path: Path) -> None:
    await keypairs.create_key_pair(db, "me")
    path = tmp_path / "key"
    with pytest.raises(Conflict, match="already exists"):
        await keypairs.create_key_pair(db, "me", keypairs.PrivateKeyFile(path))
    assert not path.exists()


async def test_a_row_that_fails_after_the_file_was_written_takes_the_file_back(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await keypairs.create_key_pair(db, "me")

    async def raced(db: Database, name: str) -> None:
        """Another process stores the name between the check and the insert."""

    monkeypatch.setattr(keypairs, "_refuse_taken", raced)
    path = tmp_path / "key"
    with pytest.raises(Conflict, match="already exists"):
        await keypairs.create_key_pair(db, "me", keypairs.PrivateKeyFile(path))
    assert not path.exists()
    assert len(await stored(db)) == 1


async def test_the_private_key_file_is_0600_whatever_the_umask(
    db: Database, tmp_path: Path
) -> None:
    old = os.umask(0)
    try:
        await keypairs.create_key_pair(db, "me", keypairs.PrivateKeyFile(tmp_path / "key"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "key").stat().st_mode) == 0o600
