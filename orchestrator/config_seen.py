"""Where herd's settings file is, and whether this exact file was already read and
accepted by these very rules: for a command that does not use the settings (the quick
`server list`) but must refuse a bad file as every other command does, without loading
the settings' models (pydantic, the scheduler's filters, the DB models: a third of a
second).

``load_config`` remembers each file it accepts by the sha256 of its path and bytes,
and writes down which code judged it: every file of the herd modules then loaded and
of the libraries that parse and validate (yaml, pydantic), with its size and mtime. A
file never accepted, changed since, or judged by code that has changed since (herd
upgraded, a checkout moved, pydantic updated: the rules may be stricter now) sends the
command down the normal path, which reads it, says what is wrong or accepts it anew.
Standard library only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from orchestrator.local_files import make_private_dirs, xdg_dir

# Packages whose code decides whether a settings file is good. herd's own modules are
# all listed (whichever were loaded when the file was judged); the libraries by their
# top module, which an upgrade rewrites.
JUDGES = ("orchestrator",)
LIBRARIES = ("yaml", "pydantic", "pydantic_core")


def config_path() -> Path:
    explicit = os.environ.get("HERD_CONFIG")
    if explicit:
        return Path(explicit)
    return xdg_dir("XDG_CONFIG_HOME", Path.home() / ".config") / "herd" / "config.yaml"


def _mark(path: Path, content: bytes) -> Path:
    digest = hashlib.sha256(str(path.absolute()).encode() + b"\0" + content).hexdigest()
    return xdg_dir("XDG_CACHE_HOME", Path.home() / ".cache") / "herd" / "settings" / digest


def judging_code() -> list[Path]:
    """The source files of the code loaded now that may judge a settings file."""
    files = set()
    for name, module in list(sys.modules.items()):
        top = name.partition(".")[0]
        if top in JUDGES or name in LIBRARIES:
            file = getattr(module, "__file__", None)
            if file:
                files.add(Path(file))
    return sorted(files)


def _stamp(file: Path) -> str:
    """One line naming ``file`` as it is now (raises OSError if it is gone)."""
    status = file.stat()
    return f"{status.st_mtime_ns} {status.st_size} {file}"


def accepted(path: Path | None = None) -> bool:
    """True if there is no settings file (and none is required), or this one, as it is
    now, was accepted before by the code that would judge it now."""
    path = path or config_path()
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        return not os.environ.get("HERD_CONFIG")  # a named file that is missing is an error
    except OSError:
        return False
    try:
        stamps = _mark(path, content).read_text(encoding="utf-8").splitlines()
        if not stamps:
            return False
        for stamp in stamps:
            _mtime, _size, file = stamp.split(" ", 2)
            if _stamp(Path(file)) != stamp:
                return False
    except (OSError, ValueError):
        return False
    return True


def remember_accepted(path: Path, content: bytes, judges: Iterable[Path] | None = None) -> None:
    """Note that ``path`` with ``content`` was read and accepted by ``judges`` (the code
    loaded now, by default). Best effort: a cache that cannot be written costs only
    speed. Written whole or not at all, so a reader never trusts half a list."""
    mark = _mark(path, content)
    partial = mark.with_name(f".{mark.name}.{os.getpid()}")
    try:
        files = judging_code() if judges is None else judges
        stamps = "".join(_stamp(file) + "\n" for file in files)
        make_private_dirs(mark.parent)
        partial.write_text(stamps, encoding="utf-8")
        os.replace(partial, mark)
    except OSError:
        with contextlib.suppress(OSError):
            partial.unlink()
