"""The scheduler against a real database: PostgreSQL (a throwaway server) and SQLite.

1. Placements per second with 1, 2 and 4 operator *processes* placing at once through
   ``FilterScheduler.place`` (load, filters, weighers, claims) on hosts that exist only
   as rows; stale claims (another operator moved a host's generation) are retried by
   the scheduler and counted here, as are refusals. Goal on PostgreSQL: 4 operators
   place >= 3x the servers per second of one.
2. One request of 1,000 instances on 10,000 hosts *including* loading the host states
   from the DB, broken down into load, filter+weigh and claim. Goal: <= 1 s on
   PostgreSQL.

Nothing is contacted: the hosts are DB rows. PostgreSQL is started from Debian's
server binaries (tests.pgserver) unless ``--pg-url`` names one.

    python -m bench.db [--engines postgresql sqlite] [--operators 1 2 4]
                       [--requests 40] [--hosts 10000] [--instances 1000] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import delete, insert

from orchestrator.db.engine import Database, open_database
from orchestrator.db.models import Allocation, Host, Instance, TaskState
from orchestrator.errors import NoValidHost
from orchestrator.scheduler import scheduler as scheduler_module
from orchestrator.scheduler.config import DEFAULT_WEIGHTS, SchedulerConfig
from orchestrator.scheduler.request import RequestSpec
from orchestrator.scheduler.scheduler import FilterScheduler

GOAL_SPEEDUP = 3.0
GOAL_SECONDS = 1.0
CONFIG = SchedulerConfig(weights={**DEFAULT_WEIGHTS, "num_instances": -0.5}, host_subset_size=3)


# -- seeding ---------------------------------------------------------------------------


def host_rows(count: int, seed: int = 7) -> list[dict[str, Any]]:
    """Hosts of varied size, some disabled or down, in two zones with labels."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    rows = []
    for i in range(count):
        vcpus = rng.choice((16, 32, 64, 128))
        down = rng.random() < 0.02
        rows.append(
            {
                "name": f"hv{i:05d}",
                "address": f"10.{i >> 16 & 0xFF}.{i >> 8 & 0xFF}.{i & 0xFF}",
                "libvirt_uri": "qemu:///system",
                "agent_dir": "/var/lib/herd",
                "labels": {"tier": "gold" if rng.random() < 0.9 else "bronze", "ssd": "true"},
                "availability_zone": "az1" if rng.random() < 0.85 else "az2",
                "domain_type_pref": "auto",
                "image_source_dirs": [],
                "max_image_gb": 64,
                "cpu_ratio": rng.choice((1.0, 4.0, 16.0)),
                "ram_ratio": rng.choice((1.0, 1.5)),
                "disk_ratio": 1.0,
                "reserved_vcpus": rng.choice((0, 2)),
                "reserved_ram_mb": rng.choice((0, 4096)),
                "reserved_disk_gb": rng.choice((0, 50)),
                "enabled": rng.random() > 0.03,
                "facts": {"arch": rng.choice(("x86_64", "amd64")), "kernel": "6.1"},
                "vcpus": vcpus,
                "ram_mb": vcpus * rng.choice((2048, 4096, 8192)),
                "disk_gb": rng.choice((500, 1000, 2000, 4000)),
                "domain_type": "kvm",
                "libvirt_ok": rng.random() > 0.01,
                "last_seen_at": now,
                "last_error": "ssh: timed out" if down else None,
                "failed_builds": 1 if rng.random() < 0.02 else 0,
                "missed_surveys": 0,
                "marked_down": False,
                "generation": 0,
                "created_at": now,
                "updated_at": now,
            }
        )
    return rows


async def seed(db: Database, hosts: int, servers_per_host: int) -> None:
    """``hosts`` hosts with ``servers_per_host`` claimed servers each (one in ten still
    building), written in bulk."""
    now = datetime.now(UTC)
    async with db.session() as session:
        connection = await session.connection()  # executemany: the driver batches rows
        await connection.execute(insert(Host), host_rows(hosts))
        ids = [row[0] for row in (await session.exec(Host.__table__.select())).all()]  # type: ignore[attr-defined]
        instances, allocations = [], []
        for host_id in ids:
            for n in range(servers_per_host):
                instance_uuid = str(uuid.uuid4())
                building = (host_id + n) % 10 == 0
                instances.append(
                    {
                        "uuid": instance_uuid,
                        "name": f"old-{host_id}-{n}",
                        "flavor_name": "m1.small",
                        "vcpus": 1,
                        "ram_mb": 1024,
                        "disk_gb": 10,
                        "image_name": "cirros",
                        "host_id": host_id,
                        "request_spec": {},
                        "vm_state": "building" if building else "active",
                        "task_state": TaskState.SPAWNING if building else None,
                        "power_state": "running",
                        "created_at": now,
                    }
                )
                allocations.append(
                    {
                        "instance_uuid": instance_uuid,
                        "host_id": host_id,
                        "vcpus": 1,
                        "ram_mb": 1024,
                        "disk_gb": 10,
                        "created_at": now,
                    }
                )
        if instances:
            await connection.execute(insert(Instance), instances)
            await connection.execute(insert(Allocation), allocations)


