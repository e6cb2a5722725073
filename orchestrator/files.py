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
}


def os_reason(exc: OSError) -> str:
    """A short, lower-case reason for a failed open or read."""
    return _REASONS.get(exc.errno or 0) or (exc.strerror or str(exc)).lower()


def read_limited(path: Path, limit: int, what: str, error: type[HerdError] = InvalidInput) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them, else ``error``
    with a one-line message starting with ``what`` (e.g. ``"--user-data x.yaml"``)."""
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise error(f"{what}: {os_reason(exc)}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise error(f"{what}: is a directory")
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{what}: not a regular file")
        if info.st_size > limit:
            raise error(f"{what}: {info.st_size} bytes; the limit is {limit} bytes")
        chunks: list[bytes] = []
        left = limit + 1  # one more than allowed tells a file that grew past the limit
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise error(f"{what}: {os_reason(exc)}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise error(f"{what}: more than {limit} bytes; the limit is {limit} bytes")
    return data
