"""Wall time of one `herd reconcile`: 3 real lab hosts with 30 servers, then 200 hosts.

The 200 are simulated the cheap way the issue allows: one extra sshd on loopback
(127.0.102.200) stands for every host, and each "host" gets its own agent process and
state directory, with libvirt's built-in ``test:///default`` driver instead of a
libvirtd. Everything else is the real path: an SSH connection per host, the agent
bundle, hello, list and jobs. Each run is a fresh AgentPool, as each cron run is a
fresh process.

Run as root:  python -m bench.reconcile [--servers 30] [--hosts 200] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table
from sqlmodel import select

from orchestrator.api import servers as servers_api
from orchestrator.conductor.manager import Conductor
from orchestrator.db.engine import Database, open_database
from orchestrator.db.models import Instance
from orchestrator.inventory.apply import apply_inventory
from orchestrator.inventory.loader import load_inventory
from orchestrator.lab import Lab
from orchestrator.reconcile.config import ReconcileConfig
from orchestrator.reconcile.reconciler import Reconciler
from orchestrator.rpc.pool import AgentPool

SIM_ADDRESS = "127.0.102.200"
SIM_PORT = 2222


async def timed_runs(db: Database, runs: int) -> tuple[list[float], int, int]:
    """Wall times of ``runs`` reconciles, each with a fresh pool; findings of the last."""
    times, findings, answered = [], 0, 0
    config = ReconcileConfig(host_timeout=60, unknown_domains="noop")
    for _ in range(runs):
        async with AgentPool() as pool:
            t0 = time.perf_counter()
            report = await Reconciler(Conductor(db, pool), config).run()
            times.append(time.perf_counter() - t0)
        findings = len(report.findings)
        answered = len(report.surveys) - len(report.unreachable)
        errors = sorted({s.error for s in report.surveys if s.error})
        if errors:
            print(f"{len(report.unreachable)} hosts did not answer, e.g.:", *errors[:3], sep="\n  ")
    return times, findings, answered


def simulated_sshd(workdir: Path, authorized: Path) -> tuple[subprocess.Popen[bytes], str]:
    """One sshd for all simulated hosts, allowing hundreds of connections at once."""
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    key = workdir / "sim_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    config = workdir / "sim_sshd_config"
    config.write_text(
        "\n".join(
            [
                f"ListenAddress {SIM_ADDRESS}",
                f"Port {SIM_PORT}",
                f"HostKey {key}",
                f"AuthorizedKeysFile {authorized}",
                f"PidFile {workdir / 'sim_sshd.pid'}",
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "MaxStartups 1000",
                # bash skips ~/.bashrc when SHLVL says it is nested: this machine's root
                # .bashrc runs `pyenv init` (~0.2 s of CPU per SSH command), which a
                # hypervisor's would not; 200 of them at once would measure pyenv.
                "SetEnv SHLVL=3",
                "Subsystem sftp internal-sftp",
                "",
            ]
        )
    )
    process = subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", str(config)])
    for _ in range(100):
        try:
            with socket.create_connection((SIM_ADDRESS, SIM_PORT), timeout=0.2):
                break
        except OSError:
            time.sleep(0.05)
    keytype, blob, *_ = Path(f"{key}.pub").read_text().split()
    return process, f"[{SIM_ADDRESS}]:{SIM_PORT} {keytype} {blob}\n"


async def measure(args: argparse.Namespace, workdir: Path) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    lab = Lab(workdir / "lab", base_address="198.18.110.1")
    info = lab.up(3)
    sshd = None
    try:
        db = await open_database(f"sqlite:///{workdir / 'lab.db'}")
        await apply_inventory(db, load_inventory(info.inventory))
        async with AgentPool() as pool:
            conductor = Conductor(db, pool)
            outcomes = []
            # In batches: the io_ops filter allows 8 builds at once per host.
            for batch, start in enumerate(range(0, args.servers, 12)):
                count = min(12, args.servers - start)
                instances = await servers_api.create_servers(
                    db, servers_api.CreateRequest(f"rc{batch}", "m1.nano", "blank", count)
                )
                outcomes += await conductor.build(instances)
        active = sum(o.vm_state == "active" for o in outcomes)
        errors = {o.error for o in outcomes if o.error}
        if errors:
            print("not all servers booted:", *sorted(errors)[:3], sep="\n  ")
        times, findings, answered = await timed_runs(db, args.runs)
        rows.append(
            (
                f"reconcile 3 lab hosts, {active} servers (median of {args.runs}; "
                f"{answered} answered, {findings} findings)",
                f"{statistics.median(times):.2f} s",
            )
        )
        t0 = time.perf_counter()
        env = {**os.environ, "HERD_DATABASE_URL": f"sqlite:///{workdir / 'lab.db'}"}
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "orchestrator", "reconcile"],
            env=env,
            capture_output=True,
        )
        rows.append(
            (
                f"`herd reconcile` process, 3 lab hosts (exit {done.returncode})",
                f"{time.perf_counter() - t0:.2f} s",
            )
        )
        # The blank guests spin in their firmware under TCG: gone before the next part,
        # whose agents would otherwise compete with them for the same two cores.
        async with AgentPool() as pool:
            async with db.session() as session:
                alive = list((await session.exec(select(Instance))).all())
            await Conductor(db, pool).delete(alive)
        await db.dispose()

        sshd, known = simulated_sshd(workdir, info.key.with_name(info.key.name + ".pub"))
        known_hosts = workdir / "sim_known_hosts"
        known_hosts.write_text(known)
        fleet = {
            "hosts": [
                {
                    "name": f"sim-{n:03d}",
                    "address": SIM_ADDRESS,
                    "ssh": {
                        "port": SIM_PORT,
                        "key": str(info.key),
                        "known_hosts": str(known_hosts),
                    },
                    "libvirt_uri": "test:///default",
                    "agent_dir": str(workdir / "sim" / f"{n:03d}"),
                    "domain_type": "qemu",
                }
                for n in range(1, args.hosts + 1)
            ]
        }
        inventory = workdir / "fleet.yaml"
        inventory.write_text(yaml.safe_dump(fleet))
        db = await open_database(f"sqlite:///{workdir / 'fleet.db'}")
        await apply_inventory(db, load_inventory(inventory))
        cold, _, answered = await timed_runs(db, 1)
        rows.append(
            (
                f"reconcile {args.hosts} simulated hosts, first run ({answered} answered)",
                f"{cold[0]:.2f} s",
            )
        )
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        times, findings, answered = await timed_runs(db, args.runs)
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) / args.runs
        rows.append(
            (
                f"reconcile {args.hosts} simulated hosts (median of {args.runs}; "
                f"{answered} answered; goal < 2 s)",
                f"{statistics.median(times):.2f} s",
            )
        )
        rows.append(
            (
                "  of which the orchestrator's own CPU per run (SSH client, DB, drift rules)",
                f"{cpu:.2f} s",
            )
        )
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rows.append(("orchestrator peak RSS over the whole benchmark", f"{peak:.0f} MiB"))
        await db.dispose()
    finally:
        if sshd is not None:
            sshd.terminate()
            sshd.wait()
        lab.down()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--servers", type=int, default=30)
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="herd-bench-rc-") as tmp:
        rows = asyncio.run(measure(args, Path(tmp)))
    grid = Table(title="herd reconcile", title_justify="left", header_style="bold")
    grid.add_column("measure")
    grid.add_column("value", justify="right")
    for row in rows:
        grid.add_row(*row)
    Console().print(grid)


if __name__ == "__main__":
    main()
