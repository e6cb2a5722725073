"""Placement speed of the pure scheduler core: 1,000 instances on 1,000 and 10,000 hosts.

No DB, no lab: simulated host states (varied sizes, some disabled or down, labels,
zones, existing usage and build failures) and one request with every filter and
weigher live. Goal: 1,000 instances on 10,000 hosts in under 1 s.
    python -m bench.scheduler [--instances 1000] [--hosts 1000 10000] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import random
import time
import tracemalloc
import uuid
from collections import Counter

from rich.console import Console
from rich.table import Table

from orchestrator.scheduler.config import DEFAULT_WEIGHTS, SchedulerConfig
from orchestrator.scheduler.engine import Selection, select_destinations
from orchestrator.scheduler.host_state import HostState
from orchestrator.scheduler.request import GroupState, RequestSpec

GOAL_SECONDS = 1.0
GOAL_SHAPE = (1000, 10_000)

# Every weigher live: num_instances is 0 by default in Nova, so give it a spreading sign.
CONFIG = SchedulerConfig(weights={**DEFAULT_WEIGHTS, "num_instances": -0.5}, host_subset_size=3)


def make_hosts(count: int, seed: int = 7) -> list[HostState]:
    rng = random.Random(seed)
    hosts = []
    for i in range(count):
        vcpus = rng.choice((16, 32, 64, 128))
        ram_mb = vcpus * rng.choice((2048, 4096, 8192))
        disk_gb = rng.choice((500, 1000, 2000, 4000))
        status = "down" if rng.random() < 0.02 else "up"
        used = rng.random() * 0.6
        instances = rng.randrange(0, 30)
        hosts.append(
            HostState(
                id=i,
                name=f"hv{i:05d}",
                enabled=rng.random() > 0.03,
                libvirt_ok=rng.random() > 0.01,
                libvirt_error="no socket",
                total_vcpus=vcpus,
                total_ram_mb=ram_mb,
                total_disk_gb=disk_gb,
                cpu_ratio=rng.choice((1.0, 4.0, 16.0)),
                ram_ratio=rng.choice((1.0, 1.5)),
                disk_ratio=1.0,
                reserved_vcpus=rng.choice((0, 2)),
                reserved_ram_mb=rng.choice((0, 4096)),
                reserved_disk_gb=rng.choice((0, 50)),
                generation=0,
                last_seen_at=None,
                availability_zone="az1" if rng.random() < 0.85 else "az2",
                labels={"tier": "gold" if rng.random() < 0.9 else "bronze", "ssd": "true"},
                used_vcpus=int(vcpus * used),
                used_ram_mb=int(ram_mb * used),
                used_disk_gb=int(disk_gb * used),
                instances=instances,
                status=status,
                seen_seconds_ago=rng.random() * (1000 if status == "down" else 120),
                arch=rng.choice(("x86_64", "amd64")),
                domain_type="kvm",
                builds_in_progress=rng.randrange(0, 3),
                failed_builds=1 if rng.random() < 0.02 else 0,
                instance_uuids={f"existing-{i}-{n}" for n in range(min(instances, 2))},
            )
        )
    return hosts


def make_request(instances: int) -> list[RequestSpec]:
    group = GroupState(1, "web", "soft-anti-affinity", Counter({0: 1, 1: 2}))
    extra_specs = {"label:tier": "gold", "hw:cpu_policy": "shared"}
    image = {"architecture": "x86_64", "hypervisor_type": "kvm"}
    avoid = frozenset({"existing-3-0", "existing-5-1"})
    return [
        RequestSpec(
            str(uuid.uuid4()),
            2,
            4096,
            40,
            extra_specs=extra_specs,
            image_properties=image,
            availability_zone="az1",
            group=group,
            different_host=avoid,
        )
        for _ in range(instances)
    ]


def place(host_count: int, instances: int) -> tuple[list[HostState], Selection, float]:
    hosts = make_hosts(host_count)
    specs = make_request(instances)
    gc.collect()
    t0 = time.perf_counter()
    selection = select_destinations(hosts, specs, CONFIG, random.Random(1))
    return hosts, selection, time.perf_counter() - t0


def measure(host_count: int, instances: int, runs: int = 3) -> tuple[str, ...]:
    t0 = time.perf_counter()
    make_hosts(host_count)
    setup = time.perf_counter() - t0
    best = float("inf")
    for _ in range(runs):
        _, selection, elapsed = place(host_count, instances)
        best = min(best, elapsed)
    hosts = make_hosts(host_count)
    specs = make_request(instances)
    tracemalloc.start()
    select_destinations(hosts, specs, CONFIG, random.Random(1))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    placed = selection.placed
    used = len({c.host.id for c in placed if c.host is not None})
    fits = sum(v.passed for v in selection.explanation)
    return (
        f"{host_count:,}",
        f"{instances:,}",
        f"{setup * 1000:.0f} ms",
        f"{best * 1000:.0f} ms",
        f"{best / instances * 1e6:.0f} µs",
        f"{peak / 2**20:.1f} MiB",
        f"{fits:,}",
        f"{len(placed):,}",
        f"{used:,}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=GOAL_SHAPE[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[1000, GOAL_SHAPE[1]])
    parser.add_argument("--profile", action="store_true", help="cProfile the largest run")
    args = parser.parse_args()
    if args.profile:
        profiler = cProfile.Profile()
        hosts, specs = make_hosts(max(args.hosts)), make_request(args.instances)
        profiler.runcall(select_destinations, hosts, specs, CONFIG, random.Random(1))
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
        return
    grid = Table(
        title="herd: scheduler placement (all filters and weighers, best of 3)",
        title_justify="left",
        header_style="bold",
    )
    for column in (
        "hosts",
        "instances",
        "setup",
        "place",
        "/instance",
        "peak mem",
        "fit",
        "placed",
        "used",
    ):
        grid.add_column(column, justify="right")
    results = {}
    for host_count in args.hosts:
        row = measure(host_count, args.instances)
        results[host_count] = row
        grid.add_row(*row)
    console = Console()
    console.print(grid)
    instances, host_count = GOAL_SHAPE
    if args.instances == instances and host_count in results:
        took = results[host_count][3]
        console.print(
            f"goal: {instances:,} instances on {host_count:,} hosts in < 1 s — took {took}"
        )


if __name__ == "__main__":
    main()
