"""Files herd keeps on the operator's machine: where they go (the XDG base
directories) and how private they are.

Files herd keeps for its own user are private: the database holds user data
(cloud-init user data carries passwords), logs name servers and errors.

Directories and files herd *creates* get 0700 / 0600. A directory that already
exists is the operator's choice (``/tmp``, a shared group directory) and is never
chmod-ed; an existing file is only ever tightened, never widened.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def xdg_dir(variable: str, default: Path) -> Path:
    """An XDG base directory; a relative value is ignored, as the spec says."""
    value = os.environ.get(variable)
    return Path(value) if value and os.path.isabs(value) else default


def make_private_dirs(directory: Path) -> None:
    """``mkdir -p`` where every directory made is 0700 (``Path.mkdir``'s ``mode``
    applies to the last one only); existing ones are left as they are."""
    missing = []
    for candidate in (directory, *directory.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    for candidate in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another herd made it meanwhile
            candidate.mkdir(mode=PRIVATE_DIR)


def create_private_file(path: Path) -> bool:
    """Create ``path`` empty and 0600 if it does not exist; True if this call made it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def open_private_append(path: Path) -> int:
    """An fd appending to ``path``, created 0600 if new."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE)


def withdraw_from_others(path: Path) -> None:
    """Remove every permission "other" users have on an existing ``path`` (a database
    made by an older herd was 0644). Group bits stay: a group of operators sharing
    one SQLite file is a choice; a world-readable one never is."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if not mode & 0o007:
        return
    try:
        os.chmod(path, mode & ~0o007)
    except OSError as exc:
        log.warning(
            "%s is readable by every user (mode %04o) and herd cannot change it (%s): "
            "chmod o-rwx it",
            path,
            mode,
            exc.strerror,
        )
        return
    log.warning("%s was readable by every user: mode %04o -> %04o", path, mode, mode & ~0o007)


def sha256_of(path: Path) -> str:
    """A local file's digest, read in 1 MiB chunks (images are gigabytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
