"""Where the database lives and how we talk to it.

SQLite (WAL) is the embedded default; PostgreSQL when several operators or cron
hosts share the state. The orchestrator is asyncio end to end, so it uses the async
drivers (aiosqlite, psycopg 3); migrations run once at start-up on a sync engine in a
worker thread.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from orchestrator.errors import HerdError

ENV_URL = "HERD_DATABASE_URL"


def default_database_url() -> str:
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return f"sqlite:///{data_home / 'herd' / 'herd.db'}"


def database_url() -> str:
    return os.environ.get(ENV_URL) or default_database_url()


def _with_driver(url: str, *, sync: bool) -> str:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        driver = "pysqlite" if sync else "aiosqlite"
    elif backend == "postgresql":
        driver = "psycopg"
    else:
        raise HerdError(f"{ENV_URL}: unsupported database {backend!r} (use sqlite or postgresql)")
    return parsed.set(drivername=f"{backend}+{driver}").render_as_string(hide_password=False)


def sync_url(url: str) -> str:
    return _with_driver(url, sync=True)


def async_url(url: str) -> str:
    return _with_driver(url, sync=False)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def sqlite_file(url: str) -> Path | None:
    database = make_url(url).database
    if not database or database == ":memory:":
        return None
    return Path(database)


def configure_sqlite(sync_engine: Any) -> None:
    """WAL so readers never wait for a writer; IMMEDIATE transactions so two
    processes claiming at once queue on the write lock instead of failing with
    SQLITE_BUSY when a reader upgrades to a writer."""

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """The async engine plus a session factory; one per process."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url or database_url()
        path = sqlite_file(self.url) if is_sqlite(self.url) else None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.engine: AsyncEngine = create_async_engine(async_url(self.url))
        if is_sqlite(self.url):
            configure_sqlite(self.engine.sync_engine)

    async def migrate(self) -> None:
        from orchestrator.db.migrate import upgrade_to_head

        await asyncio.to_thread(upgrade_to_head, self.url)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session whose transaction commits when the block ends without error."""
        async with (
            AsyncSession(self.engine, expire_on_commit=False) as session,
            session.begin(),
        ):
            yield session

    async def dispose(self) -> None:
        await self.engine.dispose()


async def open_database(url: str | None = None) -> Database:
    db = Database(url)
    await db.migrate()
    return db
