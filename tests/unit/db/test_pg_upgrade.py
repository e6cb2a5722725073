"""The schema upgrade on PostgreSQL: many herd processes meeting a new (or old) database
at once, and the migrations up and down from every revision, on both engines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from orchestrator.db.connection import sync_url
from orchestrator.db.migrate import alembic_config, upgrade_to_head
from orchestrator.db.revisions import head_revision, known_revisions
from tests.e2e.herdcli import HerdCli

CONCURRENT = 4


def _current(url: str) -> str | None:
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as connection:
            return set(inspect(connection).get_table_names())
    finally:
        engine.dispose()


def _at_once(tmp_path: Path, url: str, *args: str) -> tuple[list[int], set[str], set[str]]:
    """``CONCURRENT`` real herd processes started at the same moment (forked after the
    imports, tests/unit/db/concurrent_cli.py): their exit codes, outputs and errors."""
    outdir = tmp_path / "runs"
    outdir.mkdir()
    subprocess.run(
        [sys.executable, "-m", "tests.unit.db.concurrent_cli", str(CONCURRENT), str(outdir),
         *args],
        env={**HerdCli(tmp_path).env, "HERD_DATABASE_URL": url},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    codes = sorted(int(p.read_text()) for p in outdir.glob("*.code"))
    outs = {p.read_text() for p in outdir.glob("*.out")}
    errors = {p.read_text() for p in outdir.glob("*.err") if p.read_text()}
    return codes, outs, errors


@pytest.mark.parametrize("start", [None, "0004"], ids=["empty", "from-0004"])
def test_commands_at_once_on_a_new_or_old_postgres_database_all_succeed(
    tmp_path: Path, pg_empty_url: str, start: str | None
) -> None:
    """The issue's first PostgreSQL run: 2-3 of 4 failed with UniqueViolation
    pg_type_typname_nsp_index (empty) or DuplicateTable (from 0004). The advisory lock
    around the re-check and the upgrade makes one process migrate, the others wait."""
    if start is not None:
        command.upgrade(alembic_config(pg_empty_url), start)
    codes, outs, errors = _at_once(tmp_path, pg_empty_url, "flavor", "list", "--json")
    assert not errors
    assert codes == [0] * CONCURRENT
    assert outs == {"[]\n"}
    assert _current(pg_empty_url) == head_revision()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database on each engine under test."""
    from tests.conftest import selected_engines

    if request.param not in selected_engines():
        pytest.skip(f"HERD_TEST_DB leaves {request.param} out")
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'herd.db'}"
    return str(request.getfixturevalue("pg_empty_url"))


def test_every_revision_upgrades_to_head_and_head_downgrades_to_base(empty_url: str) -> None:
    """From empty to each revision, then herd's own upgrade to head; and all the way
    down: an operator may meet herd with a database of any age, and go back."""
    config = alembic_config(empty_url)
    revisions = sorted(known_revisions())
    assert revisions[0] == "0001" and revisions[-1] == head_revision()
    for revision in revisions:
        command.upgrade(config, revision)
        assert _current(empty_url) == revision
        upgrade_to_head(empty_url)
        assert _current(empty_url) == head_revision()
        command.downgrade(config, "base")
        assert _current(empty_url) is None
        assert _tables(empty_url) <= {"alembic_version"}
    upgrade_to_head(empty_url)
    assert _current(empty_url) == head_revision()
    assert {"instances", "hosts", "tasks"} <= _tables(empty_url)
