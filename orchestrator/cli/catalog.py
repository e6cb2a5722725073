"""`herd flavor list` and `herd image list`: what can be booted."""

from __future__ import annotations

from typing import Annotated

import typer

from orchestrator import api
from orchestrator.cli.context import herd, run_async
from orchestrator.cli.output import out, print_json, table

flavors = typer.Typer(help="Flavors: the sizes servers come in.", no_args_is_help=True)
images = typer.Typer(help="Images: what servers boot from.", no_args_is_help=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


@flavors.command("list")
def list_flavors(as_json: JsonOpt = False) -> None:
    """List flavors."""

    async def main() -> list[api.Flavor]:
        async with herd() as h:
            return await api.list_flavors(h.db)

    rows = run_async(main())
    if as_json:
        print_json(
            [
                f.model_dump(include={"name", "vcpus", "ram_mb", "disk_gb", "extra_specs"})
                for f in rows
            ]
        )
        return
    out.print(
        table(
            None,
            ("name", "vcpus", "ram MiB", "disk GiB", "extra specs"),
            (
                (
                    f.name,
                    f.vcpus,
                    f.ram_mb,
                    f.disk_gb,
                    ", ".join(f"{k}={v}" for k, v in f.extra_specs.items()),
                )
                for f in rows
            ),
        )
    )


@images.command("list")
def list_images(as_json: JsonOpt = False) -> None:
    """List images."""

    async def main() -> list[api.Image]:
        async with herd() as h:
            return await api.list_images(h.db)

    rows = run_async(main())
    if as_json:
        print_json(
            [
                i.model_dump(
                    include={
                        "name",
                        "source",
                        "format",
                        "sha256",
                        "size",
                        "min_ram_mb",
                        "min_disk_gb",
                        "properties",
                    }
                )
                for i in rows
            ]
        )
        return
    out.print(
        table(
            None,
            ("name", "format", "size", "sha256", "source", "properties"),
            (
                (
                    i.name,
                    i.format,
                    i.size,
                    (i.sha256 or "")[:12],
                    i.source,
                    ", ".join(f"{k}={v}" for k, v in i.properties.items()),
                )
                for i in rows
            ),
        )
    )
