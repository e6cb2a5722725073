"""Two herd processes booting at the same moment against one database never
oversubscribe a host: the claims' generation check holds across processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from orchestrator.db.engine import Database
from orchestrator.scheduler.loader import load_host_states

# Many small hosts: every host filling up is a moment where a stale view would overbook.
HOSTS = 20
SLOTS_PER_HOST = 2  # 1 GiB of RAM / 512 MiB instances


async def test_two_processes_claiming_at_once_never_oversubscribe(
    db: Database, db_url: str, add_host, tmp_path: Path
) -> None:
    for n in range(HOSTS):
        await add_host(f"hv{n}", ram_mb=SLOTS_PER_HOST * 512, vcpus=256, disk_gb=1000)
    go = tmp_path / "go"
    workers = [
        subprocess.Popen(  # noqa: ASYNC220 (the loop has nothing else to do meanwhile)
            [sys.executable, "-m", "tests.unit.scheduler.race_worker", db_url, str(go), "30", "1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    go.touch()
    placed = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        placed.append(int(out))

    async with db.session() as session:
        states = await load_host_states(session)
    # 2 processes x 30 requests = 60 wanted, 40 fit: exactly full, never over.
    assert sum(placed) == HOSTS * SLOTS_PER_HOST
    assert all(0 < n < HOSTS * SLOTS_PER_HOST for n in placed), placed  # both really raced
    for state in states:
        assert state.used_ram_mb <= state.total_ram_mb * state.ram_ratio - state.reserved_ram_mb
        assert state.used_ram_mb == SLOTS_PER_HOST * 512
