"""Shared fixtures for unit tests: a fresh database per test, on each engine that
``HERD_TEST_DB`` selects (tests/conftest.py), so every DB test runs on SQLite and on
PostgreSQL. A test that is SQLite-only by nature (the file, its modes, its locking) asks
for ``sqlite_url`` instead of ``db_url``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from orchestrator.db.engine import Database, open_database
from orchestrator.db.models import Flavor, Host, Image, utcnow
from tests.conftest import selected_engines


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite file of the test's own, not yet created: for tests of the file itself."""
    return f"sqlite:///{tmp_path / 'herd.db'}"


@pytest.fixture(params=selected_engines())
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The test's database URL on each selected engine: a SQLite file in tmp_path, or a
    PostgreSQL database already at the schema's head (a clone of ``pg_template``), which
    open_database must take as it finds it."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite:///{tmp_path / 'herd.db'}"


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = await open_database(db_url)
    yield database
    await database.dispose()


AddHost = Callable[..., Coroutine[Any, Any, Host]]


@pytest.fixture
def add_host(db: Database) -> AddHost:
    """A host as if its agent had answered: known capacity, libvirt working."""

    async def add(
        name: str, *, vcpus: int = 4, ram_mb: int = 4096, disk_gb: int = 100, **kw: Any
    ) -> Host:
        fields: dict[str, Any] = {
            "address": "127.0.0.1",
            "vcpus": vcpus,
            "ram_mb": ram_mb,
            "disk_gb": disk_gb,
            "libvirt_ok": True,
            "last_seen_at": utcnow(),
            "reserved_ram_mb": 0,
            "cpu_ratio": 1.0,
            "ram_ratio": 1.0,
        }
        fields.update(kw)
        async with db.session() as session:
            host = Host(name=name, **fields)
            session.add(host)
        return host

    return add


@pytest.fixture
async def catalog(db: Database) -> None:
    async with db.session() as session:
        session.add(Flavor(name="small", vcpus=1, ram_mb=1024, disk_gb=10))
        session.add(Flavor(name="big", vcpus=4, ram_mb=8192, disk_gb=40))
        session.add(Image(name="cirros", source="/dev/null", sha256="0" * 64, min_ram_mb=0))
        session.add(Image(name="fat", source="/dev/null", sha256="1" * 64, min_ram_mb=4096))
