"""Fixtures every test may use: the database engines under test (``HERD_TEST_DB``) and a
throwaway PostgreSQL server (tests/pgserver.py), started once per session when asked.

``HERD_TEST_DB`` is ``sqlite``, ``postgresql`` or ``both`` (the default). With the
default and no PostgreSQL server installed, the PostgreSQL cases are skipped with the
reason; naming ``postgresql`` or ``both`` outright makes a missing server a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests import pgserver

ENGINES = ("sqlite", "postgresql")
_COLUMNS_SEEN = "HERD_TEST_CONTROLLER_COLUMNS"


def pytest_configure(config: pytest.Config) -> None:
    """pytest-xdist's workers start with COLUMNS=80 whatever the run's own environment
    said, and herd's output widths follow COLUMNS (cli/output.py): the controller notes
    what it had, and each worker puts that back, so a test sees the same environment
    with ``-n`` as without."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        os.environ[_COLUMNS_SEEN] = os.environ.get("COLUMNS", "")
    elif _COLUMNS_SEEN in os.environ:
        if os.environ[_COLUMNS_SEEN]:
            os.environ["COLUMNS"] = os.environ[_COLUMNS_SEEN]
        else:
            os.environ.pop("COLUMNS", None)


def selected_engines() -> tuple[str, ...]:
    """The engines ``HERD_TEST_DB`` asks for, in a fixed order."""
    value = os.environ.get("HERD_TEST_DB", "both").strip().lower() or "both"
    if value == "both":
        return ENGINES
    if value not in ENGINES:
        raise pytest.UsageError(f"HERD_TEST_DB={value!r}: use sqlite, postgresql or both")
    return (value,)


def postgres_wanted() -> bool:
    return "postgresql" in selected_engines()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[pgserver.PostgresServer]:
    """The session's PostgreSQL server (skipped when the engine is not selected, or not
    installed and not asked for by name)."""
    if not postgres_wanted():
        pytest.skip("HERD_TEST_DB leaves PostgreSQL out")
    if not pgserver.available():
        if "HERD_TEST_DB" in os.environ:
            pytest.fail(str(pgserver.PostgresMissing(pgserver.PostgresMissing.__doc__)))
        pytest.skip("PostgreSQL's server is not installed (apt-get install postgresql)")
    with pgserver.running() as server:
        yield server


@pytest.fixture(scope="session")
def pg_template(pg_server: pgserver.PostgresServer) -> str:
    """A database at the schema's head that each test's database is cloned from: a
    clone takes ~40 ms where the migrations take ~0.8 s."""
    from orchestrator.db.migrate import upgrade_to_head

    url = pg_server.create_database(name="herd_template")
    upgrade_to_head(url)
    return "herd_template"


@pytest.fixture
def pg_url(pg_server: pgserver.PostgresServer, pg_template: str) -> Iterator[str]:
    """A fresh PostgreSQL database of the test's own, already at the schema's head."""
    url = pg_server.create_database(template=pg_template)
    yield url
    pg_server.drop_database(url)


@pytest.fixture
def pg_empty_url(pg_server: pgserver.PostgresServer) -> Iterator[str]:
    """A fresh, empty PostgreSQL database (no schema): for migrations and first contact."""
    url = pg_server.create_database()
    yield url
    pg_server.drop_database(url)
