"""Rendering: tables for people, one JSON document for machines.

JSON goes to stdout alone, so `herd ... --json | jq` always works; progress and logs
go to stderr.

Everything herd prints comes, somewhere, from a user or a host: names, labels, extra
specs, image properties, fault messages, agent errors, guest output. Rich would read
``[/x]`` in any of them as markup (and fail, or style, or link), ``:smile:`` as an
emoji, and pass an escape sequence to the terminal. So herd's consoles render every
string as the text it is, with control characters shown escaped (``visible``); colour
comes only from ``Text`` objects given a style here (``text``, ``styled``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from rich.console import Console, ConsoleRenderable, RichCast
from rich.style import Style
from rich.table import Table
from rich.text import Text

from orchestrator.cli.escape import visible
from orchestrator.cli.plaintable import PlainTable
from orchestrator.cli.states import state_style


class _TextConsole(Console):
    """A console for which every string is data: no markup, no emoji codes, control
    characters escaped. Rich calls ``render_str`` for each ``str`` it prints, in
    ``print`` and in table cells and titles alike, so this one place covers them."""

    def render_str(self, text: str, **kwargs: Any) -> Text:
        kwargs.update(markup=False, emoji=False)
        return super().render_str(visible(text), **kwargs)


def make_console(stream: Any, *, terminal: bool | None = None) -> Console:
    """A console on ``stream`` (``terminal`` forces rich's idea of it, for tests).

    Rich's 80 columns for a pipe would cut UUIDs and addresses in logs and cron
    mail; a terminal keeps its own width, COLUMNS still wins when set."""
    wide = None if stream.isatty() or "COLUMNS" in os.environ else 200
    return _TextConsole(
        file=stream,
        width=wide,
        force_terminal=terminal,
        highlight=False,
        markup=False,
        emoji=False,
    )


out = make_console(sys.stdout)
err = make_console(sys.stderr)


def text(value: object, style: str | Style = "") -> Text:
    """``value`` as plain text (never markup), optionally in a style."""
    return Text(visible(str(value)), style=style)


def styled(value: str | None) -> Text:
    """A state (``active``, ``down: no answer``...) in its colour."""
    if value is None:
        return Text("-")
    return text(value, state_style(value))


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=_default, sort_keys=False) + "\n")


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__}")


def cell(value: Any) -> ConsoleRenderable | RichCast:
    """A table cell: a renderable as it is, ``None`` as ``-``, anything else as text."""
    if value is None or isinstance(value, str | int | float):
        return text("-" if value is None else value)  # before the costly protocol check
    if isinstance(value, Text | ConsoleRenderable | RichCast):
        return value
    return text("-" if value is None else value)


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    grid = PlainTable(
        title=None if title is None else text(title), title_justify="left", header_style="bold"
    )
    for column in columns:
        grid.add_column(column)
    for row in rows:
        grid.add_row(*(cell(value) for value in row))
    return grid
