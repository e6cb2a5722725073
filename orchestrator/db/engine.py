"""Where the database lives and how we talk to it.

SQLite (WAL) is the embedded default; PostgreSQL when several operators or cron
hosts share the state. The orchestrator is asyncio end to end, so it uses the async
drivers (aiosqlite, psycopg 3); migrations run once at start-up on a sync engine in a
worker thread.
"""

from __future__ import annotations

import asyncio
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from orchestrator.db.connection import (
    BEGIN,
    SQLITE_HEADER,
    async_url,
    busy,
    check_url,
    configure_sqlite,
    database_url,
    engine_options,
    is_busy,
    is_sqlite,
    is_unavailable,
    sqlite_file,
    unavailable,
    where,
)
from orchestrator.db.migrate import upgrade_to_head
from orchestrator.errors import DatabaseUnavailable, HerdError
from orchestrator.local_files import create_private_file, make_private_dirs, withdraw_from_others


def prepare_sqlite_file(path: Path) -> None:
    """Make sure ``path`` can be herd's SQLite database, and a private one.

    Refused in one line (``DatabaseUnavailable``, exit 9): a directory, a device, a
    file that is not SQLite's, a parent that is not a directory. A new database and
    the directories herd makes for it are created 0600 / 0700 (SQLite gives its
    -wal and -shm files the database file's mode); an existing one that every user
    may read is withdrawn from them (``withdraw_from_others``), its -wal and -shm too."""

    def refuse(problem: str) -> HerdError:
        return DatabaseUnavailable(f"database {path}: {problem}")

    try:
        make_private_dirs(path.parent)
    except OSError as exc:
        raise refuse(f"cannot create {exc.filename or path.parent}: {exc.strerror}") from None
    if not path.parent.is_dir():
        raise refuse(f"{path.parent} is not a directory")
    try:
        if create_private_file(path):
            return
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise refuse("is a directory; name a file in it (.../herd.db)")
        if not stat.S_ISREG(info.st_mode):
            raise refuse("is not a regular file")
        with open(path, "rb") as fh:
            header = fh.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise refuse(exc.strerror or str(exc)) from None
    if header and header != SQLITE_HEADER:
        raise refuse("is not a SQLite database (herd never writes over another file)")
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        withdraw_from_others(file)


def unusable(url: str, exc: DBAPIError) -> HerdError:
    """A database that refused us: unreachable, missing or a login refused
    (``DatabaseUnavailable``, exit 9); otherwise (a damaged file) one line in the
    driver's own words."""
    if is_unavailable(exc):
        return unavailable(url, exc)
    reason = str(exc.orig).strip().splitlines()
    return HerdError(f"database {where(url)}: {reason[0] if reason else type(exc.orig).__name__}")


def db_errors(url: str, exc: DBAPIError) -> HerdError | None:
    """What a DB error met in the middle of a command means to the operator: "busy"
    or "unavailable" (the connection lost: its transaction is rolled back by the
    server), or None for an error that is a bug."""
    if is_busy(exc):
        return busy(url)
    if is_unavailable(exc):
        return unavailable(url, exc)
    return None


def _refuse_writes(session: Any, _context: Any, _instances: Any) -> None:
    raise RuntimeError("a write in a read-only session (Database.read); use Database.session")


class Database:
    """The async engine plus a session factory; one per process."""

    def __init__(self, url: str | None = None) -> None:
        self.url = check_url(url or database_url())
        path = sqlite_file(self.url) if is_sqlite(self.url) else None
        if path is not None:
            prepare_sqlite_file(path)
        self.engine: AsyncEngine = create_async_engine(
            async_url(self.url), **engine_options(self.url)
        )
        if is_sqlite(self.url):
            configure_sqlite(self.engine.sync_engine)
        # The same pool; only how a transaction begins differs (see configure_sqlite).
        self.read_engine: AsyncEngine = self.engine.execution_options(**{BEGIN: "DEFERRED"})

    async def migrate(self) -> None:
        """Bring the schema to head: also the first contact with the database, where
        an unreachable server or a damaged file shows."""
        try:
            await asyncio.to_thread(upgrade_to_head, self.url)
        except DBAPIError as exc:
            raise unusable(self.url, exc) from None

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session whose transaction commits when the block ends without error."""
        try:
            async with (
                AsyncSession(self.engine, expire_on_commit=False) as session,
                session.begin(),
            ):
                yield session
        except DBAPIError as exc:
            known = db_errors(self.url, exc)
            if known is not None:
                raise known from None
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
        except DBAPIError as exc:  # in WAL only a checkpoint or a recovery makes a reader wait
            known = db_errors(self.url, exc)
            if known is not None:
                raise known from None
            raise

    async def dispose(self) -> None:
        await self.engine.dispose()


async def open_database(url: str | None = None) -> Database:
    db = Database(url)
    await db.migrate()
    return db
