"""Agent round-trip latency over the persistent session, time to boot 8 VMs, and time
until test guests have really booted (printed "HERD-TEST ready" on their console).

Run as root (it brings up its own 3-host lab on 198.18.110.x and tears it down):
    python -m bench.rpc [--calls 2000] [--servers 8] [--guests 6]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from orchestrator.api import console
from orchestrator.api import hosts as hosts_api
from orchestrator.api import servers as servers_api
from orchestrator.api import volumes as volumes_api
from orchestrator.api.images import delete_image
from orchestrator.conductor.hosts import target_of
from orchestrator.conductor.manager import Conductor
from orchestrator.conductor.tasks.attach import AttachVolumeTask, DetachVolumeTask
from orchestrator.conductor.tasks.image_create import ImageCreateTask
from orchestrator.conductor.tasks.live_migrate import LiveMigrateTask
from orchestrator.conductor.tasks.migrate import MigrateTask
from orchestrator.conductor.tasks.rescue import RescueTask, UnrescueTask
from orchestrator.conductor.tasks.resize import ResizeTask, RevertResizeTask
from orchestrator.conductor.tasks.shelve import ShelveTask, UnshelveTask
from orchestrator.conductor.tasks.volume_snapshots import (
    SnapshotCreate,
    SnapshotDelete,
    SnapshotRevert,
)
from orchestrator.conductor.tasks.volumes import VolumeCreate, VolumeDelete
from orchestrator.db.engine import Database, open_database
from orchestrator.db.models import Instance
from orchestrator.inventory.apply import apply_inventory
from orchestrator.inventory.loader import load_inventory
from orchestrator.lab import Lab
from orchestrator.rpc.pool import AgentPool
from orchestrator.rpc.session import AgentSession


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def until_ready(db: Database, pool: AgentPool, names: list[str], timeout: float) -> float:
    """Seconds until every guest's serial console says it finished booting."""
    t0 = time.perf_counter()
    waiting = set(names)
    while waiting and time.perf_counter() - t0 < timeout:
        for name in sorted(waiting):
            log = await console.console_log(db, pool, name, 200)
            if any(line.strip() == "HERD-TEST ready" for line in log.lines):
                waiting.discard(name)
        await asyncio.sleep(0.2)
    if waiting:
        raise RuntimeError(f"guests never finished booting: {sorted(waiting)}")
    return time.perf_counter() - t0


async def measure_guests(
    db: Database, pool: AgentPool, conductor: Conductor, guests: int
) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    (first,) = await servers_api.create_servers(
        db, servers_api.CreateRequest("g0", "m1.tiny", "herd-test")
    )
    t0 = time.perf_counter()
    await conductor.build([first])
    rows.append(
        (
            "1 test guest to ACTIVE, cold image cache (push kernel+initrd+disk)",
            f"{time.perf_counter() - t0:.2f} s",
        )
    )
    instances = await servers_api.create_servers(
        db, servers_api.CreateRequest("guest", "m1.tiny", "herd-test", guests)
    )
    t0 = time.perf_counter()
    await conductor.build(instances)
    active = time.perf_counter() - t0
    ready = active + await until_ready(db, pool, [i.name for i in instances], 300)
    rows.append(
        (f"{guests} test guests to ACTIVE (images cached where one ran)", f"{active:.2f} s")
    )
    rows.append(
        (f"{guests} test guests until each printed HERD-TEST ready (TCG)", f"{ready:.2f} s")
    )
    rows += await measure_moves(db, conductor, first.name)
    rows += await measure_storage(db, conductor, first.name)
    await conductor.delete(
        await servers_api.find_servers(db, [first.name, *(i.name for i in instances)])
    )
    return rows


async def timed(rows: list[tuple[str, str]], label: str, work: Awaitable[object]) -> None:
    """One workflow timed into ``rows``; one that fails stops the bench with its error
    (a figure for work that did not happen would be a lie)."""
    t0 = time.perf_counter()
    outcome = await work
    error = getattr(outcome, "error", None)
    if error:
        raise RuntimeError(f"{label}: {error}")
    rows.append((label, f"{time.perf_counter() - t0:.2f} s"))


async def measure_moves(db: Database, conductor: Conductor, name: str) -> list[tuple[str, str]]:
    """One running test guest moved about. The test guest ignores ACPI, so a move that
    stops it first gives it 2 s and then forces it: that part is fixed here."""
    rows: list[tuple[str, str]] = []

    async def server() -> Instance:
        (row,) = await servers_api.find_servers(db, [name])
        return row

    here = (await servers_api.show_server(db, name)).host
    hosts = [h.name for h in await hosts_api.find_hosts(db, None) if h.name != here]
    await timed(
        rows,
        "live migration of a running test guest (disk overlay copied)",
        LiveMigrateTask(conductor, await server(), hosts[0]).execute(),
    )
    await timed(
        rows,
        "cold migration of a test guest (2 s of it: ACPI ignored, then forced)",
        MigrateTask(conductor, await server(), hosts[1], timeout=2).execute(),
    )
    await timed(
        rows,
        "resize on the same host, m1.tiny -> m1.small (2 s of it: forced stop)",
        ResizeTask(conductor, await server(), "m1.small", timeout=2).execute(),
    )
    await timed(
        rows,
        "resize --revert (built again from the kept disk)",
        RevertResizeTask(conductor, await server()).execute(),
    )
    return rows


