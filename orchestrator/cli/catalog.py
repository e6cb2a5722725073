"""`herd flavor ...` and `herd image ...`: what can be booted, and the hosts' caches."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from orchestrator.api import flavors as flavors_api
from orchestrator.api import images as images_api
from orchestrator.cli.context import herd, run_async
from orchestrator.cli.output import err, out, print_json, table, text
from orchestrator.db.models import Flavor, Image
from orchestrator.errors import HostUnreachable, InvalidInput

flavors = typer.Typer(help="Flavors: the sizes servers come in.", no_args_is_help=True)
images = typer.Typer(help="Images: what servers boot from.", no_args_is_help=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


@flavors.command("list")
def list_flavors(as_json: JsonOpt = False) -> None:
    """List flavors."""

    async def main() -> list[Flavor]:
        async with herd() as h:
            return await flavors_api.list_flavors(h.db)

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

    async def main() -> list[Image]:
        async with herd() as h:
            return await images_api.list_images(h.db)

    rows = run_async(main())
    if as_json:
        print_json([_image_dict(i) for i in rows])
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


def _image_dict(i: Image) -> dict[str, Any]:
    return i.model_dump(
        include={
            "name",
            "source",
            "format",
            "sha256",
            "size",
            "min_ram_mb",
            "min_disk_gb",
            "properties",
            "managed_by",
        }
    )


def _properties(values: list[str]) -> dict[str, str]:
    parsed = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise InvalidInput(f"--property {value!r}: expected KEY=VALUE")
        parsed[key] = val
    return parsed


@images.command("create")
def create_image(
    name: Annotated[str, typer.Argument(help="Image name.")],
    file: Annotated[
        Path | None, typer.Option(help="A file on this machine, pushed to hosts over SSH.")
    ] = None,
    url: Annotated[str | None, typer.Option(help="An http(s) URL each host downloads.")] = None,
    host_path: Annotated[
        str | None, typer.Option("--host-path", help="A file already at this path on every host.")
    ] = None,
    disk_format: Annotated[
        str, typer.Option("--format", help="qcow2 | raw | aki (kernel) | ari (ramdisk).")
    ] = "qcow2",
    sha256: Annotated[
        str | None, typer.Option(help="Expected SHA-256; hosts refuse anything else.")
    ] = None,
    min_ram: Annotated[int, typer.Option("--min-ram", help="MiB a flavor must have.")] = 0,
    min_disk: Annotated[int, typer.Option("--min-disk", help="GiB a flavor must have.")] = 0,
    prop: Annotated[
        list[str] | None,
        typer.Option("--property", help="KEY=VALUE, repeatable (e.g. kernel_id=NAME)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Register an image outside the inventory (like `openstack image create`)."""
    sources = [s for s in (file and str(file.expanduser().absolute()), url, host_path) if s]
    if len(sources) != 1:
        raise InvalidInput("give exactly one of --file, --url, --host-path")
    source = sources[0]
    if host_path:
        source = "host://" + host_path
    values = {
        "name": name,
        "source": source,
        "format": disk_format,
        "sha256": sha256,
        "min_ram_mb": min_ram,
        "min_disk_gb": min_disk,
        "properties": _properties(prop or []),
    }

    async def main() -> Image:
        async with herd() as h:
            return await images_api.create_image(h.db, values)

    _show_image(run_async(main()), as_json)


def _show_image(image: Image, as_json: bool) -> None:
    data = _image_dict(image)
    if as_json:
        print_json(data)
        return
    rows = []
    for key, value in data.items():
        if key == "properties":
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        rows.append((key, None if value == "" else value))
    out.print(table(None, ("field", "value"), rows))


@images.command("show")
def show_image(
    name: Annotated[str, typer.Argument(help="Image name.")], as_json: JsonOpt = False
) -> None:
    """Show one image: its source, checksum, limits and properties."""

    async def main() -> Image:
        async with herd() as h:
            return await images_api.get_image(h.db, name)

    _show_image(run_async(main()), as_json)


@images.command("delete")
def delete_image(
    name: Annotated[str, typer.Argument(help="Image name.")], as_json: JsonOpt = False
) -> None:
    """Delete an image made with `herd image create` that no server uses."""

    async def main() -> None:
        async with herd() as h:
            await images_api.delete_image(h.db, name)

    run_async(main())
    if as_json:
        print_json({"image": name, "deleted": True})
    else:
        err.print(f"image {name} deleted (hosts' caches: `herd image cache prune`)")


cache = typer.Typer(help="The image cache on each host.", no_args_is_help=True)
images.add_typer(cache, name="cache")
HostOpt = Annotated[list[str] | None, typer.Option("--host", help="Only this host; repeatable.")]


def _cache_table(title: str | None, entries: list[images_api.CacheEntry]) -> Any:
    now = time.time()
    return table(
        title,
        ("host", "image", "sha256", "size MiB", "used by", "last used"),
        (
            (
                e.host,
                ", ".join(e.images) or text("(no longer in herd)", "dim"),
                e.sha256[:12],
                f"{e.size / 2**20:.1f}",
                f"{len(e.instances)} server(s)" if e.instances else text("unused", "yellow"),
                f"{(now - e.last_used) / 60:.0f} min ago",
            )
            for e in entries
        ),
    )


def _unreachable(survey: images_api.CacheSurvey) -> None:
    for warning in survey.warnings:
        err.print(f"warning: {warning}", markup=False, highlight=False)
    for host, why in sorted(survey.unreachable.items()):
        err.print(text(f"host {host}: {why}", "red"))
    if survey.unreachable:
        raise HostUnreachable(f"{len(survey.unreachable)} host(s) did not answer")


@cache.command("list")
def cache_list(host: HostOpt = None, as_json: JsonOpt = False) -> None:
    """List cached images per host, with the servers using each."""

    async def main() -> images_api.CacheSurvey:
        async with herd() as h:
            return await images_api.survey_caches(h.db, h.conductor, host)

    survey = run_async(main())
    if as_json:
        print_json(
            {
                "images": [e.to_dict() for e in survey.entries],
                "unreachable": survey.unreachable,
                "warnings": survey.warnings,
            }
        )
    else:
        out.print(_cache_table(None, survey.entries))
    _unreachable(survey)


@cache.command("prune")
def cache_prune(
    host: HostOpt = None,
    older_than: Annotated[
        float, typer.Option("--older-than", help="Only images unused for this many hours.")
    ] = 0.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show what would go.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove cached images that no server on that host uses."""
    if not math.isfinite(older_than) or older_than < 0:  # nan would prune nothing, silently
        raise InvalidInput(f"--older-than {older_than:g}: must be a finite number of hours")

    async def main() -> tuple[list[images_api.CacheEntry], images_api.CacheSurvey]:
        async with herd() as h:
            return await images_api.prune_caches(
                h.db, h.conductor, host, older_than * 3600, dry_run
            )

    removed, survey = run_async(main())
    if as_json:
        print_json(
            {
                "removed" if not dry_run else "would_remove": [e.to_dict() for e in removed],
                "unreachable": survey.unreachable,
            }
        )
    elif removed:
        out.print(_cache_table("would remove" if dry_run else "removed", removed))
    else:
        err.print("nothing to prune")
    _unreachable(survey)
