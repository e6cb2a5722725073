"""`herd group ...`: server groups, placed together or apart by their policy."""

from __future__ import annotations

from typing import Annotated

import typer

from orchestrator.api import groups as groups_api
from orchestrator.cli import documents
from orchestrator.cli.context import herd, run_async
from orchestrator.cli.output import out, print_json, table
from orchestrator.scheduler.request import GROUP_POLICIES

app = typer.Typer(help="Server groups (affinity and anti-affinity).", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


@app.command()
def create(
    name: str,
    policy: Annotated[str, typer.Option(help=f"One of: {', '.join(GROUP_POLICIES)}.")],
    as_json: JsonOpt = False,
) -> None:
    """Create a group; boot into it with `herd server create --group NAME`."""

    async def main() -> groups_api.GroupView:
        async with herd() as h:
            await groups_api.create_group(h.db, name, policy)
            (view,) = await groups_api.list_groups(h.db, [name])
            return view

    view = run_async(main())
    if as_json:
        print_json(documents.group_dict(view))
    else:
        out.print(f"server group {name} created (policy {policy})")


@app.command("list")
def list_(as_json: JsonOpt = False) -> None:
    """Groups with their policy and where their members run."""

    async def main() -> list[groups_api.GroupView]:
        async with herd() as h:
            return await groups_api.list_groups(h.db)

    views = run_async(main())
    if as_json:
        print_json([documents.group_dict(v) for v in views])
        return
    out.print(
        table(
            None,
            ("name", "policy", "members"),
            (
                (
                    v.group.name,
                    v.group.policy,
                    ", ".join(f"{s}@{h or '-'}" for s, h in v.members) or "-",
                )
                for v in views
            ),
        )
    )


@app.command()
def delete(name: str, as_json: JsonOpt = False) -> None:
    """Delete an empty group (servers in it must be deleted first)."""

    async def main() -> None:
        async with herd() as h:
            await groups_api.delete_group(h.db, name)

    run_async(main())
    if as_json:
        print_json({"group": name, "deleted": True})
    else:
        out.print(f"server group {name} deleted")
