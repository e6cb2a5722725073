"""herd's files on the operator's machine are private: the database (user data with
passwords in it) and the directories herd makes for it, SQLite's -wal and -shm, the
reconcile lock, the logs of background runs. Directories herd did not make keep their
mode; the Prometheus textfile stays world-readable, for node_exporter."""

from __future__ import annotations

import os
import sqlite3
import stat
import sys
from pathlib import Path

import pytest

from orchestrator.cli import background
from orchestrator.conductor.outcomes import Outcome
from orchestrator.db.engine import Database, open_database
from orchestrator.db.models import Flavor
from orchestrator.errors import HerdError
from orchestrator.reconcile import metrics
from orchestrator.reconcile.lock import lock_path, reconcile_lock
from tests.e2e.herdcli import HerdCli


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def usual_umask() -> object:
    """The modes must not depend on a strict umask someone happened to set."""
    saved = os.umask(0o022)
    yield
    os.umask(saved)


async def test_a_new_database_and_the_directories_made_for_it_are_private(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    os.chmod(home, 0o755)
    path = home / "data" / "herd" / "herd.db"
    url = f"sqlite:///{path}"
    db = await open_database(url)
    async with db.session() as session:  # the pool keeps this connection, and the WAL
        session.add(Flavor(name="m1", vcpus=1, ram_mb=1, disk_gb=1))
    for companion in ("herd.db-wal", "herd.db-shm"):
        assert mode(path.with_name(companion)) == 0o600  # SQLite copies the DB's mode
    async with reconcile_lock(url):
        pass
    await db.dispose()
    assert mode(home / "data") == 0o700
    assert mode(home / "data" / "herd") == 0o700
    assert mode(path) == 0o600
    assert mode(lock_path(url)) == 0o600
    assert mode(home) == 0o755  # not made by herd: left alone


async def test_an_existing_directory_keeps_its_mode(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o1777)
    os.chmod(shared, 0o1777)  # like /tmp: the sticky bit must survive
    db = await open_database(f"sqlite:///{shared / 'herd.db'}")
    await db.dispose()
    assert mode(shared) == 0o1777
    assert mode(shared / "herd.db") == 0o600


async def test_a_world_readable_database_from_an_older_herd_is_withdrawn_from_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "herd.db"
    url = f"sqlite:///{path}"
    db = await open_database(url)
    await db.dispose()
    for file in (path, path.with_name("herd.db-wal"), path.with_name("herd.db-shm")):
        if file.exists():
            os.chmod(file, 0o664)  # what herd made before: 0644, and a group bit
    db = await open_database(url)
    await db.dispose()
    assert mode(path) == 0o660  # others lose everything; the group keeps its share
    assert "was readable by every user" in caplog.text
    caplog.clear()
    db = await open_database(url)
    await db.dispose()
    assert caplog.text == ""  # once: nothing left to say


def test_a_file_that_is_not_a_database_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    other = tmp_path / "passwd"
    other.write_text("root:x:0:0:root:/root:/bin/bash\n")
    os.chmod(other, 0o644)
    with pytest.raises(HerdError, match="is not a SQLite database"):
        Database(f"sqlite:///{other}")
    assert mode(other) == 0o644 and other.read_text().startswith("root:")


async def test_the_lock_file_shares_a_group_database_as_sqlite_shares_its_wal(
    tmp_path: Path,
) -> None:
    path = tmp_path / "herd.db"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()
    os.chmod(path, 0o660)  # a group of operators shares this database
    url = f"sqlite:///{path}"
    async with reconcile_lock(url):
        pass
    assert mode(lock_path(url)) == 0o660


def test_background_run_logs_are_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setattr(sys, "argv", ["herd", "--version"])  # a child that ends at once
    idle = Outcome("u", "web", None, "active", None)
    monkeypatch.setattr(background, "_server", lambda name: (idle, 0))
    _, log = background.run_in_background("web", "migrate")
    assert log.parent == tmp_path / "state" / "herd"
    assert mode(tmp_path / "state") == 0o700 and mode(log.parent) == 0o700
    assert mode(log) == 0o600


def test_the_prometheus_textfile_stays_readable_by_node_exporter(tmp_path: Path) -> None:
    target = tmp_path / "herd.prom"
    metrics.write_textfile(target, "herd_up 1\n")
    assert mode(target) == 0o644


def test_the_cli_makes_its_database_private(tmp_path: Path) -> None:
    herd = HerdCli(tmp_path)
    del herd.env["HERD_DATABASE_URL"]  # the default place, under XDG_DATA_HOME
    herd.ok("flavor", "list")
    made = tmp_path / "data" / "herd" / "herd.db"
    assert mode(made) == 0o600 and mode(made.parent) == 0o700
