"""One reconcile at a time: a lock that a killed run can never leave behind.

SQLite: ``flock`` on a file next to the database; the kernel drops it when the holder
dies, however it dies, so a "stale" lock is recovered by construction. The file holds
the holder's pid and start time, for the message a second run prints.
PostgreSQL: a session-level advisory lock, so runs on several machines exclude each
other; it too dies with the holder's connection, which names its pid and machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import stat
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import sqlalchemy
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from orchestrator.db.connection import async_url, engine_options, is_sqlite, sqlite_file
from orchestrator.errors import HerdError
from orchestrator.local_files import PRIVATE_FILE, make_private_dirs

# "herd" in ASCII: the advisory lock key every herd uses for reconcile.
ADVISORY_KEY = 0x68657264


class ReconcileLocked(HerdError):
    """Another reconcile holds the lock; cron's next run will try again."""

    exit_code = 3


def lock_path(database_url: str) -> Path:
    """``<db file>.reconcile.lock``; for an in-memory DB, a per-user runtime file."""
    database = sqlite_file(database_url)
    if database is not None:
        return database.with_name(database.name + ".reconcile.lock")
    runtime = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    return Path(runtime) / f"herd-reconcile-{os.getuid()}.lock"


def _lock_file_mode(database: Path | None) -> int:
    """The database file's permission bits, as SQLite gives its -wal and -shm files:
    private with a private database, shared with the group that shares it."""
    try:
        return stat.S_IMODE(database.stat().st_mode) & 0o666 if database else PRIVATE_FILE
    except OSError:
        return PRIVATE_FILE


@contextlib.contextmanager
def file_lock(path: Path, mode: int = PRIVATE_FILE) -> Iterator[None]:
    make_private_dirs(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, mode)
    made = os.fstat(fd)
    if made.st_size == 0 and stat.S_IMODE(made.st_mode) != mode:
        os.fchmod(fd, mode)  # as SQLite does for its -wal: the mode, whatever the umask
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = Path(path).read_text().strip() or "another process"
            raise ReconcileLocked(
                f"another herd reconcile is running ({holder}); not starting a second"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
        yield
    finally:
        os.close(fd)  # releases the flock


def _holder_name() -> str:
    """What the lock's connection calls itself (``application_name``), so a second
    run, or a DBA's ``pg_stat_activity``, can say who holds it from which machine."""
    return f"herd reconcile: pid {os.getpid()} on {socket.gethostname()}"[:63]


# The holder of a bigint advisory lock: its low 32 bits are objid, objsubid is 1.
_HOLDER = sqlalchemy.text(
    "SELECT a.application_name, a.client_addr, a.backend_start FROM pg_locks l "
    "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
    "AND l.granted AND l.classid = 0 AND l.objid = :k AND l.objsubid = 1"
)


async def _describe_holder(conn: AsyncConnection) -> str:
    row = (await conn.execute(_HOLDER, {"k": ADVISORY_KEY})).first()
    if row is None:  # it let go between our try and this look: cron will try again
        return "another process"
    name, address, since = row
    who = name.removeprefix("herd reconcile: ") if name else "a client without a name"
    where = f" from {address}" if address else ""
    return f"{who}{where}, started {since.astimezone():%Y-%m-%d %H:%M:%S}"


@contextlib.asynccontextmanager
async def advisory_lock(database_url: str) -> AsyncIterator[None]:
    options = engine_options(database_url)
    options["connect_args"] = {**options["connect_args"], "application_name": _holder_name()}
    engine = create_async_engine(async_url(database_url), **options)
    try:
        async with engine.connect() as conn:
            got = (
                await conn.execute(
                    sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_KEY}
                )
            ).scalar()
            if not got:
                holder = await _describe_holder(conn)
                raise ReconcileLocked(
                    f"another herd reconcile is running ({holder}); not starting a second"
                )
            try:
                yield
            finally:
                await conn.execute(
                    sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_KEY}
                )
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def reconcile_lock(database_url: str) -> AsyncIterator[None]:
    if is_sqlite(database_url):
        with file_lock(lock_path(database_url), _lock_file_mode(sqlite_file(database_url))):
            yield
    else:
        async with advisory_lock(database_url):
            yield
