"""`herd reconcile`: the command cron runs. Quiet when all is well."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from orchestrator.cli.context import herd, run_async
from orchestrator.cli.output import err, out, print_json, table, text
from orchestrator.reconcile import metrics
from orchestrator.reconcile.lock import reconcile_lock
from orchestrator.reconcile.reconciler import Reconciler, RunReport

OUTCOME_STYLE = {"fixed": "green", "would fix": "yellow", "unfixed": "yellow", "failed": "red"}


def reconcile(
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Find drift and say what would be fixed; change nothing."),
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Print a summary even when all is well.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON document on stdout.")
    ] = False,
    prometheus_textfile: Annotated[
        Path | None,
        typer.Option(
            "--prometheus-textfile",
            help="Write metrics here for node_exporter's textfile collector (atomically).",
        ),
    ] = None,
) -> None:
    """Compare the DB with every host and repair drift by policy (config `reconcile:`).

    Exit codes: 0 nothing wrong, 1 drift found and fixed, 2 drift left unfixed or hosts
    unreachable, 3 another reconcile is running. Safe to run from cron every minute.
    """

    if prometheus_textfile is not None:  # a typo found before the run, not after it
        metrics.check_textfile(prometheus_textfile)

    async def main() -> RunReport:
        # The database first: a bad HERD_DATABASE_URL is its one-line error, then the lock.
        async with herd() as h, reconcile_lock(h.db.url):
            return await Reconciler(h.conductor, h.config.reconcile).run(dry_run=dry_run)

    report = run_async(main())
    if prometheus_textfile is not None:
        metrics.write_textfile(prometheus_textfile, metrics.render(report))
    if as_json:
        print_json(report.to_dict())
    elif report.findings or report.unreachable or report.warnings or verbose:
        _show(report, verbose)
    raise typer.Exit(report.exit_code)


def _show(report: RunReport, verbose: bool) -> None:
    if report.findings:
        out.print(
            table(
                "reconcile: dry run, nothing changed" if report.dry_run else "reconcile",
                ("kind", "host", "server", "detail", "policy", "outcome"),
                (
                    (
                        f.kind,
                        f.host,
                        f.server or (f.uuid or "")[:13],
                        Text.assemble(
                            text(f.detail), text(f" ({f.error})", "red") if f.error else ""
                        ),
                        f.policy,
                        text(f.outcome, OUTCOME_STYLE.get(f.outcome, "white")),
                    )
                    for f in report.findings
                ),
            )
        )
    for warning in report.warnings:
        err.print(f"warning: {warning}", markup=False, highlight=False)
    reached = len(report.surveys) - len(report.unreachable)
    summary = (
        f"{reached}/{len(report.surveys)} hosts answered, {len(report.findings)} finding(s), "
        f"{sum(f.outcome == 'fixed' for f in report.findings)} fixed, "
        f"in {report.duration:.2f}s"
    )
    if verbose or report.findings or report.unreachable or report.warnings:
        err.print(summary)
