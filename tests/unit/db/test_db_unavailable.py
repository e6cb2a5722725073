"""A database that cannot be reached, opened or logged in to, that goes away in the
middle of a command, or that holds a lock too long: one line (``DatabaseUnavailable``,
exit 9, or busy), never "internal error", and nothing half written."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlmodel import select

from orchestrator.db import connection as connection_module
from orchestrator.db.engine import Database, open_database
from orchestrator.db.models import Flavor
from orchestrator.errors import DatabaseUnavailable, InvalidInput
from orchestrator.reconcile.lock import ADVISORY_KEY, ReconcileLocked, advisory_lock
from tests.e2e.herdcli import HerdCli, Result
from tests.pgserver import PostgresServer


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port on 127.0.0.1 that takes connections (the kernel's backlog) and never says
    a word: libpq waits for the server's answer until its connect timeout."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(0)
        yield int(sock.getsockname()[1])


def _one_line(result: Result, code: int) -> str:
    assert result.code == code, (result.code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("herd: error: "), lines[0]
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    return lines[0]


@pytest.mark.parametrize("case", ["refused", "no such database", "wrong login"])
def test_an_unreachable_postgres_database_is_one_line_exit_9(
    tmp_path: Path, pg_server: PostgresServer, case: str
) -> None:
    """Before: "internal error: OperationalError ..." (exit 70), later exit 1."""
    port = pg_server.port
    url, says = {
        "refused": (f"postgresql://herd:secret@127.0.0.1:{_closed_port()}/herd",
                    "Connection refused"),
        "no such database": (pg_server.url("no_such_db"), 'database "no_such_db" does not exist'),
        "wrong login": (f"postgresql://nobody:secret@127.0.0.1:{port}/postgres",
                        'role "nobody" does not exist'),
    }[case]  # fmt: skip
    herd = HerdCli(tmp_path, database_url=url)
    commands = [("flavor", "list"), ("reconcile",)] if case == "refused" else [("flavor", "list")]
    for args in commands:
        line = _one_line(herd.run(*args, timeout=60), code=9)
        shown = url.replace(":secret@", ":***@")
        assert line.startswith(f"herd: error: the database {shown} is unavailable: "), line
        assert says in line
        assert "secret" not in line


@pytest.mark.parametrize("case", ["under a file", "cannot create"])
def test_a_sqlite_file_that_cannot_be_opened_is_one_line_exit_9(tmp_path: Path, case: str) -> None:
    (tmp_path / "notes.txt").write_text("x\n")
    url, says = {
        "under a file": (f"sqlite:///{tmp_path}/notes.txt/herd.db", "is not a directory"),
        "cannot create": ("sqlite:////proc/herd/herd.db", "cannot create /proc/herd"),
    }[case]
    line = _one_line(HerdCli(tmp_path, database_url=url).run("flavor", "list"), code=9)
    assert says in line


def test_a_server_that_never_answers_is_given_up_after_the_connect_timeout(
    tmp_path: Path, silent_port: int
) -> None:
    """libpq would wait for ever for an address that never answers."""
    url = f"postgresql://herd@127.0.0.1:{silent_port}/herd?connect_timeout=2"
    started = time.monotonic()
    line = _one_line(HerdCli(tmp_path, database_url=url).run("flavor", "list"), code=9)
    assert time.monotonic() - started < 30
    assert "timeout" in line.lower()


async def test_the_default_connect_timeout_holds(
    silent_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connection_module, "PG_CONNECT_TIMEOUT", 2)
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable, match=r"is unavailable: .*timeout"):
        await open_database(f"postgresql://herd@127.0.0.1:{silent_port}/herd")
    assert 1.5 <= time.monotonic() - started < 20


async def _settings(db: Database) -> list[str]:
    async with db.read() as session:
        return [
            str((await (await session.connection()).execute(text(f"SHOW {name}"))).scalar())
            for name in ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")
        ]


async def test_postgres_sessions_have_statement_lock_and_idle_timeouts(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database(pg_url)
    try:
        assert await _settings(db) == ["2min", "30s", "5min"]
    finally:
        await db.dispose()
    monkeypatch.setenv("HERD_PG_STATEMENT_TIMEOUT", "300ms")
    monkeypatch.setenv("HERD_PG_LOCK_TIMEOUT", "0")
    db = Database(pg_url)
    try:
        assert await _settings(db) == ["300ms", "0", "5min"]
        started = time.monotonic()
        with pytest.raises(DBAPIError, match="statement timeout"):
            async with db.read() as session:
                await (await session.connection()).execute(text("SELECT pg_sleep(5)"))
        assert time.monotonic() - started < 4
    finally:
        await db.dispose()


def test_a_bad_timeout_setting_is_invalid_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERD_PG_LOCK_TIMEOUT", "soon")
    with pytest.raises(InvalidInput, match="HERD_PG_LOCK_TIMEOUT=soon: not a duration"):
        connection_module.engine_options("postgresql://herd@127.0.0.1/herd")


def _kill_herds_connections(pg_server: PostgresServer, url: str) -> None:
    name = url.rsplit("/", 1)[-1]
    pg_server.admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    )


async def test_a_connection_killed_mid_transaction_is_one_error_and_nothing_written(
    pg_url: str, pg_server: PostgresServer
) -> None:
    """The first write of a two-step change is flushed, then the server drops the
    connection: DatabaseUnavailable (exit 9), and the first write is not there."""
    db = await open_database(pg_url)
    try:
        with pytest.raises(DatabaseUnavailable, match="is unavailable: ") as caught:
            async with db.session() as session:
                session.add(Flavor(name="half", vcpus=1, ram_mb=1, disk_gb=1))
                await session.flush()
                await asyncio.to_thread(_kill_herds_connections, pg_server, pg_url)
                session.add(Flavor(name="other-half", vcpus=1, ram_mb=1, disk_gb=1))
                await session.flush()
        assert caught.value.exit_code == 9
        assert "\n" not in str(caught.value)
        async with db.read() as session:  # the pool reconnects; the state is whole
            assert (await session.exec(select(Flavor))).all() == []
    finally:
        await db.dispose()


def test_a_command_whose_connection_is_killed_is_one_line_exit_9_and_writes_nothing(
    tmp_path: Path, pg_server: PostgresServer, pg_url: str
) -> None:
    """`inventory apply` waits on a table another session holds; its connection is
    killed while it waits: one line, exit 9, and none of the catalog written."""
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("flavors:\n  - {name: m1.small, vcpus: 1, ram_mb: 512, disk_gb: 1}\n"
                       "  - {name: m1.big, vcpus: 2, ram_mb: 1024, disk_gb: 2}\n")  # fmt: skip
    herd = HerdCli(tmp_path, database_url=pg_url)
    holder = psycopg.connect(pg_url)
    holder.execute("LOCK TABLE flavors IN ACCESS EXCLUSIVE MODE")
    holder_pid = holder.info.backend_pid
    name = pg_url.rsplit("/", 1)[-1]
    proc = herd.popen("inventory", "apply", str(catalog))
    try:
        deadline = time.monotonic() + 60
        waiting: list[int] = []
        while not waiting and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            with psycopg.connect(pg_server.url(name, "postgres"), autocommit=True) as probe:
                waiting = [row[0] for row in probe.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> %s "
                    "AND wait_event_type = 'Lock'", (name, holder_pid)).fetchall()]  # fmt: skip
        assert waiting, "herd never waited on the lock"
        pg_server.admin(f"SELECT pg_terminate_backend({waiting[0]})")
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        holder.rollback()
        holder.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    line = _one_line(Result(proc.returncode, stdout, stderr), code=9)
    assert "is unavailable: terminating connection due to administrator command" in line
    assert herd.ok("flavor", "list", "--json").json() == []


async def test_two_reconciles_at_once_on_postgres_one_runs_the_other_exits_3(
    tmp_path: Path, pg_url: str
) -> None:
    async with advisory_lock(pg_url):
        with pytest.raises(ReconcileLocked) as caught:
            async with advisory_lock(pg_url):
                pass
        assert caught.value.exit_code == 3
        result = await asyncio.to_thread(HerdCli(tmp_path, database_url=pg_url).run, "reconcile")
        line = _one_line(result, code=3)
        holder = f"another herd reconcile is running (pid {os.getpid()} on {socket.gethostname()}"
        assert holder in line and "from 127.0.0.1, started " in line  # who, where, since
    async with advisory_lock(pg_url):  # released with its holder
        pass
    result = await asyncio.to_thread(HerdCli(tmp_path, database_url=pg_url).run, "reconcile")
    assert result.code == 0, result.stderr
    assert ADVISORY_KEY == 0x68657264
