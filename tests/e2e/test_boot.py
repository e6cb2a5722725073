"""The spine, for real: herd CLI → SSH → agent → libvirtd → QEMU on lab hosts."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.e2e.herdcli import HerdCli, assert_one_line_error, domain_state

pytestmark = [pytest.mark.e2e, pytest.mark.engine_postgresql]


def instance_dir_exists(lab, host: str, instance_uuid: str) -> bool:
    return (
        lab.exec_in(host, ["test", "-e", f"/var/lib/herd/instances/{instance_uuid}"]).returncode
        == 0
    )


def test_create_boots_a_running_domain_on_the_chosen_host(herd: HerdCli, lab) -> None:
    (created,) = herd.ok(
        "server", "create", "web", "--flavor", "m1.nano", "--image", "blank", "--json"
    ).json()
    assert created["vm_state"] == "active" and created["error"] is None
    server = herd.server("web")
    assert server["vm_state"] == "active"
    assert server["power_state"] == "running"
    assert server["host"] == created["host"]
    assert domain_state(lab, server["host"], server["uuid"]) == "running"
    others = [h.name for h in lab.hosts if h.name != server["host"]]
    assert all(domain_state(lab, other, server["uuid"]) is None for other in others)


def test_many_servers_spread_over_hosts_and_delete_removes_domains_and_disks(
    herd: HerdCli, lab
) -> None:
    created = herd.ok(
        "server",
        "create",
        "spread",
        "--flavor",
        "m1.nano",
        "--image",
        "blank",
        "--count",
        "3",
        "--json",
    ).json()
    assert {c["vm_state"] for c in created} == {"active"}
    assert len({c["host"] for c in created}) == 3, created
    hosts = herd.ok("host", "list", "--json").json()
    assert sum(h["instances"] for h in hosts) == 3
    assert all(h["ram_mb"]["used"] == 64 for h in hosts)

    deleted = herd.ok("server", "delete", "spread-1", "spread-2", "spread-3", "--json").json()
    assert {d["vm_state"] for d in deleted} == {"deleted"}
    for c in created:
        assert domain_state(lab, c["host"], c["uuid"]) is None
        assert not instance_dir_exists(lab, c["host"], c["uuid"])
    assert herd.servers() == []
    assert all(h["instances"] == 0 for h in herd.ok("host", "list", "--json").json())


def test_an_unknown_host_key_is_refused_until_trusted(
    herd: HerdCli, lab, lab_inventory: Path, tmp_path: Path
) -> None:
    inventory = yaml.safe_load(lab_inventory.read_text())
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    for host in inventory["hosts"]:
        host["ssh"]["known_hosts"] = str(empty)
    strict = tmp_path / "strict.yaml"
    strict.write_text(yaml.safe_dump(inventory))
    herd.ok("inventory", "apply", str(strict))
    name = inventory["hosts"][0]["name"]

    refused = herd.run("host", "refresh", name)
    assert_one_line_error(refused, code=6, contains=f"herd host trust {name}")
    assert "not trusted" in refused.stderr

    herd.ok("host", "trust", name, "--yes")
    assert name in empty.read_text() or inventory["hosts"][0]["address"] in empty.read_text()
    herd.ok("host", "refresh", name)
    herd.ok("inventory", "apply", str(lab_inventory))


def test_a_host_that_is_down_fails_only_its_own_servers(herd: HerdCli, lab, tmp_path: Path) -> None:
    # No alternates: the server placed on the dead host must fail, not be rescheduled.
    config = tmp_path / "config.yaml"
    config.write_text("scheduler:\n  max_attempts: 1\n")
    herd.env["HERD_CONFIG"] = str(config)
    herd.ok("host", "refresh")  # all hosts seen just now: the scheduler trusts them
    victim = lab.hosts[1].name
    lab.stop_service(victim, "sshd")
    try:
        result = herd.run(
            "server", "create", "mixed", "--flavor", "m1.nano", "--image", "blank",
            "--count", "3", "--json",
        )  # fmt: skip
    finally:
        lab.start_service(victim, "sshd")
    assert result.code != 0
    outcomes = {o["name"]: o for o in result.json()}
    failed = [o for o in outcomes.values() if o["host"] == victim]
    fine = [o for o in outcomes.values() if o["host"] != victim]
    assert len(failed) == 1 and len(fine) == 2
    assert all(o["vm_state"] == "active" for o in fine)
    assert failed[0]["vm_state"] == "error"
    shown = herd.server(failed[0]["name"])
    assert shown["vm_state"] == "error"
    assert victim in shown["faults"][0]["message"]
    assert "cannot reach" in shown["faults"][0]["message"]
    # The failed server gave its claim back.
    usage = {h["name"]: h for h in herd.ok("host", "list", "--json").json()}
    assert usage[victim]["instances"] == 0


def test_a_server_placed_on_a_dead_host_is_rescheduled(herd: HerdCli, lab) -> None:
    herd.ok("host", "refresh")
    victim = lab.hosts[1].name
    lab.stop_service(victim, "sshd")
    try:
        created = herd.ok(
            "server", "create", "saved", "--flavor", "m1.nano", "--image", "blank",
            "--count", "3", "--json",
        ).json()  # fmt: skip
    finally:
        lab.start_service(victim, "sshd")
    assert {c["vm_state"] for c in created} == {"active"}
    assert victim not in {c["host"] for c in created}
    moved = [herd.server(c["name"]) for c in created if herd.server(c["name"])["faults"]]
    assert len(moved) == 1
    (fault,) = moved[0]["faults"]
    assert fault["host"] == victim and "(rescheduling)" in fault["message"]


def test_a_second_build_of_the_same_instance_is_harmless(herd: HerdCli, lab) -> None:
    (created,) = herd.ok(
        "server", "create", "twice", "--flavor", "m1.nano", "--image", "blank", "--json"
    ).json()
    host = next(h for h in lab.hosts if h.name == created["host"])

    async def rebuild() -> dict:
        from orchestrator.api.hosts import find_hosts
        from orchestrator.conductor.hosts import target_of
        from orchestrator.db.engine import open_database
        from orchestrator.rpc.pool import AgentPool

        db = await open_database(herd.env["HERD_DATABASE_URL"])
        async with AgentPool() as pool:
            (row,) = await find_hosts(db, [host.name])
            target = target_of(row)
            sha = await pool.call(target, "list", {})  # noqa: F841
            image = {
                "name": "blank",
                "sha256": _image_sha(herd),
                "format": "qcow2",
                "properties": {},
            }
            args = {
                "instance": {"uuid": created["uuid"], "name": "twice", "hostname": "twice"},
                "flavor": {
                    "name": "m1.nano",
                    "vcpus": 1,
                    "ram_mb": 64,
                    "disk_gb": 1,
                    "extra_specs": {},
                },
                "image": image,
                "domain_type": row.domain_type,
            }
            job = await pool.cast(target, "build", args, str(uuid.uuid4()))
            record = await pool.follow(target, job["job_id"], timeout=120)
            listed = await pool.call(target, "list", {})
        await db.dispose()
        return {"record": record, "listed": listed}

    seen = asyncio.run(rebuild())
    assert seen["record"]["state"] == "succeeded", seen["record"]
    mine = [d for d in seen["listed"]["domains"] if d["uuid"] == created["uuid"]]
    assert len(mine) == 1 and mine[0]["state"] == "running"
    assert domain_state(lab, host.name, created["uuid"]) == "running"


def _image_sha(herd: HerdCli) -> str:
    return next(
        i["sha256"] for i in herd.ok("image", "list", "--json").json() if i["name"] == "blank"
    )


def test_a_killed_orchestrator_leaves_a_job_that_a_later_command_collects(
    herd: HerdCli, lab
) -> None:
    herd.ok("host", "refresh")
    process = herd.popen(
        "server", "create", "orphan", "--flavor", "m1.nano", "--image", "blank", "--json"
    )
    deadline = time.monotonic() + 60
    state = None
    while time.monotonic() < deadline:
        rows = herd.sql("SELECT state FROM agent_jobs WHERE op = 'build'")
        state = rows[0][0] if rows else None
        if state == "running":  # the agent acknowledged the cast
            break
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert state == "running"
    assert herd.server("orphan")["vm_state"] == "building"

    collected = herd.ok("server", "wait", "orphan", "--json").json()
    assert [c["vm_state"] for c in collected] == ["active"]
    server = herd.server("orphan")
    assert server["vm_state"] == "active" and server["task_state"] is None
    assert domain_state(lab, server["host"], server["uuid"]) == "running"
    assert all(j["collected"] for j in server["jobs"])


def test_a_host_without_libvirt_is_a_one_line_error(herd: HerdCli, lab) -> None:
    victim = lab.hosts[2].name
    lab.stop_service(victim, "libvirtd")
    try:
        result = herd.run("host", "refresh", victim)
    finally:
        lab.start_service(victim, "libvirtd")
    assert_one_line_error(result, contains=f"host {victim}: libvirt not available")
    hosts = {h["name"]: h for h in herd.ok("host", "list", "--json").json()}
    assert hosts[victim]["status"] == "no-libvirt"
    herd.ok("host", "refresh", victim)
