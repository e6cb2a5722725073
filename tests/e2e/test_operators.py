"""Several operators, for real: four `herd` homes (each its own HOME and XDG dirs, as if
on four machines) boot servers on the lab at once through one PostgreSQL database.

With room for all, everything boots; with room for fewer than asked, whole requests
fit or are refused with their reason, never half. Either way no host holds more than
its capacity after ratios, no IP or MAC is given twice, and every server's action log
is whole. Two `herd reconcile` runs from two "cron hosts" at once: one runs, the other
exits 3; a reconcile during the boots leaves them alone."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from tests.e2e.herdcli import HerdCli, Result, assert_one_line_error
from tests.e2e.test_reconcile import configure, tarpit  # noqa: F401 (a fixture)

pytestmark = pytest.mark.e2e

OPERATORS = 4
CREATE = ("server", "create", "--flavor", "m1.nano", "--image", "blank")


def with_capacity(lab_inventory: Path, tmp_path: Path, vcpus: int) -> Path:
    """The lab's inventory with room for ``vcpus`` m1.nano servers per host: vCPUs are
    the only limit (ratio 1.0, nothing reserved)."""
    inventory = yaml.safe_load(lab_inventory.read_text())
    for host in inventory["hosts"]:
        host["capacity"] = {"vcpus": vcpus}
        host["allocation_ratios"] = {"cpu": 1.0}
        host["reserved"] = {"vcpus": 0, "ram_mb": 0, "disk_gb": 0}
    path = tmp_path / f"inventory-{vcpus}.yaml"
    path.write_text(yaml.safe_dump(inventory))
    return path


@pytest.fixture
def operators(tmp_path: Path, pg_url: str, lab) -> Iterator[list[HerdCli]]:
    """Four operator homes on one PostgreSQL database; their servers deleted after."""
    clis = []
    for n in range(OPERATORS):
        home = tmp_path / f"operator-{n}"
        home.mkdir()
        cli = HerdCli(home, database_url=pg_url)
        cli.env["HOME"] = str(home)
        clis.append(cli)
    yield clis
    names = [s["name"] for s in clis[0].servers()]
    if names:
        clis[0].run("server", "delete", *names, timeout=600)


def start_creates(clis: list[HerdCli], count: int) -> list[subprocess.Popen[str]]:
    """Every operator's `server create opN --count COUNT`, started at once."""
    return [
        cli.popen(*CREATE, f"op{n}", "--count", str(count), "--json") for n, cli in enumerate(clis)
    ]


def finish(runs: list[subprocess.Popen[str]]) -> list[Result]:
    results = []
    for run in runs:
        stdout, stderr = run.communicate(timeout=900)
        results.append(Result(run.returncode, stdout, stderr))
    return results


