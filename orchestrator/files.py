"""Reading an operator's file (user data, a public key, an SSH key) with a size bound.

``Path.read_bytes()`` on ``/dev/zero`` reads until memory runs out, and on a FIFO it
blocks forever. Every file herd reads whole goes through ``read_limited``: it opens
without blocking, refuses anything but a regular file, and reads at most
``limit + 1`` bytes, so an oversized file is refused without being read.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from orchestrator.errors import HerdError, InvalidInput

_REASONS = {
    errno.ENOENT: "no such file",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "no such file (a parent is not a directory)",
    errno.ELOOP: "too many levels of symbolic links",
    errno.EISDIR: "is a directory",
    errno.EINVAL: "not a regular file",
}


def os_reason(exc: OSError) -> str:
    """A short, lower-case reason for a failed open or read."""
    return _REASONS.get(exc.errno or 0) or (exc.strerror or str(exc)).lower()


class FileTooLarge(Exception):
    """More bytes than the caller's limit (``size`` is None when the file grew while read)."""

    def __init__(self, limit: int, size: int | None) -> None:
        super().__init__(f"larger than {limit} bytes")
        self.limit = limit
        self.size = size


def read_bounded(path: Path, limit: int) -> bytes:
    """At most ``limit`` bytes of the regular file ``path``. Raises ``OSError`` as ``open``
    does (``FileNotFoundError``, ``IsADirectoryError``; ``EINVAL`` for a device or a FIFO)
    and ``FileTooLarge``, having read no more than ``limit + 1`` bytes."""
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        if info.st_size > limit:
            raise FileTooLarge(limit, info.st_size)
        chunks: list[bytes] = []
        left = limit + 1  # one more than allowed tells a file that grew past the limit
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise FileTooLarge(limit, None)
    return data


def read_limited(path: Path, limit: int, what: str, error: type[HerdError] = InvalidInput) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them, else ``error``
    with a one-line message starting with ``what`` (e.g. ``"--user-data x.yaml"``)."""
    try:
        return read_bounded(path, limit)
    except FileTooLarge as exc:
        size = f"{exc.size} bytes" if exc.size is not None else f"more than {limit} bytes"
        raise error(f"{what}: {size}; the limit is {limit} bytes") from None
    except OSError as exc:
        raise error(f"{what}: {os_reason(exc)}") from None
