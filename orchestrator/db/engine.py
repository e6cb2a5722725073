"""Where the database lives and how we talk to it.

SQLite (WAL) is the embedded default; PostgreSQL when several operators or cron
hosts share the state. The orchestrator is asyncio end to end, so it uses the async
drivers (aiosqlite, psycopg 3); migrations run once at start-up on a sync engine in a
worker thread.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from orchestrator.errors import HerdError, InvalidInput
from orchestrator.local_files import (
    create_private_file,
    make_private_dirs,
    withdraw_from_others,
    xdg_dir,
)

ENV_URL = "HERD_DATABASE_URL"
SQLITE_HEADER = b"SQLite format 3\x00"
PG_CONNECT_TIMEOUT = 10  # seconds; libpq waits forever for an address that never answers


def default_database_url() -> str:
    data_home = xdg_dir("XDG_DATA_HOME", Path.home() / ".local" / "share")
    return f"sqlite:///{data_home / 'herd' / 'herd.db'}"


def database_url() -> str:
    return check_url(os.environ.get(ENV_URL) or default_database_url())


def _shown(url: str) -> str:
    """A URL as the operator wrote it, fit for an error message: without its password
    (even in one that does not parse), undecodable bytes as U+FFFD."""
    url = url.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def _url_problem(url: str, problem: str) -> InvalidInput:
    named = f"{ENV_URL}={_shown(url)}" if os.environ.get(ENV_URL) == url else _shown(url)
    return InvalidInput(f"{named}: {problem}")


def check_url(url: str) -> str:
    """Refuse, in one line, a URL that cannot name herd's database: garbage, another
    engine, an in-memory SQLite database (each connection would get its own, empty
    one) or a relative path (which would depend on the directory herd runs in)."""
    if any("\udc80" <= ch <= "\udcff" for ch in url):
        raise _url_problem(url, "not valid UTF-8")
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise _url_problem(
            url, "not a database URL (e.g. sqlite:////var/lib/herd/herd.db or "
            "postgresql://user@host/herd)",
        ) from None  # fmt: skip
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise _url_problem(url, f"unsupported database {backend!r} (use sqlite or postgresql)")
    if backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            raise _url_problem(
                url, "an in-memory or URI SQLite database is not kept; name a file "
                "(sqlite:////path/to/herd.db)",
            )  # fmt: skip
        if not os.path.isabs(database):
            raise _url_problem(
                url, f"{database} is a relative path; say which file: "
                f"sqlite:///{Path(database).absolute()}",
            )  # fmt: skip
    return url


def _with_driver(url: str, *, sync: bool) -> str:
    parsed = make_url(check_url(url))
    backend = parsed.get_backend_name()
    driver = ("pysqlite" if sync else "aiosqlite") if backend == "sqlite" else "psycopg"
    return parsed.set(drivername=f"{backend}+{driver}").render_as_string(hide_password=False)


def engine_options(url: str) -> dict[str, Any]:
    """``create_engine`` arguments: on PostgreSQL a connect timeout unless the URL
    sets its own, so an unreachable server is an error, not a hang."""
    if is_sqlite(url) or "connect_timeout" in make_url(url).query:
        return {}
    return {"connect_args": {"connect_timeout": PG_CONNECT_TIMEOUT}}


def sync_url(url: str) -> str:
    return _with_driver(url, sync=True)


def async_url(url: str) -> str:
    return _with_driver(url, sync=False)


def is_sqlite(url: str) -> bool:
    return make_url(check_url(url)).get_backend_name() == "sqlite"


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
    return str(path) if path is not None else _shown(url)


def busy(url: str) -> DatabaseBusy:
    return DatabaseBusy(
        f"the database {where(url)} is locked by another process "
        f"(waited {BUSY_TIMEOUT_MS // 1000} s); try again when it is done"
    )


def prepare_sqlite_file(path: Path) -> None:
    """Make sure ``path`` can be herd's SQLite database, and a private one.

    Refused in one line: a directory, a device, a file that is not SQLite's, a
    parent that is not a directory. A new database and the directories herd makes
    for it are created 0600 / 0700 (SQLite gives its -wal and -shm files the
    database file's mode); an existing one that every user may read is withdrawn
    from them (``withdraw_from_others``), its -wal and -shm too."""

    def refuse(problem: str) -> HerdError:
        return HerdError(f"database {path}: {problem}")

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
    """A database that refused us (no server there, bad password, a damaged file):
    one line, in the driver's own words."""
    reason = str(exc.orig).strip().splitlines()
    return HerdError(f"database {where(url)}: {reason[0] if reason else type(exc.orig).__name__}")


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
        from orchestrator.db.migrate import upgrade_to_head

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
