"""`herd inventory validate|apply FILE...`: herd YAML or Ansible inventories in, DB to match."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from orchestrator.cli.context import herd, run_async
from orchestrator.cli.output import err, out, print_json, table, text
from orchestrator.inventory.apply import Change, apply_inventory
from orchestrator.inventory.loader import load_inventory

app = typer.Typer(help="Hosts, flavors, images and networks from YAML files.", no_args_is_help=True)
Files = Annotated[
    list[Path],
    typer.Argument(
        help="Inventory files, merged: herd's YAML, or Ansible inventories (INI or YAML) "
        "giving hosts."
    ),
]
GroupOpt = Annotated[
    str | None,
    typer.Option(
        "--group",
        help="Take only this Ansible group's hosts (and its child groups'). Default: all.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]

VERB_STYLE = {"create": "green", "update": "yellow", "remove": "red", "unchanged": "dim"}


def _show(changes: list[Change], as_json: bool, dry_run: bool) -> None:
    if as_json:
        print_json([c.__dict__ for c in changes])
        return
    shown = [c for c in changes if c.verb != "unchanged"]
    if not shown:
        err.print("inventory: the database already matches")
        return
    verb = "would" if dry_run else "did"
    out.print(
        table(
            f"Inventory changes ({verb} apply)",
            ("kind", "name", "change", "fields"),
            (
                (c.kind, c.name, text(c.verb, VERB_STYLE[c.verb]), ", ".join(c.fields))
                for c in shown
            ),
        )
    )


@app.command()
def validate(files: Files, group: GroupOpt = None, as_json: JsonOpt = False) -> None:
    """Check the files (and what applying them would change) without writing."""
    inventory = load_inventory(*files, group=group)

    async def main() -> list[Change]:
        async with herd() as h:
            return await apply_inventory(h.db, inventory, dry_run=True)

    _show(run_async(main()), as_json, dry_run=True)
    if not as_json:
        err.print(
            f"inventory OK: {len(inventory.hosts)} hosts, {len(inventory.flavors)} flavors, "
            f"{len(inventory.images)} images, {len(inventory.networks)} networks"
        )


@app.command()
def apply(files: Files, group: GroupOpt = None, as_json: JsonOpt = False) -> None:
    """Make the database match the files: create, update and remove hosts, flavors
    and images (a host that still has servers is never removed)."""
    inventory = load_inventory(*files, group=group)

    async def main() -> list[Change]:
        async with herd() as h:
            return await apply_inventory(h.db, inventory)

    _show(run_async(main()), as_json, dry_run=False)
