"""`herd network list`: the networks servers attach to, and how full their pools are."""

from __future__ import annotations

from typing import Annotated

import typer

from orchestrator.api import networks as networks_api
from orchestrator.cli.context import herd, run_async
from orchestrator.cli.output import out, print_json, table

networks = typer.Typer(help="Networks servers attach to (from the inventory).")
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


@networks.command("list")
def list_networks(as_json: JsonOpt = False) -> None:
    """List networks with their subnet and how many addresses are in use."""

    async def main() -> list[networks_api.NetworkView]:
        async with herd() as h:
            return await networks_api.list_networks(h.db)

    rows = [(v.network, v.ports, v.pool_size) for v in run_async(main())]
    if as_json:
        print_json(
            [
                {
                    "name": n.name,
                    "type": n.kind,
                    "source": n.source,
                    "subnet": n.cidr,
                    "gateway": n.gateway,
                    "pool": [n.pool_start, n.pool_end] if n.pool_start else None,
                    "default": n.is_default,
                    "ports": used,
                    "pool_size": size,
                }
                for n, used, size in rows
            ]
        )
        return
    out.print(
        table(
            None,
            ("name", "type", "attaches to", "subnet", "gateway", "pool", "ports", "default"),
            (
                (
                    n.name,
                    n.kind,
                    n.source or "-",
                    n.cidr or "-",
                    n.gateway or "-",
                    f"{n.pool_start}-{n.pool_end} ({size})" if n.pool_start else "-",
                    used,
                    "yes" if n.is_default else "",
                )
                for n, used, size in rows
            ),
        )
    )
