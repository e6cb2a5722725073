"""Paths that requests name, held to the directories they may touch.

The orchestrator names files on the host (an upload to commit, a disk to adopt, a
tunnel socket to clean up, an image to copy). Each must stay where herd keeps such
files: resolved with ``realpath`` (so ``..`` and symlinked directories cannot lead
out) and compared with the resolved directory it belongs in. Host paths of images
(``host://``) are opened below an allowed directory without following a symlink that
appeared after the check, and must be regular files (never a device or a FIFO).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Sequence, Tuple

from agent.errors import BadRequest


class PathRefused(BadRequest):
    """A path outside what this request may touch, or not a regular file."""


# Trees of the host that are never images: devices, kernel interfaces, runtime state.
NOT_IMAGES = ("/dev", "/proc", "/sys", "/run")
# Directories no image directory may be: the host's own system.
SYSTEM_DIRS = ("/", "/etc", "/boot", "/root", "/usr", "/bin", "/sbin", "/lib", "/var")


def under(path: PurePosixPath, tree: str) -> bool:
    """Is ``path`` the directory ``tree`` or below it (as written, nothing resolved)?"""
    return path == PurePosixPath(tree) or PurePosixPath(tree) in path.parents


def clean_host_path(value: str) -> PurePosixPath:
    """An absolute, normalised host path; ``ValueError`` (an operator's message) if not.
    The inventory and the agent both hold host paths to it, so both compare the same."""
    path = PurePosixPath(value)
    if not path.is_absolute():
        raise ValueError("must be an absolute path on the host (start with /)")
    if ".." in path.parts or str(path) != value or "\0" in value:
        raise ValueError("must be a normalised path (no '..', '.', '//' or trailing '/')")
    return path


def check_host_image_path(value: str) -> None:
    """The file of a ``host://`` image: a plain path, never a device or kernel file."""
    path = clean_host_path(value)
    if any(under(path, tree) for tree in NOT_IMAGES):
        raise ValueError(f"must not be under {', '.join(NOT_IMAGES)}: those are not image files")


def check_image_source_dir(value: str) -> None:
    """A directory ``host://`` images may come from: the agent reads any file below it."""
    path = clean_host_path(value)
    if any(under(path, tree) for tree in NOT_IMAGES) or str(path) in SYSTEM_DIRS:
        raise ValueError(
            "must be a directory of images, not a system directory "
            f"({', '.join(SYSTEM_DIRS)}, or below {', '.join(NOT_IMAGES)})"
        )


def within(path: str, root: str) -> bool:
    """Is the (resolved) ``path`` ``root`` itself or below it?"""
    return path == root or path.startswith(root.rstrip("/") + "/")


def entry_in(path: str, roots: Sequence[Path], what: str) -> Path:
    """``path`` as a name in one of ``roots`` (or below): its directory resolved, its
    last component kept, so the caller can ``lstat`` it and refuse a symlink."""
    if not isinstance(path, str) or not path.startswith("/") or "\x00" in path:
        raise PathRefused(f"{what} must be an absolute path")
    parent, name = os.path.split(path)
    real_parent = os.path.realpath(parent)
    resolved = [os.path.realpath(str(root)) for root in roots]
    if name in ("", ".", "..") or not any(within(real_parent, root) for root in resolved):
        raise PathRefused(f"{what} {path} is not in {' or '.join(str(r) for r in roots)}")
    return Path(real_parent) / name


def regular_file(path: Path, what: str) -> os.stat_result:
    """``lstat`` of ``path``, which must be a regular file (not a symlink)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise PathRefused(f"{what} {path} does not exist") from None
    if not stat.S_ISREG(st.st_mode):
        raise PathRefused(f"{what} {path} is not a regular file")
    return st


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def open_source(path: str, allowed: Sequence[str]) -> Tuple[BinaryIO, os.stat_result]:
    """Open the image file ``path`` for reading, if it lies in an ``allowed`` directory.

    The path is resolved first (a symlink may point within the directory, never out),
    then opened component by component from the allowed directory with
    ``O_NOFOLLOW``, so a symlink swapped in after the check fails instead of leading
    elsewhere; ``O_NONBLOCK`` so a FIFO cannot hang the agent. What opens must be a
    regular file: ``/dev/zero`` or a FIFO would never end. ``OSError`` if it cannot
    be opened (missing, unreadable, a symlink swapped in).
    """
    if not path.startswith("/") or "\x00" in path:
        raise BadRequest("a host path must be absolute")
    if not allowed:
        raise PathRefused(
            f"{path}: this host allows no host:// images (its image_source_dirs is empty)"
        )
    real = os.path.realpath(path)
    root = next(
        (r for r in (os.path.realpath(d) for d in allowed) if real != r and within(real, r)),
        None,
    )
    if root is None:
        dirs = ", ".join(allowed)
        raise PathRefused(f"{path} is not under this host's image_source_dirs ({dirs})")
    parts = os.path.relpath(real, root).split("/")
    dir_fd = os.open(root, _DIR_FLAGS)
    try:
        for part in parts[:-1]:
            step = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=dir_fd)
            os.close(dir_fd)
            dir_fd = step
        fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise PathRefused(f"{path} is not a regular file")
    return os.fdopen(fd, "rb"), st
