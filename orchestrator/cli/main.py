"""The `herd` entry point: sub-commands, and the one place errors become exit codes."""

from __future__ import annotations

import logging
import os
import sys

import typer

from orchestrator import __version__
from orchestrator.cli import catalog, groups, hosts, inventory, keypairs, lab, reconcile, servers
from orchestrator.cli.output import visible
from orchestrator.errors import HerdError, InvalidInput

app = typer.Typer(
    name="herd",
    help="Run a private fleet of KVM/libvirt hypervisors from one terminal.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(servers.app, name="server")
app.add_typer(hosts.app, name="host")
app.add_typer(groups.app, name="group")
app.add_typer(catalog.flavors, name="flavor")
app.add_typer(catalog.images, name="image")
app.add_typer(keypairs.app, name="keypair")
app.add_typer(keypairs.networks, name="network")
app.add_typer(inventory.app, name="inventory")
app.add_typer(lab.app, name="lab")
app.command("reconcile")(reconcile.reconcile)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"herd {__version__}")
        raise typer.Exit()


class _VisibleFormatter(logging.Formatter):
    """Log lines carry hosts' and agents' words too: control characters escaped."""

    def format(self, record: logging.LogRecord) -> str:
        return visible(super().format(record))


@app.callback()
def main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what herd does, on stderr."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True),
) -> None:
    """herd: a small, fast, trustworthy way to run KVM/libvirt hosts.

    State lives in SQLite (HERD_DATABASE_URL overrides, e.g. postgresql://...).
    """
    handler = logging.StreamHandler()
    handler.setFormatter(_VisibleFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, handlers=[handler])
    if not verbose:
        logging.getLogger("asyncssh").setLevel(logging.ERROR)


def _refuse_undecodable(args: list[str]) -> None:
    """An argument that is not UTF-8 reaches Python with surrogate escapes, which no
    name matches and neither the database nor the terminal can take: say so."""
    for arg in args:
        if any("\udc80" <= ch <= "\udcff" for ch in arg):
            raise InvalidInput(f"argument {visible(arg)} is not valid UTF-8")


def run() -> None:
    """Console-script entry: a HerdError is one line on stderr and its exit code; any
    other exception is a bug, reported as one line too (HERD_DEBUG=1 shows the trace)."""
    try:
        _refuse_undecodable(sys.argv[1:])
        app()
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
