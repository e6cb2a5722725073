"""Rendering: tables for people, one JSON document for machines.

JSON goes to stdout alone, so `herd ... --json | jq` always works; progress and logs
go to stderr.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table


def _console(stream: Any) -> Console:
    """Rich's 80 columns for a pipe would cut UUIDs and addresses in logs and cron
    mail; a terminal keeps its own width, COLUMNS still wins when set."""
    wide = None if stream.isatty() or "COLUMNS" in os.environ else 200
    return Console(file=stream, width=wide, highlight=False)


out = _console(sys.stdout)
err = _console(sys.stderr)

STATE_STYLES = {
    "active": "green",
    "running": "green",
    "up": "green",
    "succeeded": "green",
    "building": "yellow",
    "spawning": "yellow",
    "scheduling": "yellow",
    "deleting": "yellow",
    "resized": "cyan",
    "error": "red",
    "down": "red",
    "failed": "red",
    "deleted": "dim",
    "disabled": "dim",
}


def styled(value: str | None) -> str:
    if value is None:
        return "-"
    style = STATE_STYLES.get(value.split(" ")[0].split(":")[0])
    return f"[{style}]{value}[/{style}]" if style else value


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=_default, sort_keys=False) + "\n")


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__}")


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    grid = Table(title=title, title_justify="left", header_style="bold")
    for column in columns:
        grid.add_column(column)
    for row in rows:
        grid.add_row(*("-" if cell is None else str(cell) for cell in row))
    return grid


def age(moment: datetime | None) -> str:
    if moment is None:
        return "never"
    from datetime import UTC

    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    seconds = int((datetime.now(UTC) - moment).total_seconds())
    if seconds < 90:
        return f"{seconds}s ago"
    if seconds < 5400:
        return f"{seconds // 60}m ago"
    if seconds < 172800:
        return f"{seconds // 3600}h ago"
    return f"{seconds // 86400}d ago"
