"""Schema migrations with alembic, driven from code.

Production code never calls ``create_all``: the schema is what the migrations say,
so a SQLite file made by an older herd is upgraded in place.

Every command opens the database, so the common case, a database already at head,
is answered with one SELECT in a read transaction (which waits for no writer) and
without importing alembic (a quarter of a second of every `herd` invocation
otherwise). The head is the newest file in ``versions/``, named ``NNNN_*.py`` with
revision ``NNNN``; a unit test holds that to alembic's own answer.

When the database is behind (or new), the check is made again under a lock that
every herd process takes before upgrading — SQLite: an EXCLUSIVE transaction that
also carries the migrations; PostgreSQL: an advisory lock — so of many commands
started at once on a fresh database one creates the schema and the others find it
made. "No such table" means a new database; "locked" never does: it is waited for
(the busy timeout), then reported as such.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from sqlalchemy import Connection, create_engine, inspect, text
from sqlalchemy.exc import DBAPIError

from orchestrator.db.connection import (
    BEGIN,
    BUSY_TIMEOUT_MS,
    busy,
    configure_sqlite,
    engine_options,
    is_busy,
    is_sqlite,
    sync_url,
    where,
)
from orchestrator.db.revisions import MIGRATIONS, head_revision, known_revisions
from orchestrator.errors import HerdError

if TYPE_CHECKING:
    from alembic.config import Config

# "herd" + 1: not the key reconcile's advisory lock uses (reconcile/lock.py).
ADVISORY_KEY = 0x68657264 + 1
_PG_UNDEFINED_TABLE = "42P01"


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
    return config


def _no_such_table(exc: DBAPIError) -> bool:
    orig = exc.orig
    if getattr(orig, "sqlstate", None) == _PG_UNDEFINED_TABLE:
        return True
    return "no such table" in str(orig)


def _revision(connection: Connection) -> str | None:
    """The schema's revision; None for a database without alembic's table (a new one).
    Anything else, "locked" above all, is not "new" and propagates."""
    try:
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except DBAPIError as exc:
        if not _no_such_table(exc):
            raise
        connection.rollback()
        return None


def _revision_under_lock(connection: Connection) -> str | None:
    """As ``_revision``, without an error to roll back: that would end the SQLite
    transaction that is the lock, and let another process in before we upgrade."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


@contextmanager
def _upgrade_lock(connection: Connection, sqlite: bool) -> Iterator[None]:
    """Hold every other herd's upgrade (and, on SQLite, every writer) off until the
    block's transaction is committed."""
    if sqlite:
        # The next statement begins the transaction EXCLUSIVE; it is the lock.
        connection.execution_options(**{BEGIN: "EXCLUSIVE"})
        yield
        return
    connection.execute(text(f"SET lock_timeout = '{BUSY_TIMEOUT_MS}ms'"))
    # A migration rewrites whole tables: as long as it takes, not statement_timeout.
    connection.execute(text("SET statement_timeout = 0"))
    connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": ADVISORY_KEY})
    try:
        yield
    finally:
        connection.rollback()  # a no-op after the commit; ends an aborted transaction
        connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_KEY})
        connection.commit()


def upgrade_to_head(url: str) -> None:
    """Upgrade when behind; one cheap revision check otherwise."""
    head = head_revision()
    sqlite = is_sqlite(url)
    engine = create_engine(sync_url(url), **engine_options(url))
    if sqlite:
        configure_sqlite(engine)
    try:
        with engine.connect() as connection:
            connection.execution_options(**{BEGIN: "DEFERRED"})
            if _revision(connection) == head:
                return
            connection.rollback()
            from alembic import command  # before the lock: nobody waits on our import

            with _upgrade_lock(connection, sqlite):
                current = _revision_under_lock(connection)
                if current == head:  # another process did it
                    connection.commit()
                    return
                if current is not None and current not in known_revisions():
                    raise HerdError(
                        f"the database {where(url)} has schema revision {current}, which this "
                        f"herd does not know (its newest is {head}): a newer herd wrote it"
                    )
                config = alembic_config(url)
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
                connection.commit()
    except DBAPIError as exc:
        if is_busy(exc):
            raise busy(url) from None
        raise
    finally:
        engine.dispose()
