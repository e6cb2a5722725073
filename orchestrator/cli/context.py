"""What every command needs: the database, the agent pool, the conductor."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from orchestrator.conductor import Conductor, Progress
from orchestrator.config import HerdConfig, load_config
from orchestrator.db.engine import Database, open_database
from orchestrator.rpc.pool import AgentPool

T = TypeVar("T")


@dataclass
class Herd:
    db: Database
    pool: AgentPool
    conductor: Conductor
    config: HerdConfig


@asynccontextmanager
async def herd(progress: Progress | None = None) -> AsyncIterator[Herd]:
    config = load_config()
    db = await open_database()
    pool = AgentPool()
    try:
        conductor = Conductor(db, pool, progress, scheduler_config=config.scheduler)
        yield Herd(db, pool, conductor, config)
    finally:
        await pool.close()
        await db.dispose()


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)
