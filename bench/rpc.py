"""Agent round-trip latency over the persistent session, and time to boot 8 VMs.

Run as root (it brings up its own 3-host lab on 127.0.102.x and tears it down):
    python -m bench.rpc [--calls 2000] [--servers 8]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from orchestrator import api
from orchestrator.conductor import Conductor, target_of
from orchestrator.db.engine import open_database
from orchestrator.inventory.apply import apply_inventory
from orchestrator.inventory.loader import load_inventory
from orchestrator.lab import Lab
from orchestrator.rpc.pool import AgentPool
from orchestrator.rpc.session import AgentSession


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def measure(
    inventory: Path, workdir: Path, calls: int, servers: int
) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    db = await open_database(f"sqlite:///{workdir / 'bench.db'}")
    await apply_inventory(db, load_inventory(inventory))
    hosts = await api.find_hosts(db, None)
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
        instances = await api.create_servers(
            db, api.CreateRequest("bench", "m1.nano", "blank", servers)
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
    await db.dispose()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--servers", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="herd-bench-") as tmp:
        workdir = Path(tmp)
        lab = Lab(workdir / "lab", base_address="127.0.102.1")
        t0 = time.perf_counter()
        info = lab.up(3)
        lab_up = time.perf_counter() - t0
        try:
            rows = [("lab up (3 hosts)", f"{lab_up:.2f} s")]
            rows += asyncio.run(measure(info.inventory, workdir, args.calls, args.servers))
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
