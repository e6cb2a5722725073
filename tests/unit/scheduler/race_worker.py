"""One of two OS processes racing to claim on the same hosts (see test_race.py)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from pathlib import Path

from orchestrator.db.engine import open_database
from orchestrator.errors import NoValidHost
from orchestrator.scheduler.request import RequestSpec
from orchestrator.scheduler.scheduler import FilterScheduler


async def main(url: str, requests: int, per_request: int) -> int:
    db = await open_database(url)
    scheduler = FilterScheduler(db)
    placed = 0
    for _ in range(requests):
        specs = [RequestSpec(str(uuid.uuid4()), 1, 512, 1) for _ in range(per_request)]
        with contextlib.suppress(NoValidHost):
            placed += len((await scheduler.place(specs)).placements)
    await db.dispose()
    return placed


if __name__ == "__main__":
    url, go, requests, per_request = sys.argv[1], Path(sys.argv[2]), *map(int, sys.argv[3:5])
    while not go.exists():  # both processes start claiming at the same moment
        time.sleep(0.001)
    print(asyncio.run(main(url, requests, per_request)))
