"""`herd db ...`: which database herd uses and what it holds, and the move to another.

The logic is in orchestrator/db/copy.py; this module parses, shows progress on
stderr and prints. Neither command goes through ``herd()``: that would upgrade the
source, and `db status` is for looking at a database before anything touches it.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from orchestrator.cli.context import run_async
from orchestrator.cli.output import err, out, print_json, table
from orchestrator.db import copy as db_copy
from orchestrator.db.connection import database_url

app = typer.Typer(
    help="The database: its engine, schema and rows; copy it to PostgreSQL.",
    no_args_is_help=True,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


@app.command()
def status(as_json: JsonOpt = False) -> None:
    """Engine, URL (password masked), schema revision against this herd's, rows per table."""
    report = run_async(db_copy.database_status(database_url()))
    if as_json:
        print_json(report.as_dict())
        return
    out.print(f"engine:   {report.engine}")
    out.print(f"url:      {report.url}")
    out.print(f"revision: {report.revision or '-'} (head {report.head}: {report.state})")
    out.print(table(None, ("table", "rows"), sorted(report.tables.items())))


class TableProgress:
    """One bar per table while it is copied, on a terminal; one line per table
    otherwise (cron, CI logs)."""

    def __init__(self) -> None:
        self.bars: Progress | None = None
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> TableProgress:
        if err.is_terminal:
            self.bars = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                console=err,
            )
            self.bars.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bars is not None:
            self.bars.__exit__(None, None, None)

    def __call__(self, name: str, copied: int, total: int) -> None:
        if self.bars is None:
            if copied == total:
                err.print(f"{name}: {copied} rows copied")
            return
        if name not in self.tasks:
            self.tasks[name] = self.bars.add_task(name, total=total)
        self.bars.update(self.tasks[name], completed=copied)


@app.command()
def copy(
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="The target's URL (postgresql://user:pw@host/db, or sqlite:////path): "
            "an empty database; its schema is made here.",
        ),
    ],
    as_json: JsonOpt = False,
) -> None:
    """Copy the whole state of the current database (HERD_DATABASE_URL or the default
    SQLite file) into an empty one: in one transaction, counts checked, source untouched."""
    source = database_url()
    with TableProgress() as progress:
        result = run_async(db_copy.copy_database(source, to, progress))
    if as_json:
        print_json(result.as_dict())
        return
    rows = sum(result.tables.values())
    out.print(
        f"copied {rows} rows in {len(result.tables)} tables from {result.source} "
        f"to {result.target} (schema revision {result.revision}); "
        f"set HERD_DATABASE_URL to the target to use it"
    )
