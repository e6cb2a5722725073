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
from sqlalchemy.exc import OperationalError
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


BUSY_TIMEOUT_MS = 30000
# Execution option: how this connection's SQLite transactions begin (IMMEDIATE when
# unset). DEFERRED for pure reads, EXCLUSIVE for the schema upgrade.
BEGIN = "herd_begin"


def configure_sqlite(sync_engine: Any) -> None:
    """WAL so readers never wait for a writer. A writer's transaction begins
    IMMEDIATE, so two processes claiming at once queue on the write lock instead of
    failing with SQLITE_BUSY when a reader upgrades to a writer. A transaction that
    only reads (``Database.read``, execution option ``herd_begin="DEFERRED"``) begins
    DEFERRED and never takes the write lock: a `server list` answers while another
    process writes. It must stay a pure read: in WAL a deferred transaction that
    writes after reading can fail with SQLITE_BUSY_SNAPSHOT, whatever the timeout."""

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # The timeout first: switching a new file to WAL needs a lock of its own.
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        mode = connection.get_execution_options().get(BEGIN, "IMMEDIATE")
        connection.exec_driver_sql(f"BEGIN {mode}")


class DatabaseBusy(HerdError):
    """Another process held the database's lock for longer than we wait for it."""


# SQLite's words for SQLITE_BUSY / SQLITE_LOCKED; PostgreSQL's lock_not_available.
_BUSY_MESSAGES = ("database is locked", "database table is locked", "database is busy")
_PG_LOCK_NOT_AVAILABLE = "55P03"


def is_busy(exc: BaseException) -> bool:
    """Whether a DB error means "someone else holds the lock", not "broken"."""
    orig = getattr(exc, "orig", exc)
    if getattr(orig, "sqlstate", None) == _PG_LOCK_NOT_AVAILABLE:
        return True
    return any(words in str(orig).lower() for words in _BUSY_MESSAGES)


def where(url: str) -> str:
    """The database as an operator names it: the SQLite file, or the URL sans password."""
    path = sqlite_file(url) if is_sqlite(url) else None
    return str(path) if path is not None else make_url(url).render_as_string(hide_password=True)


def busy(url: str) -> DatabaseBusy:
    return DatabaseBusy(
        f"the database {where(url)} is locked by another process "
        f"(waited {BUSY_TIMEOUT_MS // 1000} s); try again when it is done"
    )


def _refuse_writes(session: Any, _context: Any, _instances: Any) -> None:
    raise RuntimeError("a write in a read-only session (Database.read); use Database.session")


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
        # The same pool; only how a transaction begins differs (see configure_sqlite).
        self.read_engine: AsyncEngine = self.engine.execution_options(**{BEGIN: "DEFERRED"})

    async def migrate(self) -> None:
        from orchestrator.db.migrate import upgrade_to_head

        await asyncio.to_thread(upgrade_to_head, self.url)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session whose transaction commits when the block ends without error."""
        try:
            async with (
                AsyncSession(self.engine, expire_on_commit=False) as session,
                session.begin(),
            ):
                yield session
        except OperationalError as exc:
            if is_busy(exc):
                raise busy(self.url) from None
            raise

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session for reads only (listings, show, surveys, the scheduler's view of
        the hosts): on SQLite it never waits for, nor holds up, a writer. A flush
        in it is a bug and raises; closing the session ends its transaction."""
        try:
            async with AsyncSession(self.read_engine, expire_on_commit=False) as session:
                event.listen(session.sync_session, "before_flush", _refuse_writes)
                yield session
        except OperationalError as exc:
            if is_busy(exc):  # in WAL only a checkpoint or a recovery makes a reader wait
                raise busy(self.url) from None
            raise

    async def dispose(self) -> None:
        await self.engine.dispose()


async def open_database(url: str | None = None) -> Database:
    db = Database(url)
    await db.migrate()
    return db
