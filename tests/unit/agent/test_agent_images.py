"""The image cache: verified on commit, readable by QEMU, idempotent."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from agent import images
from agent.errors import BadRequest

DATA = b"not really a disk image\n" * 1000
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def upload(state_dir: Path) -> Path:
    path = state_dir / "upload.part"
    path.write_bytes(DATA)
    return path


def test_status_of_an_image_never_uploaded(state_dir: Path) -> None:
    cached = images.status(state_dir, SHA)
    assert (cached.present, cached.size) == (False, None)
    assert cached.path == state_dir / "images" / SHA


def test_commit_moves_the_verified_upload_into_the_cache_readable_by_qemu(
    state_dir: Path, upload: Path
) -> None:
    os.chmod(upload, 0o600)
    cached = images.commit(state_dir, SHA, upload)
    assert cached.path == state_dir / "images" / SHA
    assert cached.size == len(DATA)
    assert cached.path.read_bytes() == DATA
    assert not upload.exists()
    assert cached.path.stat().st_mode & 0o777 == 0o644
    assert cached.path.parent.stat().st_mode & 0o777 == 0o755
    assert images.status(state_dir, SHA).present


def test_a_checksum_mismatch_is_refused_and_the_upload_removed(
    state_dir: Path, upload: Path
) -> None:
    wrong = "0" * 64
    with pytest.raises(BadRequest, match=f"sha256 is {SHA}, expected {wrong}"):
        images.commit(state_dir, wrong, upload)
    assert not upload.exists()
    assert not images.status(state_dir, wrong).present
    assert os.listdir(state_dir / "images") == []


def test_committing_twice_is_harmless(state_dir: Path, upload: Path) -> None:
    first = images.commit(state_dir, SHA, upload)
    assert images.commit(state_dir, SHA, upload) == first  # upload already moved
    upload.write_bytes(DATA)
    assert images.commit(state_dir, SHA, upload) == first  # already cached: upload dropped
    assert not upload.exists()


def test_a_symlink_is_never_followed(state_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_bytes(DATA)
    os.chmod(target, 0o600)
    link = state_dir / "upload.part"
    link.symlink_to(target)
    with pytest.raises(BadRequest, match="not a regular file"):
        images.commit(state_dir, SHA, link)
    assert target.stat().st_mode & 0o777 == 0o600


def test_a_missing_upload_is_a_bad_request(state_dir: Path) -> None:
    with pytest.raises(BadRequest, match="does not exist"):
        images.commit(state_dir, SHA, state_dir / "nothing")
