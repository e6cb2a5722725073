"""`herd --help` as typer last rendered it, for the same terminal and the same herd.

Rendering the top-level help means importing typer and rich's table, panel and
markdown machinery: about a quarter of a second on a small machine, three times what
Python needs to start. The text depends only on herd's code and on what rich reads
to lay it out (terminal or not, its size, the colour variables, the encoding), so the
first `herd --help` records what typer wrote and later ones with the same key print
those bytes. The key covers every input of the rendering that can change between
runs; anything that cannot be read or written here just renders afresh.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import IO, Any

from orchestrator import __version__

# Variables rich or typer read when deciding width, colour and glyphs.
_ENV_MARKERS = ("COLUMNS", "LINES", "TERM", "COLOR", "TTY", "TYPER", "JUPYTER", "RICH", "LANG")
_ENV_PREFIXES = ("LC_", "PYTHONIOENCODING")


def _stamp(path: str | None) -> str:
    if path is None:
        return "-"
    st = os.stat(path)
    return f"{path}:{st.st_mtime_ns}:{st.st_size}"


def _sizes() -> list[str]:
    sizes = []
    for fd in (0, 1, 2):
        try:
            sizes.append(f"{fd}:{os.isatty(fd)}:{tuple(os.get_terminal_size(fd))}")
        except OSError:
            sizes.append(f"{fd}:{os.isatty(fd)}:-")
    return sizes


def cache_key(args: list[str]) -> str:
    """Everything the rendered help depends on, hashed."""
    here = Path(__file__).parent
    parts = [
        __version__,
        sys.version,
        sys.argv[0],  # click names the program after it
        *args,
        *(_stamp(str(here / name)) for name in ("app.py", "main.py", "helpcache.py")),
        *(_stamp(_origin(name)) for name in ("typer", "rich")),
        *_sizes(),
        f"encoding={getattr(sys.stdout, 'encoding', None)}",
        *sorted(
            f"{k}={v}"
            for k, v in os.environ.items()
            if any(m in k for m in _ENV_MARKERS) or k.startswith(_ENV_PREFIXES)
        ),
    ]
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogateescape")).hexdigest()


def _origin(name: str) -> str | None:
    spec = importlib.util.find_spec(name)
    return spec.origin if spec else None


def _cache_file(key: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "herd" / "help" / key


def cached(args: list[str]) -> str | None:
    """The help recorded for ``args`` in this situation, if any."""
    try:
        return _cache_file(cache_key(args)).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, RuntimeError):
        return None


class Recorder:
    """stdout as it is, keeping a copy of what is written to it."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.written: list[str] = []

    def write(self, text: str) -> int:
        count = self.stream.write(text)  # first: click probes with bytes, which raise
        self.written.append(text)
        return count

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def store(args: list[str], text: str) -> None:
    """Keep ``text`` for the next identical `herd --help`; a failure only costs speed."""
    try:
        path = _cache_file(cache_key(args))
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, path)
    except (OSError, RuntimeError):
        pass
