"""How herd names and opens its database: the URL (checked, with the driver each side
needs), SQLite's connection settings and what "busy" means.

Below both the engine (engine.py) and the schema upgrade (migrate.py), which each need
these and neither of which should need the other's module to get them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from orchestrator.errors import HerdError, InvalidInput
from orchestrator.local_files import xdg_dir

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
