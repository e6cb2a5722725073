"""The image cache: base images by sha256 under ``<state_dir>/images/<sha256>``.

Keyed by content, not name, so a renamed or re-uploaded image never changes a disk
that uses it. The hash is checked once, on commit, before the file becomes visible
under its final name; a mismatch is refused and the upload deleted. Files are 0644
and directories 0755 because QEMU runs as libvirt-qemu and must read the base.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from agent.errors import BadRequest
from agent.fsutil import DIR_MODE, FILE_MODE, ensure_dir, tmp_name

_CHUNK = 1 << 20


@dataclass(frozen=True)
class CachedImage:
    path: Path
    size: Optional[int]

    @property
    def present(self) -> bool:
        return self.size is not None


def images_dir(state_dir: Path) -> Path:
    return state_dir / "images"


def image_path(state_dir: Path, sha256: str) -> Path:
    return images_dir(state_dir) / sha256


def status(state_dir: Path, sha256: str) -> CachedImage:
    path = image_path(state_dir, sha256)
    try:
        return CachedImage(path, path.stat().st_size)
    except FileNotFoundError:
        return CachedImage(path, None)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def commit(state_dir: Path, sha256: str, upload: Path) -> CachedImage:
    """Verify ``upload`` against ``sha256`` and move it into the cache.

    Idempotent: when the image is already cached the upload is just removed.
    """
    cache = ensure_dir(images_dir(state_dir), DIR_MODE)
    final = image_path(state_dir, sha256)
    try:
        st = os.lstat(upload)
    except FileNotFoundError:
        cached = status(state_dir, sha256)
        if cached.present:
            return cached  # a repeated commit whose upload was already moved
        raise BadRequest(f"upload {upload} does not exist") from None
    if not stat.S_ISREG(st.st_mode):
        # Never chmod or move through a symlink: it could point anywhere.
        raise BadRequest(f"upload {upload} is not a regular file")
    cached = status(state_dir, sha256)
    if cached.present:
        os.unlink(upload)
        return cached
    actual = file_sha256(upload)
    if actual != sha256:
        os.unlink(upload)
        raise BadRequest(f"upload {upload}: sha256 is {actual}, expected {sha256}; removed it")
    staged = tmp_name(final)
    try:
        if os.stat(cache).st_dev == st.st_dev:
            os.replace(upload, staged)
        else:
            shutil.copyfile(upload, staged)
            os.unlink(upload)
        os.chmod(staged, FILE_MODE)
        os.replace(staged, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staged)
    return status(state_dir, sha256)
