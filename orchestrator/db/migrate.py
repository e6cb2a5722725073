"""Schema migrations with alembic, driven from code.

Production code never calls ``create_all``: the schema is what the migrations say,
so a SQLite file made by an older herd is upgraded in place.

Every command opens the database, so the common case, a database already at head,
is answered with one SELECT and without importing alembic (a quarter of a second of
every `herd` invocation otherwise). The head is the newest file in ``versions/``,
named ``NNNN_*.py`` with revision ``NNNN``; a unit test holds that to alembic's own
answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from orchestrator.db.engine import configure_sqlite, is_sqlite, sync_url

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
    return config


def head_revision() -> str:
    """The newest migration's revision, from its file name (see the module docstring)."""
    return max(p.name.split("_", 1)[0] for p in (MIGRATIONS / "versions").glob("[0-9]*_*.py"))


def upgrade_to_head(url: str) -> None:
    """Upgrade when behind; one cheap revision check otherwise."""
    engine = create_engine(sync_url(url))
    if is_sqlite(url):
        configure_sqlite(engine)
    try:
        with engine.connect() as connection:
            try:
                current = connection.execute(
                    text("SELECT version_num FROM alembic_version")
                ).scalar()
            except DBAPIError:  # a new database: no alembic_version table yet
                connection.rollback()
                current = None
            if current == head_revision():
                return
            from alembic import command

            config = alembic_config(url)
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            connection.commit()
    finally:
        engine.dispose()
