"""`herd host ...`: capacity and usage, contact (refresh), trust, disable/enable, evacuate."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Annotated

import typer

from orchestrator import host_check
from orchestrator.api import hosts as hosts_api
from orchestrator.cli import documents
from orchestrator.cli.context import herd, run_async
from orchestrator.cli.output import err, out, print_json, styled, table
from orchestrator.cli.progress import LiveProgress
from orchestrator.cli.servers import show_outcomes
from orchestrator.cli.states import age
from orchestrator.conductor.hosts import HostContact, target_of
from orchestrator.conductor.outcomes import Outcome
from orchestrator.endpoints import host_port
from orchestrator.errors import HerdError, HostKeyNotTrusted, HostUnreachable
from orchestrator.rpc.known_hosts import record_host_key
from orchestrator.rpc.ssh import Offer, fingerprint, host_key_changed, walk_route

app = typer.Typer(help="Hypervisors: capacity, usage, contact and trust.", no_args_is_help=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


def _usage(used: int, total: int | None, ratio: float, reserved: int, unit: str = "") -> str:
    if total is None:
        return f"{used}{unit}/?"
    capacity = int(total * ratio - reserved)  # what the RAM/vCPU/disk filters allow
    ratio_note = f" (x{ratio:g})" if ratio != 1 else ""
    return f"{used}/{capacity}{unit}{ratio_note}"


@app.command("list")
def list_(as_json: JsonOpt = False) -> None:
    """Hosts with status, capacity (after ratios and reservations) and usage."""

    async def main() -> list[hosts_api.HostView]:
        async with herd() as h:
            return await hosts_api.list_hosts(h.db)

    views = run_async(main())
    if as_json:
        print_json([documents.host_dict(v) for v in views])
        return
    # Why a host is disabled is what the next operator asks first; the column is
    # there only when some host has a reason, so an all-enabled fleet's table stays narrow.
    reasons = any(not v.host.enabled and v.host.disabled_reason for v in views)
    rows = []
    for v in views:
        h = v.host
        rows.append(
            (
                h.name,
                host_port(h.address, h.ssh_port),
                styled(hosts_api.host_status(h)),
                h.domain_type,
                _usage(v.used_vcpus, h.total_vcpus, h.cpu_ratio, h.reserved_vcpus),
                _usage(v.used_ram_mb, h.total_ram_mb, h.ram_ratio, h.reserved_ram_mb),
                _usage(v.used_disk_gb, h.total_disk_gb, h.disk_ratio, h.reserved_disk_gb),
                v.instances,
                age(h.last_seen_at),
                *((None if h.enabled else h.disabled_reason,) if reasons else ()),
            )
        )
    out.print(
        table(
            None,
            (
                "name",
                "address",
                "status",
                "virt",
                "vcpus",
                "ram MiB",
                "disk GiB",
                "servers",
                "seen",
                *(("reason",) if reasons else ()),
            ),
            rows,
        )
    )


@app.command()
def refresh(
    names: Annotated[list[str] | None, typer.Argument(help="Hosts; all when omitted.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Contact hosts now: handshake with their agents and record fresh facts."""

    async def main() -> list[HostContact]:
        async with herd() as h:
            hosts = await hosts_api.find_hosts(h.db, names)
            return await h.conductor.contact_hosts(hosts)

    contacts = run_async(main())
    if as_json:
        print_json([c.__dict__ for c in contacts])
    else:
        rows = []
        for c in contacts:
            facts = c.facts or {}
            rows.append(
                (
                    c.name,
                    styled("up" if c.ok else "down"),
                    facts.get("domain_type"),
                    facts.get("cpus"),
                    facts.get("memory_mb"),
                    (facts.get("libvirt") or {}).get("version"),
                    c.error,
                )
            )
        out.print(
            table(None, ("host", "status", "virt", "cpus", "ram MiB", "libvirt", "error"), rows)
        )
    failed = [c for c in contacts if not c.ok]
    if failed:
        raise HostUnreachable(
            failed[0].error
            if len(failed) == 1
            else f"{len(failed)} hosts failed: " + "; ".join(c.error or c.name for c in failed)
        )


