"""The `herd` command tree, each resource's module imported only when its command runs.

`herd --help` needs every command's name and one line of help; `herd server list`
needs orchestrator.cli.servers and what it imports. Importing every command module up
front cost about two seconds of every invocation (sqlalchemy, asyncssh, jinja2, the
conductor...), so the root group lists ``COMMANDS`` from the table below and imports
a module only when click resolves that command, the way click's documentation
suggests for large CLIs ("lazily loading subcommands"). Each deferred command is
built by typer exactly as ``add_typer`` would build it; a unit test holds the help
lines here to the modules' own.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperGroup

from orchestrator.cli.main import _VisibleFormatter, version_line

if TYPE_CHECKING:
    from typer._click import Command, Context

# name -> (module, attribute, the help line `herd --help` shows). The attribute is a
# typer.Typer (a group) or a command function.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "reconcile": (
        "orchestrator.cli.reconcile",
        "reconcile",
        "Compare the DB with every host and repair drift by policy (config `reconcile:`).",
    ),
    "server": (
        "orchestrator.cli.servers",
        "app",
        "Create, inspect, power, rebuild and delete servers.",
    ),
    "volume": (
        "orchestrator.cli.volumes",
        "app",
        "Volumes: data disks on a host's storage, attached to servers.",
    ),
    "host": ("orchestrator.cli.hosts", "app", "Hypervisors: capacity, usage, contact and trust."),
    "group": ("orchestrator.cli.groups", "app", "Server groups (affinity and anti-affinity)."),
    "flavor": ("orchestrator.cli.catalog", "flavors", "Flavors: the sizes servers come in."),
    "image": ("orchestrator.cli.catalog", "images", "Images: what servers boot from."),
    "keypair": ("orchestrator.cli.keypairs", "app", "Key pairs: SSH public keys given to guests."),
    "network": (
        "orchestrator.cli.networks",
        "networks",
        "Networks servers attach to (from the inventory).",
    ),
    "inventory": (
        "orchestrator.cli.inventory",
        "app",
        "Hosts, flavors, images and networks from YAML files.",
    ),
    "db": (
        "orchestrator.cli.db",
        "app",
        "The database: its engine, schema and rows; copy it to PostgreSQL.",
    ),
    "lab": (
        "orchestrator.cli.lab",
        "app",
        "A lab of real hypervisors on this machine (root only): each host is a mount+UTS+"
        "network namespace with its own libvirtd, virtlogd and sshd on the lab's management "
        "network, and guests share a provider bridge.",
    ),
}

# Shared by the root and by the throwaway roots that build deferred commands, so a
# command built late is the one add_typer would have built.
_SETTINGS: dict[str, Any] = {"pretty_exceptions_enable": False, "add_completion": False}


class Deferred(TyperGroup):
    """A command not imported yet: its name and help line, enough for listings."""

    def __init__(self, name: str, module: str, attribute: str, help_line: str) -> None:
        super().__init__(name=name, help=help_line)
        self.module = module
        self.attribute = attribute

    def load(self) -> Command:
        """The real command, built by typer as ``add_typer``/``command`` would build it."""
        target = getattr(importlib.import_module(self.module), self.attribute)
        holder = typer.Typer(**_SETTINGS)
        holder.callback()(_no_options)  # a group, even if it holds one command
        if isinstance(target, typer.Typer):
            holder.add_typer(target, name=self.name)
        else:
            holder.command(self.name)(target)
        root = typer.main.get_command(holder)
        assert isinstance(root, TyperGroup) and self.name is not None
        return root.commands[self.name]


def _no_options() -> None:
    """Placeholder callback of a throwaway root."""


class LazyGroup(TyperGroup):
    """The root group: lists ``COMMANDS`` as they are, imports one when it is resolved."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        for name, (module, attribute, help_line) in COMMANDS.items():
            self.commands.setdefault(name, Deferred(name, module, attribute, help_line))

    def resolve_command(
        self, ctx: Context, args: list[str]
    ) -> tuple[str | None, Command | None, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        if isinstance(command, Deferred):
            command = self.commands[command.name or ""] = command.load()
        return name, command, rest


def _version(value: bool) -> None:
    if value:
        typer.echo(version_line())
        raise typer.Exit()


app = typer.Typer(
    cls=LazyGroup,
    name="herd",
    help="Run a private fleet of KVM/libvirt hypervisors from one terminal.",
    no_args_is_help=True,
    **_SETTINGS,
)


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
