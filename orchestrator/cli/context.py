"""What every command needs: the database and the config; the agent pool and the
conductor only for commands that contact hosts.

The pool and the conductor are made on first use: importing them brings in SSH,
the scheduler and the workflows, which a command that only reads the DB (`server
list`, `host list`) should not wait for.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.exc import DBAPIError

from orchestrator.config import HerdConfig, load_config
from orchestrator.db.engine import Database, db_errors, open_database

if TYPE_CHECKING:
    from orchestrator.conductor.manager import Conductor, Progress
    from orchestrator.rpc.pool import AgentPool

T = TypeVar("T")


class Herd:
    def __init__(self, db: Database, config: HerdConfig, progress: Progress | None) -> None:
        self.db = db
        self.config = config
        self.progress = progress
        self._pool: AgentPool | None = None
        self._conductor: Conductor | None = None

    @property
    def pool(self) -> AgentPool:
        if self._pool is None:
            from orchestrator.rpc.pool import AgentPool

            self._pool = AgentPool()
        return self._pool

    @property
    def conductor(self) -> Conductor:
        if self._conductor is None:
            from orchestrator.conductor.manager import Conductor

            self._conductor = Conductor(
                self.db, self.pool, self.progress, scheduler_config=self.config.scheduler
            )
        return self._conductor

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()


@asynccontextmanager
async def herd(progress: Progress | None = None) -> AsyncIterator[Herd]:
    config = load_config()
    db = await open_database()
    handle = Herd(db, config, progress)
    try:
        yield handle
    except DBAPIError as exc:
        # Outside Database.session too (an engine of its own, a lock): one line.
        known = db_errors(db.url, exc)
        if known is None:
            raise
        raise known from None
    finally:
        await handle.close()
        await db.dispose()


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)