def request(instances: int, tag: str = "") -> list[RequestSpec]:
    """One request with most filters live: a label, an image, a zone, a hint."""
    extra_specs = {"label:tier": "gold", "hw:cpu_policy": "shared"}
    image = {"architecture": "x86_64", "hypervisor_type": "kvm"}
    return [
        RequestSpec(
            str(uuid.uuid4()),
            2,
            4096,
            40,
            extra_specs=extra_specs,
            image_properties=image,
            availability_zone="az1",
            different_host=frozenset({f"nobody-{tag}"}),
        )
        for _ in range(instances)
    ]


async def forget_claims(db: Database, uuids: list[str]) -> None:
    async with db.session() as session:
        for chunk in range(0, len(uuids), 5000):
            await session.exec(
                delete(Allocation).where(Allocation.instance_uuid.in_(uuids[chunk : chunk + 5000]))  # type: ignore[attr-defined]
            )


# -- databases -------------------------------------------------------------------------


async def empty(url: str) -> None:
    """Remove what an earlier part seeded (only hosts, instances and claims are)."""
    db = await open_database(url)
    try:
        async with db.session() as session:
            for table in (Allocation, Instance, Host):
                await session.exec(delete(table))  # type: ignore[call-overload]
    finally:
        await db.dispose()


@contextlib.contextmanager
def databases(engines: list[str], pg_url: str | None) -> Iterator[Callable[[str], str]]:
    """A factory of fresh, empty database URLs per engine for the run."""
    workdir = Path(tempfile.mkdtemp(prefix="herd-bench-db-", dir="/dev/shm"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        server = None
        if "postgresql" in engines and pg_url is None:
            from tests.pgserver import running

            server = stack.enter_context(running())
        made = iter(range(1_000_000))

        def fresh(engine: str) -> str:
            if engine == "sqlite":
                return f"sqlite:///{workdir}/bench-{next(made)}.db"
            if pg_url is not None:
                asyncio.run(empty(pg_url))  # one database for every part: start clean
                return pg_url
            assert server is not None
            return server.create_database()

        yield fresh


# -- 1. operators at once --------------------------------------------------------------


@dataclass
class OperatorResult:
    placed: int = 0
    refused: int = 0
    conflicts: int = 0
    errors: int = 0
    started: float = 0.0
    ended: float = 0.0
    cpu: float = 0.0  # this process's CPU seconds between started and ended
    busy_started: int = 0  # the machine's busy jiffies (all CPUs) at started
    busy_ended: int = 0


def machine_busy_jiffies() -> int:
    """All CPUs' busy time so far (/proc/stat, clock ticks): herd and PostgreSQL."""
    with open("/proc/stat") as stat:
        fields = [int(f) for f in stat.readline().split()[1:]]
    idle, iowait = fields[3], fields[4]
    return sum(fields[:8]) - idle - iowait


def _operator(url: str, requests: int, per_request: int, barrier: Any, out: Any) -> None:
    """One operator process: `requests` requests of `per_request` servers each."""
    out.put(asyncio.run(_operate(url, requests, per_request, barrier)))


async def _operate(url: str, requests: int, per_request: int, barrier: Any) -> OperatorResult:
    result = OperatorResult()
    original = scheduler_module.claim_all

    async def counted(*args: Any, **kwargs: Any) -> bool:
        claimed = await original(*args, **kwargs)
        if not claimed:  # a chosen host moved on: the request reads and decides again
            result.conflicts += 1
        return claimed

    scheduler_module.claim_all = counted  # type: ignore[assignment]
    db = Database(url)
    scheduler = FilterScheduler(db, CONFIG)
    async with db.read() as session:  # connect and warm up before the start
        await scheduler_module.load_host_states(session)
    await asyncio.to_thread(barrier.wait)
    result.started, result.busy_started = time.monotonic(), machine_busy_jiffies()
    cpu = time.process_time()
    for _ in range(requests):
        try:
            plan = await scheduler.place(request(per_request))
            result.placed += len(plan.placements)
        except NoValidHost:
            result.refused += 1
        except Exception:  # a driver error the scheduler let through: count it
            result.errors += 1
    result.ended, result.busy_ended = time.monotonic(), machine_busy_jiffies()
    result.cpu = time.process_time() - cpu
    await db.dispose()
    return result


def operators_at_once(url: str, processes: int, requests: int, per_request: int) -> tuple:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes)
    out = ctx.Queue()
    workers = [
        ctx.Process(target=_operator, args=(url, requests, per_request, barrier, out))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    results = [out.get() for _ in workers]
    for worker in workers:
        worker.join()
    first = min(results, key=lambda r: r.started)
    last = max(results, key=lambda r: r.ended)
    wall = last.ended - first.started
    placed = sum(r.placed for r in results)
    ticks = os.sysconf("SC_CLK_TCK")
    busy = (last.busy_ended - first.busy_started) / ticks / wall if wall > 0 else 0.0
    return (
        placed,
        sum(r.refused for r in results),
        sum(r.conflicts for r in results),
        sum(r.errors for r in results),
        wall,
        sum(r.cpu for r in results) / wall if wall > 0 else 0.0,
        busy,
    )


async def prepare(url: str, hosts: int, servers_per_host: int) -> None:
    db = await open_database(url)
    try:
        await seed(db, hosts, servers_per_host)
    finally:
        await db.dispose()


async def reset(url: str) -> None:
    db = Database(url)
    try:
        async with db.session() as session:
            await session.exec(delete(Allocation))  # type: ignore[call-overload]
    finally:
        await db.dispose()


def throughput_table(
    fresh: Callable[[str], str], engines: list[str], counts: list[int], args: argparse.Namespace
) -> tuple[Table, dict[str, dict[int, float]]]:
    grid = Table(
        title=(
            f"herd: placements/s, operator processes at once "
            f"({args.requests} requests of {args.per_request} each per process, "
            f"{args.op_hosts} hosts)"
        ),
        title_justify="left",
        header_style="bold",
    )
    for column in (
        "engine",
        "operators",
        "placed",
        "refused",
        "conflicts",
        "errors",
        "wall",
        "herd CPUs",
        "machine CPUs",
        "placements/s",
        "speed-up",
    ):
        grid.add_column(column, justify="right")
    rates: dict[str, dict[int, float]] = {}
    for engine in engines:
        url = fresh(engine)
        asyncio.run(prepare(url, args.op_hosts, 0))
        rates[engine] = {}
        for count in counts:
            asyncio.run(reset(url))
            placed, refused, conflicts, errors, wall, herd_cpus, busy = operators_at_once(
                url, count, args.requests, args.per_request
            )
            rate = placed / wall if wall > 0 else 0.0
            rates[engine][count] = rate
            base = rates[engine].get(counts[0]) or rate
            grid.add_row(
                engine,
                str(count),
                f"{placed:,}",
                str(refused),
                str(conflicts),
                str(errors),
                f"{wall:.2f} s",
                f"{herd_cpus:.2f}",
                f"{busy:.2f} of {os.cpu_count()}",
                f"{rate:.1f}",
                f"{rate / base:.2f}x" if base else "-",
            )
    return grid, rates


# -- 2. one big request, load included -------------------------------------------------


@dataclass
class Timings:
    load: float = 0.0
    select: float = 0.0
    total: float = 0.0

    @property
    def claim(self) -> float:
        return max(self.total - self.load - self.select, 0.0)


async def big_request(url: str, instances: int, runs: int, profile: bool) -> tuple:
    """Best of ``runs`` of FilterScheduler.place for one request of ``instances``, with
    the time in load_host_states and in select measured inside it."""
    db = Database(url)
    scheduler = FilterScheduler(db, CONFIG, rng=random.Random(1))
    timings = Timings()
    loader = scheduler_module.load_host_states
    selector = scheduler._select

    async def timed_load(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await loader(*args, **kwargs)
        finally:
            timings.load += time.perf_counter() - t0

    def timed_select(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return selector(*args, **kwargs)
        finally:
            timings.select += time.perf_counter() - t0

    scheduler_module.load_host_states = timed_load  # type: ignore[assignment]
    scheduler._select = timed_select  # type: ignore[method-assign]
    best: Timings | None = None
    placed = 0
    hosts = 0
    profiler = None
    try:
        async with db.read() as session:  # connect first: not what is measured
            await loader(session)
        for run in range(runs):
            timings.load = timings.select = 0.0
            specs = request(instances, str(run))
            if profile and run == runs - 1:
                from pyinstrument import Profiler

                profiler = Profiler(async_mode="enabled")
                profiler.start()
            t0 = time.perf_counter()
            plan = await scheduler.place(specs, min_count=1)
            timings.total = time.perf_counter() - t0
            if profiler is not None:
                profiler.stop()
            placed, hosts = len(plan.placements), len({p.host_id for p in plan.placements})
            await forget_claims(db, [s.instance_uuid for s in specs])
            if best is None or timings.total < best.total:
                best = Timings(timings.load, timings.select, timings.total)
    finally:
        scheduler_module.load_host_states = loader  # type: ignore[assignment]
        await db.dispose()
    assert best is not None
    return best, placed, hosts, profiler


def scale_table(
    fresh: Callable[[str], str], engines: list[str], args: argparse.Namespace
) -> tuple[Table, dict[str, float], list[Any]]:
    grid = Table(
        title=(
            f"herd: one request of {args.instances:,} on {args.hosts:,} hosts, "
            f"load from the DB included (best of {args.runs})"
        ),
        title_justify="left",
        header_style="bold",
    )
    for column in (
        "engine",
        "hosts",
        "claims held",
        "instances",
        "seed",
        "load",
        "filter+weigh",
        "claim",
        "total",
        "placed",
        "used",
    ):
        grid.add_column(column, justify="right")
    totals: dict[str, float] = {}
    profiles = []
    for engine in engines:
        url = fresh(engine)
        t0 = time.perf_counter()
        asyncio.run(prepare(url, args.hosts, args.servers_per_host))
        seeded = time.perf_counter() - t0
        best, placed, used, profiler = asyncio.run(
            big_request(url, args.instances, args.runs, args.profile)
        )
        if profiler is not None:
            profiles.append((engine, profiler))
        totals[engine] = best.total
        grid.add_row(
            engine,
            f"{args.hosts:,}",
            f"{args.hosts * args.servers_per_host:,}",
            f"{args.instances:,}",
            f"{seeded:.1f} s",
            f"{best.load * 1000:.0f} ms",
            f"{best.select * 1000:.0f} ms",
            f"{best.claim * 1000:.0f} ms",
            f"{best.total * 1000:.0f} ms",
            f"{placed:,}",
            f"{used:,}",
        )
    return grid, totals, profiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", nargs="+", default=["postgresql", "sqlite"])
    parser.add_argument("--pg-url", help="an empty PostgreSQL database to use instead")
    parser.add_argument("--operators", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--requests", type=int, default=40, help="requests per operator")
    parser.add_argument("--per-request", type=int, default=2, help="servers per request")
    parser.add_argument("--op-hosts", type=int, default=100, help="hosts for part 1")
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--servers-per-host", type=int, default=2, help="claims already held")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip", choices=("operators", "scale"), action="append", default=[])
    parser.add_argument("--profile", action="store_true", help="pyinstrument the big request")
    args = parser.parse_args()
    console = Console()
    if console.width < 140:  # piped, or a narrow terminal: keep the columns readable
        console = Console(width=140)
    with databases(args.engines, args.pg_url) as fresh:
        if "operators" not in args.skip:
            grid, rates = throughput_table(fresh, args.engines, args.operators, args)
            console.print(grid)
            for engine, by_count in rates.items():
                if 1 in by_count and 4 in by_count and by_count[1]:
                    console.print(
                        f"goal ({engine}): 4 operators >= {GOAL_SPEEDUP:.0f}x one — "
                        f"{by_count[4] / by_count[1]:.2f}x"
                    )
        if "scale" not in args.skip:
            grid, totals, profiles = scale_table(fresh, args.engines, args)
            console.print(grid)
            for engine, total in totals.items():
                console.print(
                    f"goal ({engine}): {args.instances:,} on {args.hosts:,} hosts "
                    f"<= {GOAL_SECONDS:.0f} s including the load — {total * 1000:.0f} ms"
                )
            for engine, profiler in profiles:
                console.print(f"[bold]profile ({engine})[/bold]")
                console.print(profiler.output_text(unicode=True, color=False, show_all=False))


if __name__ == "__main__":
    main()
