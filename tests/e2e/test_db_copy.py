"""The way up from SQLite, on a real lab: `herd db copy` moves a fleet's state into
PostgreSQL and herd carries on there as if nothing happened."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.herdcli import HerdCli

pytestmark = pytest.mark.e2e

STAMPS = ("created_at", "launched_at", "deleted_at")


def comparable(servers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`server list --json` with its timestamps as instants: SQLite gives them without
    a zone (herd stores UTC), PostgreSQL with one."""
    shown = []
    for server in sorted(servers, key=lambda s: s["uuid"]):
        server = dict(server)
        for key in STAMPS:
            if server.get(key):
                when = datetime.fromisoformat(server[key])
                server[key] = (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC)
        shown.append(server)
    return shown


def test_a_lab_moves_from_sqlite_to_postgresql_and_carries_on(
    herd: HerdCli, lab: Any, pg_empty_url: str, tmp_path: Path
) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "id")], check=True
    )
    herd.ok("keypair", "import", "ops", "--public-key", str(tmp_path / "id.pub"))
    herd.ok("group", "create", "web", "--policy", "anti-affinity")
    created = herd.ok(
        "server", "create", "web", "--flavor", "m1.nano", "--image", "blank", "--count", "2",
        "--group", "web", "--key-name", "ops", "--json",
    ).json()  # fmt: skip
    assert {c["vm_state"] for c in created} == {"active"}, created
    before = herd.servers()
    assert len({s["host"] for s in before}) == 2 and all(s["addresses"] for s in before)
    counts = herd.ok("db", "status", "--json").json()["tables"]
    assert counts["instance_actions"] >= 2 and counts["ports"] == 2

    copied = herd.ok("db", "copy", "--to", pg_empty_url, "--json").json()
    assert copied["tables"] == counts

    moved = HerdCli(tmp_path, database_url=pg_empty_url)
    new_name = "after-move"
    try:
        assert comparable(moved.servers()) == comparable(before)
        assert moved.ok("db", "status", "--json").json()["tables"] == counts
        assert [k["name"] for k in moved.ok("keypair", "list", "--json").json()] == ["ops"]
        (group,) = moved.ok("group", "list", "--json").json()
        assert group["name"] == "web" and len(group["members"]) == 2

        (new,) = moved.ok(
            "server", "create", new_name, "--flavor", "m1.nano", "--image", "blank",
            "--group", "web", "--json",
        ).json()  # fmt: skip
        assert new["vm_state"] == "active", new
        assert new["host"] not in {s["host"] for s in before}  # the group still holds
        taken = {a["ip"] for s in before for a in s["addresses"]}
        assert not taken & {a["ip"] for a in moved.server(new_name)["addresses"]}
        result = moved.run("reconcile")
        assert result.code == 0, result.stderr
    finally:
        moved.run("server", "delete", new_name)
