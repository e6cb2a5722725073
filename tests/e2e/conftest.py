"""Real labs for e2e tests: one 3-host lab (198.18.101.1-3) for the whole session (one
per pytest-xdist worker, each on its own addresses), and
small private ones for tests that must break or remove a lab.

Labs live under pytest's temporary directory and are always taken down. A session
that was killed (SIGKILL, a CI timeout) cannot take its labs down, so each lab leaves
a note naming the pytest process that owns it, and the next session takes down the
labs of owners that are gone: a dead run never blocks the addresses of later ones,
and pytest never deletes a directory that running daemons still use.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestrator.lab import Lab
from tests.conftest import postgres_wanted
from tests.e2e.herdcli import HerdCli


def _session_lab_base() -> str:
    """The session lab's first address: HERD_TEST_LAB_BASE (so two checkouts can run their
    e2e tests at once) or 198.18.101.1, moved up ten /24s per pytest-xdist worker so
    that each worker's lab has its own subnets, bridges and namespaces (gw0: .101,
    gw1: .111, ...). The private labs the tests make sit on .102-.106, between them."""
    base = os.environ.get("HERD_TEST_LAB_BASE", "198.18.101.1")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    octets = base.split(".")
    octets[2] = str(int(octets[2]) + 10 * int(worker or 0))
    return ".".join(octets)


LAB_BASE_ADDRESS = _session_lab_base()
LAB_SSH_PORT = 2222
LAB_HOSTS = 3
OWNER_SUFFIX = ".lab-owner"


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail(
            "e2e tests need root: the lab makes mount namespaces and runs libvirtd and sshd; "
            "run them with sudo, or leave them out with -m 'not e2e'",
            pytrace=False,
        )


def _process_identity(pid: int) -> str | None:
    """pid plus start time: a pid alone may have been reused since it was written."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return f"{pid} {stat.rsplit(')', 1)[1].split()[19]}"


def _pytest_tmp_root(basetemp: Path) -> Path:
    """pytest's per-user directory (/tmp/pytest-of-USER), above one session's
    pytest-N (and, under pytest-xdist, the worker's popen-gwN below it)."""
    for directory in (basetemp, *basetemp.parents):
        if directory.name.startswith("pytest-of-"):
            return directory
    return basetemp.parent


def _take_down_labs_of_dead_sessions(pytest_tmp: Path) -> None:
    for owner in pytest_tmp.glob(f"pytest-*/**/*{OWNER_SUFFIX}"):
        recorded = owner.read_text().strip()
        if _process_identity(int(recorded.split()[0])) == recorded:
            continue  # a pytest session that is still running
        root = owner.with_name(owner.name.removesuffix(OWNER_SUFFIX))
        Lab(root).down()
        owner.unlink()


class LabMaker:
    """Makes labs owned by this session and takes them all down at teardown."""

    def __init__(self) -> None:
        self.made: list[tuple[Lab, Path]] = []

    def __call__(
        self, root: Path, base_address: str, ssh_port: int = LAB_SSH_PORT, bastion: bool = False
    ) -> Lab:
        owner = root.with_name(root.name + OWNER_SUFFIX)
        owner.write_text(f"{_process_identity(os.getpid())}\n")
        lab = Lab(root, base_address=base_address, ssh_port=ssh_port, bastion=bastion)
        self.made.append((lab, owner))
        return lab

    def take_down(self) -> None:
        for lab, owner in reversed(self.made):
            lab.down()
            owner.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The session's 3-host lab: `lab.hosts`, `lab.info()`, `lab.exec_in(...)`,
    `lab.stop_service(...)`; tests that stop a daemon start it again."""
    require_root()
    _take_down_labs_of_dead_sessions(_pytest_tmp_root(tmp_path_factory.getbasetemp()))
    maker = LabMaker()
    try:
        session_lab = maker(tmp_path_factory.mktemp("lab"), LAB_BASE_ADDRESS)
        session_lab.up(LAB_HOSTS)
        yield session_lab
    finally:
        maker.take_down()


@pytest.fixture(scope="session")
def lab_inventory(lab: Lab) -> Path:
    """The session lab's inventory.yaml, ready for `herd inventory apply`."""
    return lab.info().inventory


@pytest.fixture
def make_lab(tmp_path: Path) -> Iterator[Callable[..., Lab]]:
    """A factory of private labs (not yet up) on a base address of the test's choosing,
    taken down after the test whatever happened to them."""
    require_root()
    maker = LabMaker()
    count = 0

    def make(base_address: str, bastion: bool = False) -> Lab:
        nonlocal count
        count += 1
        return maker(tmp_path / f"lab{count}", base_address, bastion=bastion)

    try:
        yield make
    finally:
        maker.take_down()


@pytest.fixture
def herd(
    request: pytest.FixtureRequest, tmp_path: Path, lab: Lab, lab_inventory: Path
) -> Iterator[HerdCli]:
    """A herd with its own DB and the session lab's inventory applied; the servers,
    volumes and groups a test made are deleted after it.

    Tests marked ``engine_postgresql`` (boot, scheduling, lifecycle, reconcile) run once,
    on a fresh PostgreSQL database when HERD_TEST_DB selects PostgreSQL, else on SQLite;
    the rest keep a SQLite file. The lab itself keeps no state in herd's database."""
    database_url = None
    if request.node.get_closest_marker("engine_postgresql") and postgres_wanted():
        database_url = str(request.getfixturevalue("pg_url"))
    cli = HerdCli(tmp_path, database_url=database_url)
    cli.ok("inventory", "apply", str(lab_inventory))
    yield cli
    names = [s["name"] for s in cli.servers()]
    if names:
        cli.run("server", "delete", *names)
    # Volumes after their servers (deleting one leaves its volumes available): a file
    # left on the session lab would be another test's orphan.
    volumes = [v["name"] for v in cli.ok("volume", "list", "--json").json()]
    if volumes:
        cli.run("volume", "delete", *volumes)
    for group in cli.ok("group", "list", "--json").json():
        cli.run("group", "delete", group["name"])
