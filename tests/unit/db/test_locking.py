"""SQLite locking: readers never wait for a writer, many commands at once on a new
database all succeed, and a database another process holds locked is never taken for
an empty one (which re-ran the migrations: "table already exists")."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.db import connection as engine_module
from orchestrator.db.connection import DatabaseBusy
from orchestrator.db.engine import Database
from orchestrator.db.migrate import upgrade_to_head
from orchestrator.db.models import Flavor
from orchestrator.db.revisions import head_revision
from tests.e2e.herdcli import HerdCli

CONCURRENT = 32


@pytest.fixture
def herd(tmp_path: Path) -> HerdCli:
    cli = HerdCli(tmp_path)
    cli.ok("flavor", "list")  # the schema, at head
    return cli


@pytest.fixture
def writer(herd: HerdCli) -> Iterator[sqlite3.Connection]:
    """Another process's write transaction, open for as long as the test runs."""
    connection = sqlite3.connect(herd.db_path, isolation_level=None, timeout=0)
    connection.execute("BEGIN IMMEDIATE")
    connection.execute(
        "INSERT INTO flavors (name, vcpus, ram_mb, disk_gb, extra_specs)"
        " VALUES ('uncommitted', 1, 1, 1, '{}')"
    )
    yield connection
    connection.rollback()
    connection.close()


def test_listings_answer_while_another_process_holds_the_write_lock(
    herd: HerdCli, writer: sqlite3.Connection
) -> None:
    """Before, every transaction began IMMEDIATE: a listing queued behind the writer
    for the whole 30 s busy timeout, then died with "database is locked"."""
    for args in (("server", "list"), ("host", "list"), ("image", "list"), ("keypair", "list")):
        started = time.monotonic()
        result = herd.run(*args, timeout=25)
        assert result.code == 0, result.stderr
        assert time.monotonic() - started < 15, f"herd {' '.join(args)} waited for the writer"
    flavors = herd.ok("flavor", "list", "--json", timeout=25).json()
    assert flavors == []  # the writer's row is not committed: not seen


def test_many_commands_at_once_on_a_new_database_all_succeed(tmp_path: Path) -> None:
    """32 real processes (forked after the imports, so they meet the database at the
    same moment): one creates the schema, the others wait for it and find it made."""
    url = f"sqlite:///{tmp_path / 'herd.db'}"
    outdir = tmp_path / "runs"
    outdir.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "tests.unit.db.concurrent_cli", str(CONCURRENT), str(outdir),
         "flavor", "list", "--json"],
        env={**HerdCli(tmp_path).env, "HERD_DATABASE_URL": url},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    errors = {p.read_text() for p in outdir.glob("*.err") if p.read_text()}
    assert done.returncode == 0, errors
    codes = [int(p.read_text()) for p in outdir.glob("*.code")]
    assert codes == [0] * CONCURRENT
    assert {p.read_text() for p in outdir.glob("*.out")} == {"[]\n"}
    assert not errors


@pytest.fixture
def short_busy_timeout(monkeypatch: pytest.MonkeyPatch) -> float:
    """One second, not thirty: long enough to see the wait, short enough for a test."""
    monkeypatch.setattr(engine_module, "BUSY_TIMEOUT_MS", 1000)
    return 1.0


def _hold_exclusive(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, timeout=0)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("BEGIN EXCLUSIVE")
    connection.execute("CREATE TABLE IF NOT EXISTS scratch (x)")
    return connection


def test_an_upgrade_blocked_by_another_process_is_one_clear_error(
    tmp_path: Path, short_busy_timeout: float
) -> None:
    path = tmp_path / "herd.db"
    holder = _hold_exclusive(path)  # a new database, being written by someone else
    try:
        started = time.monotonic()
        with pytest.raises(DatabaseBusy) as caught:
            upgrade_to_head(f"sqlite:///{path}")
        waited = time.monotonic() - started
    finally:
        holder.rollback()
        holder.close()
    message = str(caught.value)
    assert message == (
        f"the database {path} is locked by another process (waited 1 s); try again when it is done"
    )
    assert "\n" not in message
    assert short_busy_timeout * 0.9 <= waited < short_busy_timeout * 10


def test_a_database_at_head_is_not_upgraded_while_another_process_writes(
    tmp_path: Path, short_busy_timeout: float
) -> None:
    """The revision check is a read: it neither waits for the writer nor mistakes
    the lock for a missing table (which re-ran the first migration)."""
    path = tmp_path / "herd.db"
    url = f"sqlite:///{path}"
    upgrade_to_head(url)
    holder = sqlite3.connect(path, isolation_level=None, timeout=0)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("DELETE FROM alembic_version")  # uncommitted: invisible to readers
    try:
        started = time.monotonic()
        upgrade_to_head(url)
        assert time.monotonic() - started < short_busy_timeout
    finally:
        holder.rollback()
        holder.close()
    check = sqlite3.connect(path)
    assert check.execute("SELECT version_num FROM alembic_version").fetchall() == [
        (head_revision(),)
    ]
    check.close()


def test_upgrades_waiting_on_a_lock_run_the_migrations_once(
    tmp_path: Path, short_busy_timeout: float
) -> None:
    """Four upgraders of a new database, held off by a writer until it lets go: each
    waits (no "locked" taken for "empty"), one migrates, the others find it done."""
    path = tmp_path / "herd.db"
    holder = _hold_exclusive(path)
    errors: list[BaseException] = []

    def upgrade() -> None:
        try:
            upgrade_to_head(f"sqlite:///{path}")
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=upgrade) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(short_busy_timeout / 4)
    holder.commit()
    holder.close()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    check = sqlite3.connect(path)
    assert check.execute("SELECT version_num FROM alembic_version").fetchall() == [
        (head_revision(),)
    ]
    check.close()


async def test_a_read_session_refuses_to_write(db: Database) -> None:
    with pytest.raises(RuntimeError, match="read-only session"):
        async with db.read() as session:
            session.add(Flavor(name="sneaky", vcpus=1, ram_mb=1, disk_gb=1))
            await session.flush()
    async with db.read() as session:
        assert (await session.get(Flavor, 1)) is None
