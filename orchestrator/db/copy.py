"""`herd db status` and `herd db copy`: what a database holds, and the way up from SQLite.

A user who outgrows one machine moves the whole state, rows and ids as they are, into
an empty PostgreSQL database and points ``HERD_DATABASE_URL`` at it. The copy must not
lose anything nor half-happen: the source is read in one read-only transaction (one
snapshot, never written, not even upgraded), the target is written in one transaction
that commits only when every table's count matches the source's, and a target that
already holds rows is refused rather than merged into.

Rows go table by table in ``metadata.sorted_tables`` order (a row's foreign keys point
at rows already copied), in batches; the ids are copied too, so PostgreSQL's sequences
are set past them afterwards or the next insert would collide.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Integer, Table, event, func, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlmodel import SQLModel

from orchestrator.db import models  # noqa: F401  (fills SQLModel.metadata)
from orchestrator.db.connection import (
    BUSY_TIMEOUT_MS,
    async_url,
    busy,
    check_url,
    engine_options,
    is_busy,
    is_sqlite,
    sqlite_file,
    where,
)
from orchestrator.db.engine import Database, unusable
from orchestrator.db.revisions import head_revision, known_revisions
from orchestrator.errors import Conflict, HerdError, InvalidInput, NotFound

BATCH = 500
# Tables in foreign-key order: a row's parents are copied before it.
TABLES: list[Table] = list(SQLModel.metadata.sorted_tables)

Progress = Callable[[str, int, int], None]  # table, rows copied so far, rows in all


def masked(url: str) -> str:
    """The URL with any password shown as ***: what herd prints of a database URL."""
    return make_url(url).render_as_string(hide_password=True)


def engine_name(url: str) -> str:
    return "sqlite" if is_sqlite(url) else "postgresql"


@dataclass
class Status:
    """What `herd db status` shows."""

    engine: str
    url: str  # password masked
    revision: str | None  # None: no herd schema there yet
    head: str
    tables: dict[str, int] = field(default_factory=dict)

    @property
    def state(self) -> str:
        if self.revision is None:
            return "empty (no schema yet)"
        if self.revision == self.head:
            return "at head"
        if self.revision in known_revisions():
            return "behind (any herd command upgrades it)"
        return "ahead (a newer herd wrote it)"

    def as_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "url": self.url,
            "revision": self.revision,
            "head": self.head,
            "state": self.state,
            "tables": self.tables,
        }


@dataclass
class CopyResult:
    """What `herd db copy` did: the rows of each table, identical on both sides."""

    source: str  # password masked
    target: str  # password masked
    revision: str
    tables: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "target": self.target,
            "revision": self.revision,
            "tables": self.tables,
            "rows": sum(self.tables.values()),
        }


def _read_only_engine(url: str) -> AsyncEngine:
    """An engine that cannot write: SQLite opened ``mode=ro`` (no journal-mode switch,
    no pragma that writes), PostgreSQL in READ ONLY REPEATABLE READ transactions, so a
    whole read is one snapshot."""
    if is_sqlite(url):
        path = sqlite_file(url)
        if path is None or not path.is_file():
            raise NotFound(f"no database at {path}")
        if not os.access(path, os.R_OK):
            raise HerdError(f"database {path}: cannot read it")
        engine = create_async_engine(f"sqlite+aiosqlite:///file:{path}?mode=ro&uri=true")

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN DEFERRED")  # a snapshot, no write lock

        return engine
    engine = create_async_engine(async_url(url), **engine_options(url))
    return engine.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)


@asynccontextmanager
async def _database_errors(url: str) -> AsyncIterator[None]:
    """A database that refuses us, or stays locked, as one line naming it."""
    try:
        yield
    except DBAPIError as exc:
        if is_busy(exc):
            raise busy(url) from None
        raise unusable(url, exc) from None


async def _table_names(connection: AsyncConnection) -> set[str]:
    return set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))


async def _revision(connection: AsyncConnection, present: set[str]) -> str | None:
    if "alembic_version" not in present:
        return None
    return (await connection.execute(text("SELECT version_num FROM alembic_version"))).scalar()


async def _counts(connection: AsyncConnection, present: set[str]) -> dict[str, int]:
    counts = {}
    for table in TABLES:
        if table.name in present:
            query = select(func.count()).select_from(table)
            counts[table.name] = (await connection.execute(query)).scalar_one()
    return counts


async def database_status(url: str) -> Status:
    """The engine, revision and row counts of the database at ``url``, read only."""
    url = check_url(url)
    engine = _read_only_engine(url)
    try:
        async with _database_errors(url), engine.connect() as connection:
            present = await _table_names(connection)
            revision = await _revision(connection, present)
            tables = await _counts(connection, present)
    finally:
        await engine.dispose()
    return Status(engine_name(url), masked(url), revision, head_revision(), tables)


def _identity(url: str) -> tuple[str, ...]:
    """What tells two URLs for the same database apart from two databases."""
    if is_sqlite(url):
        path = sqlite_file(url)
        return ("sqlite", os.path.realpath(path) if path else "")
    parsed = make_url(url)
    host = parsed.host or parsed.query.get("host") or "localhost"
    if host in ("127.0.0.1", "::1"):
        host = "localhost"
    return ("postgresql", str(host), str(parsed.port or 5432), parsed.database or "")


def _source_at_head(url: str, revision: str | None, present: set[str]) -> str:
    head = head_revision()
    if revision is None:
        if present - {"alembic_version"}:
            raise HerdError(f"the source {where(url)} is not a herd database (no schema revision)")
        raise HerdError(f"the source {where(url)} holds no herd database yet; nothing to copy")
    if revision == head:
        return revision
    if revision in known_revisions():
        raise HerdError(
            f"the source {where(url)} is at schema revision {revision}, this herd's is {head}: "
            "run any herd command on it to upgrade first (e.g. `herd server list`)"
        )
    raise HerdError(
        f"the source {where(url)} has schema revision {revision}, which this herd does not "
        f"know (its newest is {head}): copy it with the herd that wrote it"
    )


def _portable(table: Table) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A row as the target should get it. SQLite keeps timestamps without their zone
    (herd stores UTC); PostgreSQL would read a naive one in its session's time zone,
    so every timestamp goes over as an aware UTC one."""
    stamps = [c.name for c in table.columns if isinstance(c.type, DateTime)]

    def convert(row: dict[str, Any]) -> dict[str, Any]:
        for name in stamps:
            value = row.get(name)
            if isinstance(value, datetime):
                if value.tzinfo is None:
                    value = value.replace(tzinfo=UTC)
                row[name] = value.astimezone(UTC)
        return row

    return convert


