"""`herd volume ...`: data disks on a host's own storage, which outlive their servers
(attach them with `herd server add volume`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

import typer

from orchestrator.api import volumes as volumes_api
from orchestrator.cli.context import herd, run_async
from orchestrator.cli.output import out, print_json, table
from orchestrator.cli.servers import SomeFailed
from orchestrator.cli.states import age

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


async def _each(
    work: list[tuple[str, Callable[[], Awaitable[object]]]], *, one: bool
) -> list[tuple[str, str | None]]:
    """Each deletion in turn, its error kept (raised at once when only one was asked)."""
    from orchestrator.errors import HerdError

    done: list[tuple[str, str | None]] = []
    for name, delete in work:
        try:
            await delete()
            done.append((name, None))
        except HerdError as exc:
            if one:
                raise
            done.append((name, str(exc)))
    return done


def _said_deleted(done: list[tuple[str, str | None]], noun: str, as_json: bool) -> None:
    if as_json:
        print_json([{noun: n, "deleted": e is None, "error": e} for n, e in done])
    else:
        for name, error in done:
            out.print(f"{noun} {name} deleted" if error is None else f"{noun} {name}: {error}")
    failed = [n for n, e in done if e]
    if failed:
        raise SomeFailed(f"{len(failed)} of {len(done)} {noun}s could not be deleted")


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

        async with herd() as h:
            views = await volumes_api.list_volumes(h.db, names)
            return await _each(
                [(v.volume.name, VolumeDelete(h.conductor, v.volume).execute) for v in views],
                one=len(names) == 1,
            )

    _said_deleted(run_async(main()), "volume", as_json)


snapshot_app = typer.Typer(
    help="Snapshots: full copies of a volume beside it, to revert it to.", no_args_is_help=True
)
app.add_typer(snapshot_app, name="snapshot")


def _show_snapshots(views: list[volumes_api.SnapshotView], as_json: bool) -> None:
    if as_json:
        print_json([v.to_dict() for v in views])
        return
    out.print(
        table(
            None,
            ("name", "status", "size", "volume", "host", "created", "uuid"),
            (
                (
                    v.snapshot.name,
                    v.snapshot.status,
                    f"{v.snapshot.size_gb} GB",
                    v.volume,
                    v.host,
                    age(v.snapshot.created_at),
                    v.snapshot.uuid,
                )
                for v in views
            ),
        )
    )


@snapshot_app.command("create")
def snapshot_create(
    volume: Annotated[str, typer.Argument(help="The volume, by name or UUID.")],
    name: Annotated[str, typer.Option("--name", help="The snapshot's name.")],
    as_json: JsonOpt = False,
) -> None:
    """Copy the volume as it is now, beside it on its host.

    An attached volume of a running server is copied while the server runs
    (crash-consistent)."""

    async def main() -> volumes_api.SnapshotView:
        from orchestrator.conductor.tasks.volume_snapshots import SnapshotCreate

        async with herd() as h:
            view = await volumes_api.find_volume(h.db, volume)
            made = await SnapshotCreate(h.conductor, view.volume, name).execute()
            return await volumes_api.find_snapshot(h.db, made.uuid)

    _show_snapshots([run_async(main())], as_json)


@snapshot_app.command("list")
def snapshot_list(
    volume: Annotated[str | None, typer.Option(help="Only this volume's.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Snapshots, oldest first, with their volume and host."""

    async def main() -> list[volumes_api.SnapshotView]:
        async with herd() as h:
            if volume is not None:
                await volumes_api.find_volume(h.db, volume)
            return await volumes_api.list_snapshots(h.db, volume=volume)

    _show_snapshots(run_async(main()), as_json)


@snapshot_app.command("show")
def snapshot_show(
    name: Annotated[str, typer.Argument(help="Name or UUID.")], as_json: JsonOpt = False
) -> None:
    """One snapshot, whole."""

    async def main() -> volumes_api.SnapshotView:
        async with herd() as h:
            return await volumes_api.find_snapshot(h.db, name)

    view = run_async(main())
    if as_json:
        print_json(view.to_dict())
        return
    out.print(table(None, ("field", "value"), ((k, str(v)) for k, v in view.to_dict().items())))


@snapshot_app.command("delete")
def snapshot_delete(
    names: Annotated[list[str], typer.Argument(help="Names or UUIDs.")], as_json: JsonOpt = False
) -> None:
    """Delete snapshots and their files."""

    async def main() -> list[tuple[str, str | None]]:
        from orchestrator.conductor.tasks.volume_snapshots import SnapshotDelete

        async with herd() as h:
            views = await volumes_api.list_snapshots(h.db, names)
            return await _each(
                [(v.snapshot.name, SnapshotDelete(h.conductor, v.snapshot).execute) for v in views],
                one=len(names) == 1,
            )

    _said_deleted(run_async(main()), "snapshot", as_json)


@snapshot_app.command("revert")
def snapshot_revert(
    name: Annotated[str, typer.Argument(help="The snapshot, by name or UUID.")],
    as_json: JsonOpt = False,
) -> None:
    """Put the snapshot's content back into its volume, which must be detached.

    Its other snapshots are kept."""

    async def main() -> volumes_api.VolumeView:
        from orchestrator.conductor.tasks.volume_snapshots import SnapshotRevert

        async with herd() as h:
            view = await volumes_api.find_snapshot(h.db, name)
            volume = await SnapshotRevert(h.conductor, view.snapshot).execute()
            return await volumes_api.find_volume(h.db, volume.uuid)

    _show([run_async(main())], as_json)
