"""A unique constraint that fired: another process wrote the same name first.

Check-then-insert is a race on PostgreSQL (READ COMMITTED lets two transactions both
see "no such name" and both insert); SQLite's IMMEDIATE transactions hide it. The
database's unique constraint is the real guard, and when it fires the operator must
hear "already exists" (Conflict, exit 4), not an internal error. One helper for every
command that creates named things.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError

from orchestrator.errors import Conflict

UNIQUE_VIOLATION = "23505"
_SQLITE_UNIQUE = re.compile(r"UNIQUE constraint failed: (\w+)\.(\w+)")
_PG_DETAIL = re.compile(r"Key \((?P<column>[^)]*)\)=\((?P<value>.*)\) already exists")


@dataclass(frozen=True)
class Duplicate:
    """Which table's unique constraint fired; the value when the engine says it."""

    table: str | None
    value: str | None = None


def duplicate_in(exc: BaseException) -> Duplicate | None:
    """The duplicate an IntegrityError reports, or None for any other error."""
    if not isinstance(exc, IntegrityError):
        return None
    orig = exc.orig
    if getattr(orig, "sqlstate", None) == UNIQUE_VIOLATION:
        diag = getattr(orig, "diag", None)
        detail = _PG_DETAIL.search(getattr(diag, "message_detail", None) or "")
        return Duplicate(
            getattr(diag, "table_name", None), detail.group("value") if detail else None
        )
    found = _SQLITE_UNIQUE.search(str(orig))
    return Duplicate(found.group(1)) if found else None


@asynccontextmanager
async def duplicates_conflict(
    tables: str | Collection[str], message: str | Callable[[Duplicate], str]
) -> AsyncIterator[None]:
    """Around a whole transaction (the constraint may fire at its commit): a unique
    violation in ``tables`` (one name or several) becomes a Conflict with ``message``
    (or what it makes of the duplicate: PostgreSQL names the value, SQLite only the
    table)."""
    try:
        yield
    except IntegrityError as exc:
        duplicate = duplicate_in(exc)
        names = {tables} if isinstance(tables, str) else set(tables)
        if duplicate is None or duplicate.table not in names:
            raise
        raise Conflict(message if isinstance(message, str) else message(duplicate)) from None
