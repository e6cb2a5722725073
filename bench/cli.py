"""Wall time of `herd` start-up: what an operator waits for before the first line.

Each figure is a whole process, started N times after one warm-up, as a shell would
start it; the median and the fastest run are printed beside `python3 -c pass` (the
floor no Python CLI goes under) and the goals of issue 14. The server listings read
a fresh SQLite database seeded with 1,000 servers by ``bench.seed_servers``, once
without a settings file and once with one (HERD_CONFIG).

    python -m bench.cli [--runs 15] [--servers 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.seed_servers import seed
from orchestrator.db.engine import open_database


def herd_command() -> str:
    """The console script installed beside this Python, else the one on PATH."""
    beside = Path(sys.executable).with_name("herd")
    found = str(beside) if beside.exists() else shutil.which("herd")
    if found is None:
        sys.exit("no `herd` script found: pip install -e . first")
    return found


def once(argv: list[str], env: dict[str, str]) -> float:
    """Wall milliseconds of one run of ``argv``, its output discarded."""
    t0 = time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = (time.perf_counter() - t0) * 1000
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed: {done.stderr.decode(errors='replace')}")
    return elapsed


def wall_ms(argv: list[str], env: dict[str, str], runs: int) -> list[float]:
    """Wall milliseconds of ``runs`` runs of ``argv`` after one warm-up."""
    once(argv, env)
    return [once(argv, env) for _ in range(runs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--servers", type=int, default=1000)
    args = parser.parse_args()
    herd = herd_command()
    with tempfile.TemporaryDirectory(prefix="herd-bench-cli-") as scratch:
        url = f"sqlite:///{scratch}/herd.db"
        env = {**os.environ, "HERD_DATABASE_URL": url, "XDG_CACHE_HOME": f"{scratch}/cache"}
        os.environ["HERD_DATABASE_URL"] = url

        async def seeded() -> None:
            db = await open_database(url)
            try:
                await seed(db, args.servers, hosts=10)
            finally:
                await db.dispose()

        asyncio.run(seeded())
        listed = f"{args.servers:,} servers"
        settings = Path(scratch) / "config.yaml"
        settings.write_text("scheduler:\n  max_attempts: 3\n")
        # The warm-up run reads the file the normal way and accepts it (config_seen.py).
        configured = {**env, "HERD_CONFIG": str(settings)}
        listing = [herd, "server", "list"]
        cases = [
            ("python3 -c pass", [sys.executable, "-c", "pass"], "-", env),
            ("herd --version", [herd, "--version"], "≤ 150", env),
            ("herd --help", [herd, "--help"], "≤ 150", env),
            (f"herd server list ({listed})", listing, "≤ 300", env),
            (f"herd server list --json ({listed})", [*listing, "--json"], "-", env),
            (f"herd server list, a settings file ({listed})", listing, "≤ 300", configured),
        ]
        table = Table(title=f"herd start-up, wall ms over {args.runs} runs", title_justify="left")
        for column in ("command", "median", "min", "goal"):
            table.add_column(column, justify="left" if column == "command" else "right")
        for name, argv, goal, environment in cases:
            times = wall_ms(argv, environment, args.runs)
            table.add_row(name, f"{statistics.median(times):.0f}", f"{min(times):.0f}", goal)
        first = [  # a fresh help cache each time
            once([herd, "--help"], {**env, "XDG_CACHE_HOME": f"{scratch}/cold-{n}"})
            for n in range(max(3, args.runs // 3))
        ]
        table.add_row(
            "herd --help (first run: typer renders, fills the cache)",
            f"{statistics.median(first):.0f}",
            f"{min(first):.0f}",
            "-",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
