"""`herd volume ...`: data disks on a host's own storage, which outlive their servers
(attach them with `herd server add volume`)."""

from __future__ import annotations

from typing import Annotated

import typer

from orchestrator.api import volumes as volumes_api
from orchestrator.cli.context import herd, run_async
from orchestrator.cli.output import out, print_json, table
from orchestrator.cli.servers import SomeFailed

app = typer.Typer(
    help="Volumes: data disks on a host's storage, attached to servers.", no_args_is_help=True
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


def _show(views: list[volumes_api.VolumeView], as_json: bool) -> None:
    if as_json:
        print_json([v.to_dict() for v in views])
        return
    out.print(
        table(
            None,
            ("name", "status", "size", "host", "server", "device", "uuid"),
            (
                (
                    v.volume.name,
                    v.volume.status,
                    f"{v.volume.size_gb} GB",
                    v.host if v.host_status == "up" else f"{v.host} ({v.host_status})",
                    v.server or "-",
                    v.volume.device or "-",
                    v.volume.uuid,
                )
                for v in views
            ),
        )
    )


@app.command()
def create(
    name: str,
    size: Annotated[int, typer.Option("--size", help="Size in GB.")],
    host: Annotated[
        str | None, typer.Option(help="On this host (default: the scheduler's).")
    ] = None,
    availability_zone: Annotated[
        str | None, typer.Option("--availability-zone", help="On a host of this zone.")
    ] = None,
    image: Annotated[
        str | None, typer.Option(help="Holding this image's disk (qcow2 or raw).")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="qcow2 or raw.")] = "qcow2",
    as_json: JsonOpt = False,
) -> None:
    """Create a volume; its space counts against its host's disk like a server's."""

    async def main() -> volumes_api.VolumeView:
        from orchestrator.conductor.tasks.volumes import VolumeCreate

        async with herd() as h:
            volume = await VolumeCreate(
                h.conductor, name, size, host=host, availability_zone=availability_zone,
                image=image, fmt=fmt,
            ).execute()  # fmt: skip
            return await volumes_api.find_volume(h.db, volume.uuid)

    view = run_async(main())
    _show([view], as_json)
    if view.volume.error:
        raise SomeFailed(f"volume {name}: {view.volume.error}")


@app.command("list")
def list_(as_json: JsonOpt = False) -> None:
    """Volumes with their state, host and the server they are attached to."""

    async def main() -> list[volumes_api.VolumeView]:
        async with herd() as h:
            return await volumes_api.list_volumes(h.db)

    _show(run_async(main()), as_json)


@app.command()
def show(
    name: Annotated[str, typer.Argument(help="Name or UUID.")], as_json: JsonOpt = False
) -> None:
    """One volume, whole."""

    async def main() -> volumes_api.VolumeView:
        async with herd() as h:
            return await volumes_api.find_volume(h.db, name)

    view = run_async(main())
    if as_json:
        print_json(view.to_dict())
        return
    out.print(table(None, ("field", "value"), ((k, str(v)) for k, v in view.to_dict().items())))


@app.command()
def extend(
    name: Annotated[str, typer.Argument(help="Name or UUID.")],
    size: Annotated[int, typer.Option("--size", help="The new size in GB (larger).")],
    as_json: JsonOpt = False,
) -> None:
    """Grow a volume; a running server it is attached to sees the new size at once."""

    async def main() -> volumes_api.VolumeView:
        from orchestrator.conductor.tasks.volumes import VolumeExtend

        async with herd() as h:
            view = await volumes_api.find_volume(h.db, name)
            await VolumeExtend(h.conductor, view.volume, size).execute()
            return await volumes_api.find_volume(h.db, view.volume.uuid)

    _show([run_async(main())], as_json)


@app.command()
def delete(
    names: Annotated[list[str], typer.Argument(help="Names or UUIDs.")], as_json: JsonOpt = False
) -> None:
    """Delete volumes and their files; one attached to a server is refused."""

    async def main() -> list[tuple[str, str | None]]:
        from orchestrator.conductor.tasks.volumes import VolumeDelete
        from orchestrator.errors import HerdError

        done: list[tuple[str, str | None]] = []
        async with herd() as h:
            for view in await volumes_api.list_volumes(h.db, names):
                try:
                    await VolumeDelete(h.conductor, view.volume).execute()
                    done.append((view.volume.name, None))
                except HerdError as exc:
                    if len(names) == 1:
                        raise
                    done.append((view.volume.name, str(exc)))
        return done

    done = run_async(main())
    if as_json:
        print_json([{"volume": n, "deleted": e is None, "error": e} for n, e in done])
    else:
        for volume, error in done:
            out.print(f"volume {volume} deleted" if error is None else f"volume {volume}: {error}")
    failed = [n for n, e in done if e]
    if failed:
        raise SomeFailed(f"{len(failed)} of {len(done)} volumes could not be deleted")
