"""`herd server ...`: create, list, show, delete, wait, actions."""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from orchestrator import cloudinit
from orchestrator.api import hosts as hosts_api
from orchestrator.api import servers as servers_api
from orchestrator.cli import documents
from orchestrator.cli.background import run_in_background
from orchestrator.cli.context import herd, run_async
from orchestrator.cli.explain import show_plan
from orchestrator.cli.output import err, out, print_json, styled, table, text, visible
from orchestrator.cli.progress import LiveProgress
from orchestrator.cli.states import age
from orchestrator.conductor.outcomes import Outcome
from orchestrator.db.models import Instance
from orchestrator.errors import Conflict, HerdError, InvalidInput, NoValidHost
from orchestrator.files import read_limited
from orchestrator.scheduler.scheduler import Plan

if TYPE_CHECKING:
    from orchestrator.api import console
    from orchestrator.conductor.manager import Conductor

app = typer.Typer(help="Create, inspect, power, rebuild and delete servers.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
WaitOpt = Annotated[
    bool, typer.Option("--wait/--no-wait", help="Follow the work to its end, or return once cast.")
]


class SomeFailed(HerdError):
    """Some servers of a multi-server request failed; each failure was shown."""


def show_outcomes(outcomes: list[Outcome], as_json: bool, verb: str) -> None:
    if as_json:
        print_json([o.__dict__ for o in outcomes])
    else:
        out.print(
            table(
                None,
                ("name", "uuid", "host", "vm_state", "task_state", "error"),
                (
                    (o.name, o.uuid, o.host, styled(o.vm_state), o.task_state, o.error)
                    for o in outcomes
                ),
            )
        )
    failed = [o for o in outcomes if o.error]
    if failed and all(o.failed_at == "schedule" for o in failed):
        raise NoValidHost(failed[0].error or "no valid host")
    if failed and all(o.failed_at == "guard" for o in failed):
        raise Conflict(failed[0].error or "refused by the server's state")
    if failed:
        raise SomeFailed(f"{len(failed)} of {len(outcomes)} servers failed to {verb}")


def _hints(hints: list[str]) -> dict[str, tuple[str, ...]]:
    """`--hint same_host=web-1` as in `openstack server create --hint`."""
    known = ("same_host", "different_host")
    parsed: dict[str, list[str]] = {k: [] for k in known}
    for hint in hints:
        key, sep, value = hint.partition("=")
        if not sep or key not in known or not value:
            raise InvalidInput(
                f"--hint {hint!r}: expected KEY=SERVER with KEY one of {', '.join(known)}"
            )
        parsed[key].append(value)
    return {k: tuple(v) for k, v in parsed.items()}


def _read_user_data(path: Path) -> str:
    origin = f"--user-data {path}"
    return cloudinit.check_user_data(read_limited(path, cloudinit.MAX_USER_DATA, origin), origin)


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="Server name; NAME-1..N with --count.")],
    flavor: Annotated[str, typer.Option(help="Flavor name (herd flavor list).")],
    image: Annotated[str, typer.Option(help="Image name (herd image list).")],
    count: Annotated[int, typer.Option(help="How many servers to boot.")] = 1,
    min_count: Annotated[
        int | None,
        typer.Option(help="Boot at least this many of --count, or none (default: all)."),
    ] = None,
    group: Annotated[
        str | None, typer.Option(help="Server group (herd group create) to place by.")
    ] = None,
    availability_zone: Annotated[
        str | None, typer.Option("--availability-zone", help="Only hosts of this zone.")
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="Only this host (the filters still apply).")
    ] = None,
    hint: Annotated[
        list[str] | None,
        typer.Option(help="same_host=SERVER or different_host=SERVER; repeatable."),
    ] = None,
    network: Annotated[
        list[str] | None,
        typer.Option(
            help="Attach a NIC to this network (herd network list); repeatable, in order. "
            "Default: the inventory's default network."
        ),
    ] = None,
    key_name: Annotated[
        str | None, typer.Option("--key-name", help="Key pair for the guest (herd keypair list).")
    ] = None,
    user_data: Annotated[
        Path | None,
        typer.Option(
            "--user-data",
            help="File given to cloud-init as user-data (at most 65,535 bytes, not base64).",
        ),
    ] = None,
    volume: Annotated[
        list[str] | None,
        typer.Option(
            help="Attach this volume (herd volume list) once built; repeatable. The server "
            "goes to the volumes' host."
        ),
    ] = None,
    boot_from_volume: Annotated[
        int | None,
        typer.Option(
            "--boot-from-volume",
            help="Boot from a new volume of this many GB made from the image (on the "
            "server's host); it outlives the server unless --delete-on-termination.",
        ),
    ] = None,
    delete_on_termination: Annotated[
        bool,
        typer.Option(
            "--delete-on-termination", help="With --boot-from-volume: delete it with the server."
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show where the servers would go; change nothing.")
    ] = False,
    explain: Annotated[
        bool, typer.Option("--explain", help="Show every host's filter verdict and weights.")
    ] = False,
    refresh: Annotated[
        bool,
        typer.Option(
            "--refresh",
            help="With --dry-run: contact hosts not heard from in the last minute first, "
            "as a create does (default: plan from what the DB knows, and say how old it is).",
        ),
    ] = False,
    wait: WaitOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Boot servers: schedule, claim, and build them on their hosts concurrently."""
    request = servers_api.CreateRequest(
        name=name,
        flavor=flavor,
        image=image,
        count=count,
        min_count=min_count,
        group=group,
        availability_zone=availability_zone,
        host=host,
        networks=tuple(network or ()),
        key_name=key_name,
        user_data=_read_user_data(user_data) if user_data else None,
        volumes=tuple(volume or ()),
        boot_volume_gb=boot_from_volume,
        delete_on_termination=delete_on_termination,
        **_hints(hint or []),
    )
    if volume and not wait and not dry_run:
        raise InvalidInput("--volume attaches once the server is built: it needs --wait")
    if refresh and not dry_run:
        raise InvalidInput("--refresh goes with --dry-run (a create always meets stale hosts)")
    if dry_run:
        plan, names, facts = run_async(_dry_run(request, refresh))
        show_plan(plan, names, as_json=as_json, explain=explain, facts=facts)
        # What the same create would do: exit 5 when it could not place enough.
        shortfall = plan.shortfall(count if min_count is None else min_count)
        if shortfall is not None:
            raise NoValidHost(shortfall)
        return

    async def main() -> tuple[list[Outcome], Plan | None, dict[str, str]]:
        progress = None if as_json else LiveProgress(f"Creating {name}")
        async with herd(progress) as h:
            instances = await servers_api.create_servers(h.db, request)
            names = {i.uuid: i.name for i in instances}
            plan = None
            if explain:
                await h.conductor.meet_hosts()
                plan = await h.conductor.scheduler.plan(await h.conductor.specs_of(instances))
            with progress or contextlib.nullcontext():
                outcomes = await h.conductor.build(instances, wait=wait, min_count=min_count)
                if request.volumes:
                    from orchestrator.conductor.tasks.attach import attach_boot_volumes

                    outcomes = [await attach_boot_volumes(h.conductor, o) for o in outcomes]
            return outcomes, plan, names

    outcomes, plan, names = run_async(main())
    if plan is not None and not as_json:
        show_plan(plan, names, as_json=False, explain=True, placements=False)
    show_outcomes(outcomes, as_json, "build")


async def _dry_run(
    request: servers_api.CreateRequest, refresh: bool
) -> tuple[Plan, dict[str, str], dict[str, datetime | None]]:
    """Plan from what the DB knows, writing nothing, and say how old that knowledge is.
    A dry run contacts no host unless asked (`--refresh`): it is what an operator runs
    to look before leaping, and it should answer at once even when hosts are down."""
    async with herd() as h:
        if refresh:
            await h.conductor.meet_hosts()
        plan, names = await servers_api.dry_run_plan(h.db, request, h.conductor.scheduler)
        return plan, names, await hosts_api.hosts_last_seen(h.db)


@app.command("list")
def list_(
    all_: Annotated[bool, typer.Option("--all", help="Include deleted servers.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List servers with their host and states."""

    async def main() -> list[servers_api.ServerView]:
        async with herd() as h:
            return await servers_api.list_servers(h.db, include_deleted=all_)

    views = run_async(main())
    if as_json:
        print_json([documents.server_dict(v) for v in views])
        return
    out.print(
        table(
            None,
            (
                "name",
                "uuid",
                "host",
                "vm_state",
                "task_state",
                "power",
                "networks",
                "flavor",
                "image",
                "age",
            ),
            (
                (
                    v.instance.name,
                    v.instance.uuid,
                    v.host,
                    styled(v.instance.vm_state),
                    v.instance.task_state,
                    v.instance.power_state,
                    v.addresses,
                    v.instance.flavor_name,
                    v.instance.image_name,
                    age(v.instance.created_at),
                )
                for v in views
            ),
        )
    )


def _server_view(ref: str) -> servers_api.ServerView:
    async def main() -> servers_api.ServerView:
        async with herd() as h:
            return await servers_api.show_server(h.db, ref)

    return run_async(main())


@app.command()
def show(
    name: Annotated[str, typer.Argument(help="Name or UUID.")], as_json: JsonOpt = False
) -> None:
    """Show one server: states, host, the latest faults and its actions."""

    view = _server_view(name)
    data = documents.server_dict(view)
    data["faults"] = [
        {"message": f.message, "host": f.host, "code": f.code, "created_at": f.created_at}
        for f in view.faults
    ]
    data["resize"] = view.resize
    data["jobs"] = [
        {
            "id": j.id,
            "op": j.op,
            "state": j.state,
            "error": j.error,
            "collected": j.collected_at is not None,
        }
        for j in view.jobs
    ]
    if as_json:
        print_json(data)
        return
    rows: list[tuple[str, Any]] = [
        (key, styled(data[key]) if key == "vm_state" else data[key])
        for key in (
            "name", "uuid", "host", "vm_state", "task_state", "power_state", "flavor", "image",
            "vcpus", "ram_mb", "disk_gb", "group", "hostname", "key_name", "created_at",
            "launched_at", "deleted_at",
        )
    ]  # fmt: skip
    for port in view.ports:
        where = f"{port.ip}/{port.prefixlen}" if port.ip else "no fixed IP"
        rows.append(("address", f"{port.network}: {where}, mac {port.mac}"))
    if view.resize:
        r = view.resize
        rows.append(
            (
                "resize",
                f"{r['old_flavor']} on {r['source']} -> {r['new_flavor']} ({r['status']}; "
                "`herd server resize --confirm` or `--revert`)",
            )
        )
    for fault in view.faults[:5]:  # newest first: a reschedule leaves one per host
        message = Text.assemble(text(fault.message, "red"), f" ({age(fault.created_at)})")
        rows.append(("fault", message))
    pending = [j for j in view.jobs if j.collected_at is None]
    if pending:
        rows.append(("pending job", f"{pending[-1].op} {pending[-1].id} ({pending[-1].state})"))
    out.print(table(None, ("field", "value"), rows))


@app.command()
def actions(
    name: Annotated[str, typer.Argument(help="Name or UUID.")], as_json: JsonOpt = False
) -> None:
    """List a server's actions with their events (start, finish, result, host, error)."""

    view = _server_view(name)
    if as_json:
        print_json(
            [
                {
                    "action": a.action,
                    "request_id": a.request_id,
                    "start_time": a.start_time,
                    "finish_time": a.finish_time,
                    "message": a.message,
                    "events": [
                        {
                            "event": e.event,
                            "host": e.host,
                            "result": e.result,
                            "start_time": e.start_time,
                            "finish_time": e.finish_time,
                            "details": e.details,
                        }
                        for e in events
                    ],
                }
                for a, events in view.actions
            ]
        )
        return
    rows = []
    for action, events in view.actions:
        rows.append(
            (
                text(action.action, "bold"),
                "",
                action.request_id,
                age(action.start_time),
                action.message,
            )
        )
        for e in events:
            rows.append(("", e.event, e.host, styled(e.result or "running"), e.details))
    out.print(table(None, ("action", "event", "host / request", "result", "details"), rows))


@app.command()
def delete(
    names: Annotated[list[str], typer.Argument(help="Names or UUIDs.")],
    wait: WaitOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Delete servers: the domain, its disks and its claim; idempotent on the host."""

    async def main() -> list[Outcome]:
        progress = None if as_json else LiveProgress("Deleting")
        async with herd(progress) as h:
            instances = await servers_api.find_servers(h.db, names)
            if progress is None:
                return await h.conductor.delete(instances, wait=wait)
            with progress:
                return await h.conductor.delete(instances, wait=wait)

    show_outcomes(run_async(main()), as_json, "delete")


@app.command("wait")
def wait_(
    names: Annotated[
        list[str] | None, typer.Argument(help="Names or UUIDs; all when omitted.")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each job.")] = 900.0,
    as_json: JsonOpt = False,
) -> None:
    """Follow jobs that were cast but not collected (after --no-wait, or a killed herd)."""
    if not math.isfinite(timeout) or timeout < 0:  # nan would wait for ever
        raise InvalidInput(f"--timeout {timeout:g}: must be a finite number of seconds, 0 or more")

    async def main() -> list[Outcome]:
        progress = None if as_json else LiveProgress("Waiting")
        async with herd(progress) as h:
            named = await servers_api.find_servers(h.db, names) if names else []
            recovered = await _recover(h.conductor, [i.uuid for i in named] if names else None)
            jobs = await servers_api.pending_jobs(h.db, [i.uuid for i in named] if names else None)
            outcomes: list[Outcome] = []
            if jobs:
                if progress is None:
                    outcomes = await h.conductor.collect(jobs, timeout)
                else:
                    with progress:
                        outcomes = await h.conductor.collect(jobs, timeout)
            # A task herd itself drives (a migration, a resize), maybe in the
            # background after --no-wait, has no job on a host to follow: wait for the
            # task to clear. A named server that is idle already is shown as it is.
            followed = {o.uuid for o in outcomes} | {o.uuid for o in recovered}
            rest = [i for i in named if i.uuid not in followed]
            return recovered + outcomes + await _until_idle(h.db, rest, timeout)

    outcomes = run_async(main())
    if not outcomes and not as_json:
        err.print("nothing to wait for")
        return
    show_outcomes(outcomes, as_json, "finish")


async def _until_idle(db: Any, busy: list[Instance], timeout: float) -> list[Outcome]:
    outcomes = []
    deadline = time.monotonic() + timeout
    for instance in busy:
        while True:
            view = await servers_api.show_server(db, instance.uuid)
            row = view.instance
            if row.task_state is None or time.monotonic() >= deadline:
                break
            await asyncio.sleep(1)
        failed = row.task_state is None and view.actions and view.actions[-1][0].message
        error = view.faults[0].message if failed and view.faults else None
        if row.task_state is not None:
            error = f"still {row.task_state} after {timeout:g}s"
        outcomes.append(Outcome(row.uuid, row.name, view.host, row.vm_state, row.task_state, error))
    return outcomes


@app.command("console-log")
def console_log(
    name: Annotated[str, typer.Argument(help="Name or UUID.")],
    lines: Annotated[int, typer.Option(help="How many of the last lines to show.")] = 100,
    raw: Annotated[
        bool,
        typer.Option(
            "--raw", help="Write the guest's bytes as they are, escape sequences and all."
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show the guest's serial console output (what it printed while booting, and since).

    Control characters are shown escaped (`\\x1b[31m`), tabs and newlines kept:
    whatever the guest printed must not drive the operator's terminal. `--raw`
    writes them as they came, as `virsh console` would."""
    if not 1 <= lines <= 100000:
        raise InvalidInput("--lines must be between 1 and 100000")

    async def main() -> console.ConsoleLog:
        from orchestrator.api import console

        async with herd() as h:
            return await console.console_log(h.db, h.pool, name, lines)

    log = run_async(main())
    if as_json:
        print_json(log.__dict__)
        return
    # Guest output, never interpreted by rich. The agent decoded it with "replace";
    # a surrogate in what it sent is escaped rather than crash the write.
    for line in log.lines:
        shown = line if raw else visible(line)
        sys.stdout.buffer.write((shown + "\n").encode("utf-8", "backslashreplace"))
    sys.stdout.flush()


@app.command("console")
def console_(name: Annotated[str, typer.Argument(help="Name or UUID.")]) -> None:
    """Attach to the guest's serial console (virsh console over SSH); Ctrl-] detaches."""

    async def main() -> int:
        from orchestrator.api import console
        from orchestrator.cli import console_attach

        async with herd() as h:
            instance, target = await console.console_target(h.db, name)
        err.print(
            f"Connected to {instance.name} on {target.name}; "
            f"press {console_attach.ESCAPE} to detach."
        )
        return await console_attach.attach(instance, target)

    status = run_async(main())
    err.print("\ndetached")
    raise typer.Exit(status)


# The workflows import the conductor, SSH and the agent client: only the commands that
# run one pay for that (`server list` and `show` answer from the DB alone).


async def _recover(conductor: Conductor, uuids: list[str] | None) -> list[Outcome]:
    """Tasks of these servers (or all) whose herd died: finished or undone first, so
    that waiting for them ends (conductor/recovery.py)."""
    from orchestrator.conductor import recovery

    outcomes = []
    for done in await recovery.recover(conductor, uuids):
        view = await servers_api.show_server(conductor.db, done.uuid)
        row = view.instance
        error = None if done.outcome == "done" else f"{done.kind} recovered: {done.detail}"
        outcomes.append(Outcome(row.uuid, row.name, view.host, row.vm_state, row.task_state, error))
    return outcomes


def _power(
    conductor: Conductor, instances: list[Instance], action: str, wait: bool, timeout: int
) -> Awaitable[list[Outcome]]:
    from orchestrator.conductor.tasks.power import power

    return power(conductor, instances, action, wait=wait, timeout=timeout)


def _rebuild(
    conductor: Conductor, instance: Instance, image: str | None, wait: bool
) -> Awaitable[Outcome]:
    from orchestrator.conductor.tasks.rebuild import RebuildTask

    return RebuildTask(conductor, instance, image, wait=wait).execute()


def _migrate(
    conductor: Conductor, instance: Instance, host: str | None, timeout: int
) -> Awaitable[Outcome]:
    from orchestrator.conductor.tasks.migrate import MigrateTask

    return MigrateTask(conductor, instance, host, timeout=timeout).execute()


def _resize(
    conductor: Conductor,
    instance: Instance,
    flavor: str | None,
    host: str | None,
    timeout: int,
    *,
    confirm: bool,
    revert: bool,
) -> Awaitable[Outcome]:
    from orchestrator.conductor.tasks import resize as tasks

    if confirm:
        return tasks.ConfirmResizeTask(conductor, instance).execute()
    if revert:
        return tasks.RevertResizeTask(conductor, instance, timeout=timeout).execute()
    assert flavor is not None
    return tasks.ResizeTask(conductor, instance, flavor, host, timeout=timeout).execute()


def _live_migrate(
    conductor: Conductor, instance: Instance, host: str | None, timeout: int
) -> Awaitable[Outcome]:
    from orchestrator.conductor.tasks.live_migrate import LiveMigrateTask

    return LiveMigrateTask(conductor, instance, host, timeout=timeout).execute()


NamesArg = Annotated[list[str], typer.Argument(help="Names or UUIDs.")]
TimeoutOpt = Annotated[
    int,
    typer.Option(
        help="Seconds the guest gets to shut down (stop, soft reboot) before it is forced."
    ),
]


def _run_power(names: list[str], action: str, wait: bool, as_json: bool, timeout: int) -> None:
    async def main() -> list[Outcome]:
        progress = None if as_json else LiveProgress(action.replace("_", " ").capitalize())
        async with herd(progress) as h:
            instances = await servers_api.find_servers(h.db, names)
            if progress is None:
                return await _power(h.conductor, instances, action, wait, timeout)
            with progress:
                return await _power(h.conductor, instances, action, wait, timeout)

    show_outcomes(run_async(main()), as_json, action.replace("_", " "))


@app.command()
def start(names: NamesArg, wait: WaitOpt = True, as_json: JsonOpt = False) -> None:
    """Power on stopped servers."""
    _run_power(names, "start", wait, as_json, 0)


@app.command()
def stop(
    names: NamesArg, timeout: TimeoutOpt = 60, wait: WaitOpt = True, as_json: JsonOpt = False
) -> None:
    """Shut servers down: ACPI first, forced off after --timeout."""
    _run_power(names, "stop", wait, as_json, timeout)


@app.command()
def reboot(
    names: NamesArg,
    hard: Annotated[bool, typer.Option("--hard", help="Power-cycle at once.")] = False,
    timeout: TimeoutOpt = 60,
    wait: WaitOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Reboot: soft asks the guest (ACPI) and falls back to hard after --timeout."""
    _run_power(names, "hard_reboot" if hard else "reboot", wait, as_json, timeout)


@app.command()
def pause(names: NamesArg, wait: WaitOpt = True, as_json: JsonOpt = False) -> None:
    """Freeze servers' vCPUs (memory stays in RAM)."""
    _run_power(names, "pause", wait, as_json, 0)


@app.command()
def unpause(names: NamesArg, wait: WaitOpt = True, as_json: JsonOpt = False) -> None:
    """Let paused servers run again."""
    _run_power(names, "unpause", wait, as_json, 0)


@app.command()
def suspend(names: NamesArg, wait: WaitOpt = True, as_json: JsonOpt = False) -> None:
    """Save servers' memory to disk and stop them (libvirt managed save)."""
    _run_power(names, "suspend", wait, as_json, 0)


@app.command()
def resume(names: NamesArg, wait: WaitOpt = True, as_json: JsonOpt = False) -> None:
    """Restore suspended servers from their saved memory."""
    _run_power(names, "resume", wait, as_json, 0)


@app.command()
def rebuild(
    name: Annotated[str, typer.Argument(help="Name or UUID.")],
    image: Annotated[
        str | None, typer.Option(help="Rebuild from this image (default: the same one).")
    ] = None,
    wait: WaitOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """A new root disk from the image: same UUID, host, addresses and user data."""

    outcomes = _act_on_one(name, "Rebuilding", as_json, lambda c, i: _rebuild(c, i, image, wait))
    show_outcomes(outcomes, as_json, "rebuild")


def _act_on_one(
    name: str, label: str, as_json: bool, work: Callable[[Conductor, Instance], Awaitable[Outcome]]
) -> list[Outcome]:
    """One server, one workflow, shown with live progress unless --json."""

    async def main() -> list[Outcome]:
        progress = None if as_json else LiveProgress(label)
        async with herd(progress) as h:
            (instance,) = await servers_api.find_servers(h.db, [name])
            with progress or contextlib.nullcontext():
                return [await work(h.conductor, instance)]

    return run_async(main())


def _background(name: str, verb: str, as_json: bool) -> None:
    outcome, log = run_in_background(name, verb)
    show_outcomes([outcome], as_json, verb)
    err.print(
        f"{verb} of {name} goes on in the background (output: {log}); "
        f"`herd server wait {name}` follows it"
    )


@app.command()
def migrate(
    name: Annotated[str, typer.Argument(help="Name or UUID.")],
    host: Annotated[
        str | None, typer.Option(help="Destination (default: the scheduler chooses).")
    ] = None,
    timeout: TimeoutOpt = 60,
    wait: WaitOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Cold-migrate: stop, copy the disk to another host, start it there, free the source."""
    if not wait:
        _background(name, "migrate", as_json)
        return

    outcomes = _act_on_one(
        name, "Migrating", as_json,
        lambda c, i: _migrate(c, i, host, timeout),
    )  # fmt: skip
    show_outcomes(outcomes, as_json, "migrate")


@app.command()
def resize(
    name: Annotated[str, typer.Argument(help="Name or UUID.")],
    flavor: Annotated[str | None, typer.Option(help="The new flavor.")] = None,
    confirm: Annotated[
        bool, typer.Option("--confirm", help="Keep the new size; free the old disk and claim.")
    ] = False,
    revert: Annotated[
        bool, typer.Option("--revert", help="Go back to the old size, from the kept disk.")
    ] = False,
    host: Annotated[
        str | None,
        typer.Option(help="Resize onto this host (default: its own if it fits, else any)."),
    ] = None,
    timeout: TimeoutOpt = 60,
    wait: WaitOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Resize to another flavor; the old disk is kept until --confirm or --revert."""
    chosen = [flag for flag, on in (("--flavor", flavor), ("--confirm", confirm),
                                    ("--revert", revert)) if on]  # fmt: skip
    if len(chosen) != 1:
        raise InvalidInput("give exactly one of --flavor F, --confirm or --revert")
    if host and not flavor:
        raise InvalidInput("--host goes with --flavor")
    if not wait:
        _background(name, "resize", as_json)
        return

    def work(conductor: Conductor, instance: Instance) -> Awaitable[Outcome]:
        return _resize(conductor, instance, flavor, host, timeout, confirm=confirm, revert=revert)

    verb = "confirm the resize" if confirm else "revert the resize" if revert else "resize"
    show_outcomes(_act_on_one(name, "Resizing", as_json, work), as_json, verb)


@app.command("live-migrate")
def live_migrate(
    name: Annotated[str, typer.Argument(help="Name or UUID.")],
    host: Annotated[
        str | None, typer.Option(help="Destination (default: the scheduler chooses).")
    ] = None,
    timeout: Annotated[
        int,
        typer.Option(help="Seconds of copying before a busy guest is paused to finish."),
    ] = 300,
    wait: WaitOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Move a running server to another host without stopping it (libvirt live migration)."""
    if not wait:
        _background(name, "live-migrate", as_json)
        return

    outcomes = _act_on_one(
        name, "Live-migrating", as_json,
        lambda c, i: _live_migrate(c, i, host, timeout),
    )  # fmt: skip
    show_outcomes(outcomes, as_json, "live-migrate")


# `herd server add volume` / `herd server remove volume`, the openstack CLI's verbs.
add_app = typer.Typer(help="Add a volume to a server.", no_args_is_help=True)
remove_app = typer.Typer(help="Remove a volume from a server.", no_args_is_help=True)
app.add_typer(add_app, name="add")
app.add_typer(remove_app, name="remove")


@add_app.command("volume")
def add_volume(
    server: Annotated[str, typer.Argument(help="Server name or UUID.")],
    volume: Annotated[str, typer.Argument(help="Volume name or UUID.")],
    device: Annotated[
        str | None, typer.Option(help="The disk's name in the guest (default: the next free).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Attach a volume: hot-plugged into a running server, into the definition of a
    stopped one. The volume must be on the server's host."""

    def work(conductor: Conductor, instance: Instance) -> Awaitable[Outcome]:
        return _volume_task(conductor, instance, volume, device, attach=True)

    show_outcomes(_act_on_one(server, "Attaching", as_json, work), as_json, "attach")


@remove_app.command("volume")
def remove_volume(
    server: Annotated[str, typer.Argument(help="Server name or UUID.")],
    volume: Annotated[str, typer.Argument(help="Volume name or UUID.")],
    as_json: JsonOpt = False,
) -> None:
    """Detach a volume (a running guest must release it: PCI hot-unplug)."""

    def work(conductor: Conductor, instance: Instance) -> Awaitable[Outcome]:
        return _volume_task(conductor, instance, volume, None, attach=False)

    show_outcomes(_act_on_one(server, "Detaching", as_json, work), as_json, "detach")


async def _volume_task(
    conductor: Conductor, instance: Instance, volume: str, device: str | None, *, attach: bool
) -> Outcome:
    from orchestrator.api.volumes import find_volume
    from orchestrator.conductor.tasks.attach import AttachVolumeTask, DetachVolumeTask

    view = await find_volume(conductor.db, volume)
    if attach:
        return await AttachVolumeTask(conductor, instance, view.volume, device).execute()
    return await DetachVolumeTask(conductor, instance, view.volume).execute()


@app.command()
def shelve(
    name: Annotated[str, typer.Argument(help="Name or UUID.")],
    timeout: TimeoutOpt = 60,
    wait: WaitOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Stop the server, keep its disk as an image and free its host.

    Its claim, disk and domain go; it stays shelved_offloaded, its addresses kept,
    until `server unshelve`."""
    if not wait:
        _background(name, "shelve", as_json)
        return

    def work(conductor: Conductor, instance: Instance) -> Awaitable[Outcome]:
        from orchestrator.conductor.tasks.shelve import ShelveTask

        return ShelveTask(conductor, instance, timeout=timeout).execute()

    show_outcomes(_act_on_one(name, "Shelving", as_json, work), as_json, "shelve")


@app.command()
def unshelve(
    name: Annotated[str, typer.Argument(help="Name or UUID.")],
    host: Annotated[
        str | None, typer.Option(help="Boot it on this host (default: the scheduler chooses).")
    ] = None,
    zone: Annotated[
        str | None, typer.Option("--availability-zone", help="Place it in this zone.")
    ] = None,
    wait: WaitOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Boot a shelved server again from its shelve image, on any host that fits.

    The same UUID, addresses and user data."""

    def work(conductor: Conductor, instance: Instance) -> Awaitable[Outcome]:
        from orchestrator.conductor.tasks.shelve import UnshelveTask

        return UnshelveTask(conductor, instance, host, zone, wait=wait).execute()

    show_outcomes(_act_on_one(name, "Unshelving", as_json, work), as_json, "unshelve")


@app.command()
def rescue(
    name: Annotated[str, typer.Argument(help="Name or UUID.")],
    image: Annotated[
        str | None, typer.Option(help="Boot this image (default: the server's own).")
    ] = None,
    timeout: TimeoutOpt = 60,
    as_json: JsonOpt = False,
) -> None:
    """Boot the server from a rescue image, its own root disk attached second.

    The rescue disk is fresh; the server's own has the serial herd-rescued-root.
    `server unrescue` ends it."""

    def work(conductor: Conductor, instance: Instance) -> Awaitable[Outcome]:
        from orchestrator.conductor.tasks.rescue import RescueTask

        return RescueTask(conductor, instance, image, timeout=timeout).execute()

    show_outcomes(_act_on_one(name, "Rescuing", as_json, work), as_json, "rescue")


@app.command()
def unrescue(
    name: Annotated[str, typer.Argument(help="Name or UUID.")], as_json: JsonOpt = False
) -> None:
    """Boot a rescued server from its own disk again (the rescue disk is dropped)."""

    def work(conductor: Conductor, instance: Instance) -> Awaitable[Outcome]:
        from orchestrator.conductor.tasks.rescue import UnrescueTask

        return UnrescueTask(conductor, instance).execute()

    show_outcomes(_act_on_one(name, "Unrescuing", as_json, work), as_json, "unrescue")


image_app = typer.Typer(help="Make an image from a server.", no_args_is_help=True)
app.add_typer(image_app, name="image")


@image_app.command("create")
def create_image(
    server: Annotated[str, typer.Argument(help="Server name or UUID.")],
    name: Annotated[str, typer.Option("--name", help="The new image's name.")],
    as_json: JsonOpt = False,
) -> None:
    """Make an image of the server's root disk (Nova's createImage): flattened, with its
    sha256, bootable on any host. A running server is imaged without stopping it
    (crash-consistent: what a power cut would leave on the disk)."""

    def work(conductor: Conductor, instance: Instance) -> Awaitable[Outcome]:
        from orchestrator.conductor.tasks.image_create import ImageCreateTask

        return ImageCreateTask(conductor, instance, name).execute()

    show_outcomes(_act_on_one(server, "Imaging", as_json, work), as_json, "image")
