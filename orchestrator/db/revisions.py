"""The schema revisions this herd knows, from the migration files' names alone.

Its own module so a reader that must check the schema before trusting it (the quick
`server list`, cli/server_listing.py) can do so without importing alembic or
SQLAlchemy. A migration's file is ``versions/NNNN_*.py`` with revision ``NNNN``;
tests/unit/db/test_migrations.py holds that to alembic's own answer.
"""

from __future__ import annotations

from pathlib import Path

MIGRATIONS = Path(__file__).with_name("migrations")


def known_revisions() -> set[str]:
    """Every migration's revision, from its file name."""
    return {p.name.split("_", 1)[0] for p in (MIGRATIONS / "versions").glob("[0-9]*_*.py")}


def head_revision() -> str:
    """The newest migration's revision."""
    return max(known_revisions())
