"""The `herd` entry point: sub-commands, and the one place errors become exit codes.

This module is what the console script imports before anything runs, so it imports
only the standard library, ``orchestrator.errors`` and ``orchestrator.cli.escape``:
`herd --version` answers from here, and the typer command tree
(``orchestrator.cli.app``, which imports each command's module only when it runs) is
loaded for everything else.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Any

from orchestrator import __version__
from orchestrator.cli.escape import visible
from orchestrator.errors import HerdError, InvalidInput

if TYPE_CHECKING:
    import typer


def version_line() -> str:
    return f"herd {__version__}"


def __getattr__(name: str) -> Any:
    """``main.app``, the typer application, built on first use (PEP 562)."""
    if name == "app":
        from orchestrator.cli.app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _VisibleFormatter(logging.Formatter):
    """Log lines carry hosts' and agents' words too: control characters escaped."""

    def format(self, record: logging.LogRecord) -> str:
        return visible(super().format(record))


def _refuse_undecodable(args: list[str]) -> None:
    """An argument that is not UTF-8 reaches Python with surrogate escapes, which no
    name matches and neither the database nor the terminal can take: say so."""
    for arg in args:
        if any("\udc80" <= ch <= "\udcff" for ch in arg):
            raise InvalidInput(f"argument {visible(arg)} is not valid UTF-8")


def _application() -> typer.Typer:
    from orchestrator.cli.app import app

    return app


def _help(args: list[str]) -> None:
    """`herd --help`: the bytes typer wrote last time in the same situation, or typer's
    rendering now, kept for next time (see ``orchestrator.cli.helpcache``)."""
    from orchestrator.cli import helpcache

    text = helpcache.cached(args)
    if text is not None:
        sys.stdout.write(text)
        return
    recorder = helpcache.Recorder(sys.stdout)
    sys.stdout = recorder  # type: ignore[assignment]  # rich writes to sys.stdout at print time
    try:
        _application()()
    except SystemExit as exc:
        if exc.code:
            raise
    finally:
        sys.stdout = recorder.stream
    helpcache.store(args, "".join(recorder.written))


def run() -> None:
    """Console-script entry: a HerdError is one line on stderr and its exit code; any
    other exception is a bug, reported as one line too (HERD_DEBUG=1 shows the trace)."""
    try:
        args = sys.argv[1:]
        _refuse_undecodable(args)
        if args == ["--version"]:  # what typer's eager --version prints, without typer
            sys.stdout.write(version_line() + "\n")
            return
        if args == ["--help"]:
            _help(args)
            return
        if args[:2] == ["server", "list"]:
            from orchestrator.cli import server_listing

            if server_listing.answer(args[2:]):
                return
        _application()()
    except HerdError as exc:
        for line in str(exc).splitlines() or [type(exc).__name__]:
            sys.stderr.write(f"herd: error: {visible(line)}\n")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("herd: interrupted\n")
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("HERD_DEBUG"):
            raise
        why = visible(f"{type(exc).__name__}: {exc}".splitlines()[0])
        sys.stderr.write(f"herd: internal error: {why} (HERD_DEBUG=1 shows the traceback)\n")
        sys.exit(70)