@app.command()
def trust(
    name: Annotated[str, typer.Argument(help="Host name.")],
    fingerprints: Annotated[
        list[str] | None,
        typer.Option(
            "--fingerprint",
            help="Expected SHA256:... fingerprint; trust only a key that matches. Repeat it "
            "for a host behind jump hosts whose keys are new too.",
        ),
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask; trust what the host offers.")
    ] = False,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace", help="The host's key CHANGED (reinstalled): replace the known one."
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Record a host's SSH key in known_hosts after showing its fingerprint; a key that
    differs from the known one is refused unless --replace, as OpenSSH does. A host
    reached through jump hosts (ProxyJump) has their keys checked first, the same way."""

    async def main() -> list[dict[str, object]]:
        async with herd() as h:
            (host,) = await hosts_api.find_hosts(h.db, [name])
        decided: list[dict[str, object]] = []

        async def visit(offer: Offer) -> None:
            decided.append(
                await asyncio.to_thread(_decide, name, offer, fingerprints or [], yes, replace)
            )

        await walk_route(target_of(host), visit)
        return decided

    keys = run_async(main())
    if as_json:
        print_json({"host": name, "keys": keys})


def _decide(
    name: str, offer: Offer, fingerprints: list[str], yes: bool, replace: bool
) -> dict[str, object]:
    """Trust one hop's key, or say why not: the whole of `herd host trust` for it.
    Returns what was done, for `--json`."""
    hop, known, key = offer.hop, offer.known, offer.key
    what = f"host {name}" + (f": {hop.hop}" if hop.jump else "")
    seen = fingerprint(key)
    done: dict[str, object] = {
        "hop": hop.hop,
        "jump": bool(hop.jump),
        "algorithm": key.get_algorithm(),
        "fingerprint": seen,
    }
    revoked = known.revokes(key)
    if revoked is not None:
        raise HostKeyNotTrusted(
            f"{what}: offered key {seen} is marked @revoked ({revoked.where}); not trusted"
        )
    if known.trusts(key):
        err.print(f"{what}: {seen} is already trusted", markup=False, highlight=False)
        return {**done, "recorded": False, "known_hosts": None}
    if known.trusted and not replace:
        raise HostKeyNotTrusted(host_key_changed(hop, known, key))
    if fingerprints:
        if seen not in fingerprints:
            raise HerdError(
                f"{what}: offered key {seen} does not match {', '.join(fingerprints)}; not trusted"
            )
    elif not yes:
        if known.trusted:
            err.print(
                host_key_changed(hop, known, key, advice=False), markup=False, highlight=False
            )
        err.print(
            f"{what} ({host_port(hop.address, hop.port or 22)}) offers "
            f"{key.get_algorithm()} key {seen}",
            markup=False,
            highlight=False,
        )
        if not typer.confirm("Trust it?", err=True):
            raise typer.Exit(1)
    path = record_host_key(hop, key, replace=replace)
    err.print(f"{what}: trusted {seen}, recorded in {path}", markup=False, highlight=False)
    for stale in known.trusted:
        if stale.path.resolve() != path:
            err.print(
                f"{what}: the old key is still trusted by {stale.where}; remove it there "
                f"(ssh-keygen -R '{hop.known_hosts_entry()}' -f {stale.path})",
                markup=False,
                highlight=False,
            )
    return {**done, "recorded": True, "replaced": replace, "known_hosts": str(path)}


async def _set_enabled(name: str, enabled: bool, reason: str | None) -> dict[str, object]:
    """Enable or disable the host; what it is now, for `--json`."""
    async with herd() as h:
        return dataclasses.asdict(await hosts_api.set_enabled(h.db, name, enabled, reason))


@app.command()
def disable(
    name: Annotated[str, typer.Argument(help="Host name.")],
    reason: Annotated[
        str | None, typer.Option(help="Why: shown by `host list` and scheduler refusals.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Schedule nothing new on the host (its servers keep running)."""
    done = run_async(_set_enabled(name, False, reason))
    if as_json:
        print_json(done)
    else:
        err.print(f"host {name} disabled: {done['disabled_reason']}")


@app.command()
def enable(
    name: Annotated[str, typer.Argument(help="Host name.")], as_json: JsonOpt = False
) -> None:
    """Let the scheduler use the host again."""
    done = run_async(_set_enabled(name, True, None))
    if as_json:
        print_json(done)
    else:
        err.print(f"host {name} enabled")


@app.command()
def evacuate(
    name: Annotated[str, typer.Argument(help="A host that is down.")],
    as_json: JsonOpt = False,
) -> None:
    """Rebuild a down host's servers on other hosts (same UUIDs and addresses); when it
    comes back, `herd reconcile` removes the stale copies there."""

    async def main() -> list[Outcome]:
        progress = None if as_json else LiveProgress(f"Evacuating {name}")
        async with herd(progress) as h:
            from orchestrator.conductor.tasks.evacuate import evacuate

            if progress is None:
                return await evacuate(h.conductor, name)
            with progress:
                return await evacuate(h.conductor, name)

    outcomes = run_async(main())
    if not outcomes and not as_json:
        err.print(f"host {name} has no servers to evacuate")
    show_outcomes(outcomes, as_json, "evacuate")


@app.command()
def check(
    names: Annotated[list[str], typer.Argument(help="Hosts to check.")],
    min_free_gb: Annotated[
        int, typer.Option("--min-free-gb", min=0, help="Free disk below this is a problem.")
    ] = host_check.DEFAULT_MIN_FREE_GB,
    as_json: JsonOpt = False,
) -> None:
    """What a host lacks for herd (libvirt socket access, a writable agent dir, qemu-img,
    python3 >= 3.9, free disk, QEMU's way to the disks, bridges): one line per problem,
    each with its fix. Over plain SSH: works where the agent cannot start. Exit 0 when
    all is well, 1 when a problem is found, 6 when a host cannot be logged in to."""

    async def main() -> list[host_check.CheckOutcome]:
        async with herd() as h:
            return await host_check.check_hosts(h.db, names, min_free_gb)

    outcomes = run_async(main())
    if as_json:
        print_json(
            [
                o.check.as_dict()
                if o.check
                else {"host": o.host, "ok": False, "error": str(o.error)}
                for o in outcomes
            ]
        )
    problems = [(o.host, f) for o in outcomes if o.check for f in o.check.problems]
    if not as_json:
        for host, finding in problems:
            out.print(f"{host}: {finding.detail}; fix: {finding.fix}", soft_wrap=True, markup=False)
        clean = [o.check for o in outcomes if o.check and not o.check.problems]
        if clean:
            rows = [(c.host, f.check, styled("ok"), f.detail) for c in clean for f in c.findings]
            out.print(table(None, ("host", "check", "result", "detail"), rows))
    unreachable = [o.error for o in outcomes if o.error is not None]
    if unreachable:
        raise HostUnreachable(
            str(unreachable[0])
            if len(unreachable) == 1
            else f"{len(unreachable)} hosts failed: " + "; ".join(map(str, unreachable))
        )
    if problems:
        hosts = sorted({host for host, _ in problems})
        raise HerdError(f"{len(problems)} problem(s) on {', '.join(hosts)}")


def _check_json(outcome: host_check.CheckOutcome) -> dict[str, object]:
    if outcome.check is not None:
        return outcome.check.as_dict()
    return {"host": outcome.host, "ok": False, "error": str(outcome.error), "checks": []}