async def measure_storage(db: Database, conductor: Conductor, name: str) -> list[tuple[str, str]]:
    """The storage workflows on one running test guest (1 GiB flavor disk, 1 GiB
    volume). The shelve's stop is forced after 2 s (the test guest ignores ACPI)."""
    rows: list[tuple[str, str]] = []

    async def server() -> Instance:
        (row,) = await servers_api.find_servers(db, [name])
        return row

    here = (await servers_api.show_server(db, name)).host
    other = next(h.name for h in await hosts_api.find_hosts(db, None) if h.name != here)
    await timed(
        rows,
        "server image create of a running test guest (snapshot, convert, blockcommit)",
        ImageCreateTask(conductor, await server(), "bench-image").execute(),
    )
    await timed(
        rows,
        "volume create, 1 GiB qcow2",
        VolumeCreate(conductor, "bench-vol", 1, host=here).execute(),
    )
    volume = (await volumes_api.find_volume(db, "bench-vol")).volume
    await timed(
        rows,
        "volume attach, hot",
        AttachVolumeTask(conductor, await server(), volume, None).execute(),
    )
    volume = (await volumes_api.find_volume(db, "bench-vol")).volume
    await timed(
        rows,
        "volume snapshot of it, attached to the running guest",
        SnapshotCreate(conductor, volume, "bench-snap").execute(),
    )
    await timed(
        rows,
        "volume detach (PCI hot-unplug)",
        DetachVolumeTask(conductor, await server(), volume).execute(),
    )
    snap = (await volumes_api.find_snapshot(db, "bench-snap")).snapshot
    await timed(rows, "volume snapshot revert", SnapshotRevert(conductor, snap).execute())
    await SnapshotDelete(conductor, snap).execute()
    await VolumeDelete(conductor, (await volumes_api.find_volume(db, "bench-vol")).volume).execute()
    await timed(
        rows,
        "rescue (from its own image)",
        RescueTask(conductor, await server(), timeout=2).execute(),
    )
    await timed(rows, "unrescue", UnrescueTask(conductor, await server()).execute())
    await timed(
        rows,
        "shelve (2 s of it: forced stop; image, offload)",
        ShelveTask(conductor, await server(), timeout=2).execute(),
    )
    await timed(
        rows,
        f"unshelve onto another host (image relayed from {here})",
        UnshelveTask(conductor, await server(), other).execute(),
    )
    await delete_image(db, "bench-image")
    return rows


async def measure(
    inventory: Path, workdir: Path, calls: int, servers: int, guests: int
) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    db = await open_database(f"sqlite:///{workdir / 'bench.db'}")
    await apply_inventory(db, load_inventory(inventory))
    hosts = await hosts_api.find_hosts(db, None)
    target = target_of(hosts[0])

    # Cold: the bundle is pushed, libvirtd answers for the first time, KVM is probed.
    # Warm: what every later herd command pays (bundle and probe verdict cached).
    for label in ("cold", "warm"):
        started = time.perf_counter()
        session = await AgentSession.open(target)
        elapsed_ms = (time.perf_counter() - started) * 1000
        rows.append(
            (f"session open, {label} (SSH + bundle + agent + hello)", f"{elapsed_ms:.0f} ms")
        )
        await session.close()

    async with AgentPool() as pool:
        await pool.session(target)
        samples = []
        for _ in range(calls):
            t0 = time.perf_counter()
            await pool.call(target, "ping", {})
            samples.append((time.perf_counter() - t0) * 1000)
        rows.append(
            (f"round trip, sequential (n={calls}) median", f"{statistics.median(samples):.3f} ms")
        )
        rows.append(
            (f"round trip, sequential (n={calls}) p99", f"{percentile(samples, 0.99):.3f} ms")
        )
        t0 = time.perf_counter()
        await asyncio.gather(*(pool.call(target, "ping", {}) for _ in range(calls)))
        elapsed = time.perf_counter() - t0
        rows.append((f"round trips, {calls} in flight at once", f"{calls / elapsed:.0f} calls/s"))

        conductor = Conductor(db, pool)
        await conductor.contact_hosts(hosts)
        instances = await servers_api.create_servers(
            db, servers_api.CreateRequest("bench", "m1.nano", "blank", servers)
        )
        t0 = time.perf_counter()
        outcomes = await conductor.build(instances)
        boot = time.perf_counter() - t0
        active = sum(o.vm_state == "active" for o in outcomes)
        spread = len({o.host for o in outcomes})
        rows.append(
            (
                f"boot {servers} VMs on {len(hosts)} hosts ({active} active, {spread} hosts used)",
                f"{boot:.2f} s",
            )
        )
        t0 = time.perf_counter()
        await conductor.delete(instances)
        rows.append((f"delete {servers} VMs", f"{time.perf_counter() - t0:.2f} s"))
        if guests:
            rows += await measure_guests(db, pool, conductor, guests)
    await db.dispose()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--servers", type=int, default=8)
    parser.add_argument("--guests", type=int, default=6, help="test guests to boot (0: skip)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="herd-bench-") as tmp:
        workdir = Path(tmp)
        lab = Lab(workdir / "lab", base_address="198.18.110.1")
        t0 = time.perf_counter()
        info = lab.up(3)
        lab_up = time.perf_counter() - t0
        try:
            rows = [("lab up (3 hosts)", f"{lab_up:.2f} s")]
            rows += asyncio.run(
                measure(info.inventory, workdir, args.calls, args.servers, args.guests)
            )
        finally:
            lab.down()
    grid = Table(title="herd: agent RPC and boot", title_justify="left", header_style="bold")
    grid.add_column("measure")
    grid.add_column("value", justify="right")
    for row in rows:
        grid.add_row(*row)
    Console().print(grid)


if __name__ == "__main__":
    main()
