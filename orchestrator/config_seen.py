"""Where herd's settings file is, and whether this exact file was already read and
accepted: for a command that does not use the settings (the quick `server list`) but
must refuse a bad file as every other command does, without loading the settings'
models (pydantic, the scheduler's filters, the DB models: a third of a second).

``load_config`` remembers each file it accepts by the sha256 of its bytes; a file
never accepted, or changed since, sends the command down the normal path, which reads
it and says what is wrong. Standard library only.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from orchestrator.local_files import make_private_dirs, xdg_dir


def config_path() -> Path:
    explicit = os.environ.get("HERD_CONFIG")
    if explicit:
        return Path(explicit)
    return xdg_dir("XDG_CONFIG_HOME", Path.home() / ".config") / "herd" / "config.yaml"


def _mark(path: Path, content: bytes) -> Path:
    digest = hashlib.sha256(str(path.absolute()).encode() + b"\0" + content).hexdigest()
    return xdg_dir("XDG_CACHE_HOME", Path.home() / ".cache") / "herd" / "settings" / digest


def accepted(path: Path | None = None) -> bool:
    """True if there is no settings file (and none is required), or this one, as it is
    now, was accepted before."""
    path = path or config_path()
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        return not os.environ.get("HERD_CONFIG")  # a named file that is missing is an error
    except OSError:
        return False
    return _mark(path, content).exists()


def remember_accepted(path: Path, content: bytes) -> None:
    """Note that ``path`` with ``content`` was read and accepted (best effort: a cache
    that cannot be written costs only speed)."""
    mark = _mark(path, content)
    try:
        make_private_dirs(mark.parent)
        mark.touch()
    except OSError:
        pass
