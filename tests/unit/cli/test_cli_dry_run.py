"""`server create --dry-run` answers as the create would: exit 5 (no valid host) when
it could not place enough servers, with the plan and its explanation still shown."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from orchestrator.db.engine import Database
from orchestrator.db.models import Flavor, Host, Image, utcnow
from tests.e2e.herdcli import HerdCli, assert_one_line_error


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
def herd(tmp_path: Path) -> HerdCli:
    cli = HerdCli(tmp_path)
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