def db_rows(url: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchall()


def assert_within_capacity(url: str) -> None:
    """Claims summed per host never exceed what the host has after ratios."""
    over = db_rows(
        url,
        "SELECT h.name, SUM(a.vcpus), COALESCE(h.override_vcpus, h.vcpus) * h.cpu_ratio "
        "- h.reserved_vcpus FROM hosts h JOIN allocations a ON a.host_id = h.id "
        "GROUP BY h.id HAVING SUM(a.vcpus) > "
        "COALESCE(h.override_vcpus, h.vcpus) * h.cpu_ratio - h.reserved_vcpus",
    )
    assert over == []


def assert_addresses_unique(url: str, servers: list[dict[str, Any]]) -> None:
    for column in ("ip", "mac"):
        twice = db_rows(
            url,
            f"SELECT {column}, COUNT(*) FROM ports WHERE {column} IS NOT NULL "
            f"GROUP BY {column} HAVING COUNT(*) > 1",
        )
        assert twice == [], column
    ports = [p for s in servers for p in s["addresses"]]
    assert len(ports) >= len(servers)
    for key in ("ip", "mac"):
        values = [p[key] for p in ports if p[key]]
        assert len(values) == len(set(values)), key


def assert_action_logs_whole(cli: HerdCli, servers: list[dict[str, Any]]) -> None:
    """Each server's create finished: an active one's every event with success, a
    refused one's with the reason it was refused."""
    for server in servers:
        actions = cli.ok("server", "actions", server["name"], "--json").json()
        assert [a["action"] for a in actions] == ["create"], server["name"]
        (create,) = actions
        assert create["finish_time"] is not None, create
        if server["vm_state"] == "active":
            assert create["message"] is None and create["events"], create
            for event in create["events"]:
                assert event["finish_time"] is not None and event["result"] == "success", event
        else:
            said = [create["message"] or ""] + [str(e["details"]) for e in create["events"]]
            assert any("no valid host" in text for text in said), create


def test_four_operators_with_room_for_all_boot_40_and_a_reconcile_leaves_the_boots_alone(
    operators: list[HerdCli], pg_url: str, lab_inventory: Path, tmp_path: Path
) -> None:
    first = operators[0]
    first.ok("inventory", "apply", str(with_capacity(lab_inventory, tmp_path, vcpus=14)))
    # Room for all means the scheduler's limit on concurrent builds too (Nova's
    # max_io_ops_per_host, 8 by default): 40 boots at once put 14 on a host.
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "scheduler": {"max_io_ops_per_host": 40},
                "reconcile": {"unknown_domains": "noop"},  # other tests' leftovers
            }
        )
    )
    for cli in operators:
        cli.env["HERD_CONFIG"] = str(config)
    creates = start_creates(operators, count=10)
    deadline = time.monotonic() + 120
    while db_rows(pg_url, "SELECT COUNT(*) FROM instances")[0][0] == 0:  # wait for the boots
        assert time.monotonic() < deadline, "no server was created within 2 minutes"
        time.sleep(0.2)
    during = operators[1].run("reconcile", "--json", timeout=600)  # while they boot
    results = finish(creates)
    for result in results:
        assert result.code == 0, result.stderr
    assert during.code in (0, 1, 2), during.stderr  # it ran, and was not locked out

    servers = first.servers()
    assert len(servers) == 40
    assert {s["vm_state"] for s in servers} == {"active"}, [
        (s["name"], s["vm_state"]) for s in servers if s["vm_state"] != "active"
    ]
    ours = {s["name"] for s in servers}
    touched = [f for f in during.json()["findings"] if f.get("server") in ours]
    assert all(f["outcome"] not in ("fixed", "done", "rolled_back") for f in touched), touched
    assert_within_capacity(pg_url)
    assert_addresses_unique(pg_url, servers)
    assert_action_logs_whole(first, servers)


def test_four_operators_with_room_for_three_requests_get_three_whole_ones_and_a_reason(
    operators: list[HerdCli], pg_url: str, lab_inventory: Path, tmp_path: Path
) -> None:
    first = operators[0]
    first.ok("inventory", "apply", str(with_capacity(lab_inventory, tmp_path, vcpus=5)))
    results = finish(start_creates(operators, count=5))  # 20 asked, room for 15
    codes = sorted(r.code for r in results)
    assert codes == [0, 0, 0, 5], [(r.code, r.stderr) for r in results]
    (loser,) = [n for n, r in enumerate(results) if r.code != 0]
    assert_one_line_error(results[loser], code=5, contains="no valid host")

    servers = first.servers()
    active = [s for s in servers if s["vm_state"] == "active"]
    refused = [s for s in servers if s["vm_state"] != "active"]
    assert len(active) == 15
    assert {s["name"].rsplit("-", 1)[0] for s in active} == {
        f"op{n}" for n in range(OPERATORS) if n != loser
    }  # three whole requests, never part of the fourth
    assert {s["name"].rsplit("-", 1)[0] for s in refused} <= {f"op{loser}"}
    assert {s["vm_state"] for s in refused} <= {"error"}
    assert_within_capacity(pg_url)
    assert_addresses_unique(pg_url, active)
    assert_action_logs_whole(first, servers)


def test_two_cron_hosts_reconcile_at_once_one_runs_the_other_exits_3(
    operators: list[HerdCli],
    lab_inventory: Path,
    tmp_path: Path,
    tarpit: int,  # noqa: F811
) -> None:
    # A host that hangs keeps the first run busy long enough for the second to meet it.
    ssh = yaml.safe_load(lab_inventory.read_text())["hosts"][0]["ssh"]
    slow = tmp_path / "slow.yaml"
    slow.write_text(
        yaml.safe_dump(
            {"hosts": [{"name": "hangs", "address": "127.0.0.1", "ssh": {**ssh, "port": tarpit}}]}
        )
    )
    cron_a, cron_b = operators[:2]
    cron_a.ok("inventory", "apply", str(lab_inventory), str(slow))
    for cli in (cron_a, cron_b):
        configure(cli, tmp_path, host_timeout=4)
    runs = [
        subprocess.Popen(
            cli.command("reconcile"),
            env=cli.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for cli in (cron_a, cron_b)
    ]
    outcomes = sorted((p.wait(timeout=120), p.stderr.read()) for p in runs)
    assert [code for code, _ in outcomes] == [2, 3]  # one ran (and met the hung host)
    assert_one_line_error(
        Result(3, "", outcomes[1][1]), code=3, contains="another herd reconcile is running (pid "
    )
