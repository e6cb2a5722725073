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

from orchestrator.errors import DatabaseUnavailable, HerdError, InvalidInput
from orchestrator.local_files import xdg_dir

ENV_URL = "HERD_DATABASE_URL"
SQLITE_HEADER = b"SQLite format 3\x00"
PG_CONNECT_TIMEOUT = 10  # seconds; libpq waits forever for an address that never answers
# PostgreSQL session limits, each overridable by the environment (HERD_PG_<NAME>, in
# the server's units, e.g. "30s"; "0" turns one off): a statement that runs for
# minutes is a bug or a stuck lock; a lock waited for longer than the busy timeout is
# "busy" (as on SQLite); a transaction left idle (a herd killed mid-command behind a
# proxy that keeps its connection) must not hold its row locks for ever.
PG_SESSION_LIMITS = {
    "statement_timeout": "120s",  # the schema upgrade lifts it (migrate.py)
    "lock_timeout": "30s",  # BUSY_TIMEOUT_MS, as SQLite waits
    "idle_in_transaction_session_timeout": "5min",
}


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


def pg_session_limits() -> dict[str, str]:
    """``PG_SESSION_LIMITS`` with the environment's overrides (``HERD_PG_LOCK_TIMEOUT``...)."""
    limits = {}
    for name, default in PG_SESSION_LIMITS.items():
        value = os.environ.get(f"HERD_PG_{name.upper()}", "").strip() or default
        if not re.fullmatch(r"\d+\s*(us|ms|s|min|h|d)?", value):
            raise InvalidInput(
                f"HERD_PG_{name.upper()}={value}: not a duration (e.g. 30s, 500ms, 0 for none)"
            )
        limits[name] = value
    return limits


def engine_options(url: str) -> dict[str, Any]:
    """``create_engine`` arguments: on PostgreSQL a connect timeout unless the URL
    sets its own, so an unreachable server is an error, not a hang, and the session
    limits above (sent in the startup packet: no round trip of their own)."""
    if is_sqlite(url):
        return {}
    args: dict[str, Any] = {}
    if "connect_timeout" not in make_url(url).query:
        args["connect_timeout"] = PG_CONNECT_TIMEOUT
    options = " ".join(f"-c {name}={value}" for name, value in pg_session_limits().items())
    if "options" not in make_url(url).query:
        args["options"] = options
    return {"connect_args": args}


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


# PostgreSQL's classes of "the connection is gone": 08 connection exception, 57P0x
# admin/crash shutdown, 53300 too many connections, 28 invalid authorization, 3D000
# no such database.
_PG_UNAVAILABLE = ("08", "57P01", "57P02", "57P03", "53300", "28", "3D000")


def is_unavailable(exc: BaseException) -> bool:
    """Whether a DB error means "the database cannot be reached" (a refused or lost
    connection, a login refused, no such database), not a bug in a statement."""
    if getattr(exc, "connection_invalidated", False):
        return True
    orig = getattr(exc, "orig", exc)
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate is not None:
        return sqlstate.startswith(_PG_UNAVAILABLE)
    module = type(orig).__module__ or ""
    if module.startswith("psycopg"):  # no SQLSTATE: the client side (refused, timed out)
        kinds = {kind.__name__ for kind in type(orig).__mro__}
        return bool(kinds & {"OperationalError", "InterfaceError"})
    return "unable to open database file" in str(orig)


def _cause(exc: BaseException) -> str:
    """The driver's reason in a few words: libpq's last "...failed: " part, without
    "FATAL:" and the hints on the lines after it."""
    orig = getattr(exc, "orig", exc)
    lines = str(orig).strip().splitlines()
    first = lines[0] if lines else type(orig).__name__
    first = first.rsplit(" failed: ", 1)[-1]
    return re.sub(r"^(FATAL|ERROR):\s+", "", first).strip() or type(orig).__name__


def unavailable(url: str, exc: BaseException) -> DatabaseUnavailable:
    return DatabaseUnavailable(f"the database {where(url)} is unavailable: {_cause(exc)}")