async def _refuse_non_empty(connection: AsyncConnection, url: str) -> None:
    for table in TABLES:
        if (await connection.execute(select(table).limit(1))).first() is not None:
            raise Conflict(
                f"the target {where(url)} is not empty (table {table.name} has rows); "
                "herd db copy only fills an empty database"
            )


async def _copy_table(
    source: AsyncConnection, target: AsyncConnection, table: Table, total: int, progress: Progress
) -> int:
    convert = _portable(table)
    copied = 0
    progress(table.name, 0, total)
    ordered = select(table).order_by(*table.primary_key.columns)
    result = await source.stream(ordered)
    async for rows in result.partitions(BATCH):
        await target.execute(table.insert(), [convert(dict(row._mapping)) for row in rows])
        copied += len(rows)
        progress(table.name, copied, total)
    return copied


async def _advance_sequences(target: AsyncConnection) -> None:
    """Set each serial id's sequence past the copied ids (PostgreSQL only)."""
    for table in TABLES:
        for column in table.primary_key.columns:
            if not isinstance(column.type, Integer):
                continue
            sequence = (
                await target.execute(
                    text("SELECT pg_get_serial_sequence(:t, :c)"),
                    {"t": table.name, "c": column.name},
                )
            ).scalar()
            if sequence is None:
                continue
            await target.execute(
                text(
                    f'SELECT setval(:s, COALESCE((SELECT MAX("{column.name}") FROM '
                    f'"{table.name}"), 0) + 1, false)'
                ),
                {"s": sequence},
            )


def _no_progress(_table: str, _copied: int, _total: int) -> None:
    """Progress nobody watches."""


async def copy_database(
    source_url: str, target_url: str, progress: Progress = _no_progress
) -> CopyResult:
    """Copy every row of ``source_url`` into the empty database at ``target_url``.

    The target's schema is brought to head first; the source must already be there
    (it is only read, never upgraded). Nothing is committed unless every table's
    count on the target equals the source's."""
    source_url, target_url = check_url(source_url), check_url(target_url)
    if _identity(source_url) == _identity(target_url):
        raise InvalidInput(
            f"the source and the target are the same database ({where(source_url)}); "
            "--to names another, empty one"
        )
    source_engine = _read_only_engine(source_url)
    try:
        async with _database_errors(source_url), source_engine.connect() as source:
            present = await _table_names(source)
            revision = _source_at_head(
                source_url, await _revision(source, present), present
            )  # fmt: skip
            missing = [t.name for t in TABLES if t.name not in present]
            if missing:
                raise HerdError(f"the source {where(source_url)} lacks table {missing[0]}")
            counts = await _counts(source, present)
            copied = await _fill(source, target_url, counts, progress)
    finally:
        await source_engine.dispose()
    return CopyResult(masked(source_url), masked(target_url), revision, copied)


async def _fill(
    source: AsyncConnection, target_url: str, counts: dict[str, int], progress: Progress
) -> dict[str, int]:
    target_db = Database(target_url)
    try:
        async with _database_errors(target_url):
            await target_db.migrate()
            async with target_db.engine.connect() as target, target.begin():
                if not is_sqlite(target_url):
                    # No other herd writes while we fill it (nor between check and fill).
                    await target.execute(text(f"SET lock_timeout = '{BUSY_TIMEOUT_MS}ms'"))
                    names = ", ".join(f'"{t.name}"' for t in TABLES)
                    await target.execute(text(f"LOCK TABLE {names} IN EXCLUSIVE MODE"))
                await _refuse_non_empty(target, target_url)
                for table in TABLES:
                    await _copy_table(source, target, table, counts[table.name], progress)
                if not is_sqlite(target_url):
                    await _advance_sequences(target)
                after = await _counts(target, set(counts))
                if after != counts:
                    table = next(name for name in counts if after.get(name) != counts[name])
                    raise HerdError(
                        f"copy check failed: table {table} has {after.get(table)} rows on the "
                        f"target, {counts[table]} on the source; nothing was written"
                    )
    finally:
        await target_db.dispose()
    return counts
