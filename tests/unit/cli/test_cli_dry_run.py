"""`server create --dry-run` answers as the create would: exit 5 (no valid host) when
it could not place enough servers, with the plan and its explanation still shown."""

from __future__ import annotations

import asyncio
import socket
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from orchestrator.db.engine import Database
from orchestrator.db.models import Flavor, Host, Image, utcnow
from tests.e2e.herdcli import HerdCli, assert_one_line_error
from tests.unit.cli.forkcli import ForkedHerd


async def _one_host_with_room_for_one(url: str) -> None:
    """A host heard from just now (so nothing contacts it) with room for one m1."""
    db = Database(url)
    try:
        async with db.session() as s:
            s.add(
                Host(
                    name="hv1", address="127.0.0.1", vcpus=1, ram_mb=1024, disk_gb=10,
                    libvirt_ok=True, last_seen_at=utcnow(), reserved_ram_mb=0,
                    cpu_ratio=1.0, ram_ratio=1.0,
                )
            )  # fmt: skip
            s.add(Flavor(name="m1", vcpus=1, ram_mb=1024, disk_gb=10))
            s.add(Image(name="blank", source="https://example.invalid/b", sha256="0" * 64))
    finally:
        await db.dispose()


@pytest.fixture
def herd(tmp_path: Path, db_url: str) -> HerdCli:
    """On each selected engine (db_url): the CLI stores what these tests read back."""
    cli = ForkedHerd(tmp_path, database_url=db_url)
    cli.ok("flavor", "list")  # the schema
    asyncio.run(_one_host_with_room_for_one(cli.env["HERD_DATABASE_URL"]))
    return cli


def test_a_dry_run_that_places_everything_exits_0(herd: HerdCli) -> None:
    plan = herd.ok(
        "server", "create", "web", "--flavor", "m1", "--image", "blank", "--dry-run", "--json"
    ).json()
    assert [p["host"] for p in plan["placements"]] == ["hv1"]


def test_a_dry_run_that_cannot_place_all_exits_5_and_still_explains(herd: HerdCli) -> None:
    args = ("server", "create", "web", "--flavor", "m1", "--image", "blank", "--count", "2")
    result = herd.run(*args, "--dry-run", "--explain")
    assert_one_line_error(result, code=5, contains="no valid host for the request (1 of 2")
    assert "not placed" in result.stdout and "hv1" in result.stdout
    as_json = herd.run(*args, "--dry-run", "--json")
    assert as_json.code == 5 and len(as_json.json()["unplaced"]) == 1
    assert herd.servers() == []  # a dry run, still


def test_a_dry_run_that_meets_min_count_exits_0(herd: HerdCli) -> None:
    args = ("server", "create", "web", "--flavor", "m1", "--image", "blank", "--count", "2")
    plan = herd.ok(*args, "--min-count", "1", "--dry-run", "--json").json()
    assert len(plan["placements"]) == 1 and len(plan["unplaced"]) == 1


async def _make_hv1_stale_behind_a_closed_port(url: str) -> None:
    """hv1 last heard from two minutes ago (older than the minute after which a create
    contacts it first), at a port where nothing listens: contacting it marks it down."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    db = Database(url)
    try:
        async with db.session() as s:
            host = (await s.exec(select(Host).where(Host.name == "hv1"))).one()
            host.last_seen_at = utcnow() - timedelta(minutes=2)
            host.ssh_port = closed
            s.add(host)
    finally:
        await db.dispose()


def test_a_dry_run_plans_from_the_db_without_contacting_hosts_and_says_how_old_it_is(
    herd: HerdCli,
) -> None:
    asyncio.run(_make_hv1_stale_behind_a_closed_port(herd.env["HERD_DATABASE_URL"]))
    args = ("server", "create", "web", "--flavor", "m1", "--image", "blank", "--dry-run")
    plan = herd.ok(*args, "--json").json()
    assert [p["host"] for p in plan["placements"]] == ["hv1"]  # not contacted, so not down
    (facts,) = plan["facts"]
    assert facts["host"] == "hv1" and 110 <= facts["age_seconds"] < 300
    table = herd.ok(*args).stdout
    assert "host facts" in table and "2m ago" in table
    hosts = herd.ok("host", "list", "--json").json()
    assert hosts[0]["last_error"] is None  # still: nothing tried to reach it


def test_a_dry_run_with_refresh_contacts_stale_hosts_first(herd: HerdCli) -> None:
    asyncio.run(_make_hv1_stale_behind_a_closed_port(herd.env["HERD_DATABASE_URL"]))
    args = ("server", "create", "web", "--flavor", "m1", "--image", "blank", "--dry-run")
    result = herd.run(*args, "--refresh", "--json")
    assert result.code == 5 and result.json()["placements"] == []
    assert result.json()["explanation"][0]["reason"].startswith("down")
    assert herd.ok("host", "list", "--json").json()[0]["status"] == "down"


def test_refresh_without_dry_run_is_refused(herd: HerdCli) -> None:
    result = herd.run("server", "create", "web", "--flavor", "m1", "--image", "blank", "--refresh")
    assert_one_line_error(result, code=2, contains="--refresh goes with --dry-run")
