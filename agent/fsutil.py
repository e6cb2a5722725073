"""Small filesystem helpers: directories QEMU can traverse, crash-safe writes, flock.

Everything the agent persists is written to a temporary name and renamed into place,
so a crash (or a reboot) leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional

from agent.errors import Busy

DIR_MODE = 0o755  # libvirt-qemu must traverse state_dir to reach images and disks
FILE_MODE = 0o644


def guest_file_mode() -> int:
    """The mode of the files libvirt hands to a guest's QEMU (cached images, disks,
    seeds, kernel copies): private to the agent's user.

    libvirt's DAC driver chowns them to the QEMU user (Debian: libvirt-qemu:kvm) while
    a guest uses them and gives them back when it stops, keeping the mode. A root agent
    reads them either way (0600). A non-root agent must still read a cached base image
    a running guest holds (to make the next guest's overlay on it, to re-inspect it),
    so its files are 0640: the group bits then belong to group kvm, which the agent's
    user is a member of on a prepared host (`herd host check` says so when it is not).
    """
    return 0o600 if os.geteuid() == 0 else 0o640


def ensure_dir(path: Path, mode: int = DIR_MODE) -> Path:
    """Create ``path`` and its missing parents with ``mode``, whatever the umask says.

    Only the directories made here get ``mode``: one that exists is someone's choice
    (``/tmp``'s sticky bit, an operator's 0750), and forcing 0755 on it once stripped
    /tmp's sticky bit. Raises ``OSError`` when a component exists and is not a directory.
    """
    missing = []
    current = path
    while not current.is_dir() and current != current.parent:
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            if directory.is_dir():
                continue  # another request or job made it first: it set the mode
            raise
        os.chmod(directory, mode)  # mkdir's mode went through the umask
    return path


def tmp_name(path: Path) -> Path:
    """A sibling temporary name: same filesystem, so the final rename is atomic.

    Unique per process and thread, because two request threads may rewrite one file.
    """
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")


def atomic_write_bytes(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    tmp = tmp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any, mode: int = FILE_MODE) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode(), mode)


def read_json(path: Path) -> Optional[Any]:
    """The parsed file, or None when it does not exist. A file nested too deeply for
    the parser is a ValueError like any other damaged one, so callers that skip and
    report damaged files (journals, images.json) need no second rule."""
    try:
        with open(path, "rb") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None
    except RecursionError:
        raise ValueError("nested too deeply to be read") from None


@contextlib.contextmanager
def flocked(path: Path, timeout: float, what: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` for the block, or raise ``Busy``.

    flock (not a pid file) because the kernel drops it when the holder dies, so a
    killed job never leaves a stale lock behind.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise Busy(f"{what} is locked by another job (waited {timeout:g} s)") from exc
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)
