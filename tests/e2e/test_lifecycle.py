"""Server actions on the lab: each checked in the host's own libvirtd and in the DB."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.herdcli import HerdCli, assert_one_line_error, domain_state
from tests.e2e.test_guest import guest_report

pytestmark = pytest.mark.e2e

VIRSH = ["virsh", "-c", "qemu:///system"]


def boot(
    herd: HerdCli, name: str, *args: str, image: str = "blank", flavor: str = "m1.nano"
) -> dict:
    herd.ok("server", "create", name, "--flavor", flavor, "--image", image, *args)
    return herd.server(name)


def states(herd: HerdCli, lab, name: str) -> tuple[str, str, str | None]:
    server = herd.server(name)
    assert server["task_state"] is None
    return (
        server["vm_state"],
        server["power_state"],
        domain_state(lab, server["host"], server["uuid"]),
    )


def test_power_actions_change_the_real_domain_and_the_db(herd: HerdCli, lab) -> None:
    server = boot(herd, "pwr")
    # The blank guest has no OS to hear ACPI: stop waits --timeout, then forces it.
    herd.ok("server", "stop", "pwr", "--timeout", "2")
    assert states(herd, lab, "pwr") == ("stopped", "shutdown", "shut off")
    herd.ok("server", "start", "pwr")
    assert states(herd, lab, "pwr") == ("active", "running", "running")
    herd.ok("server", "pause", "pwr")
    assert states(herd, lab, "pwr") == ("paused", "paused", "paused")
    herd.ok("server", "unpause", "pwr")
    assert states(herd, lab, "pwr") == ("active", "running", "running")
    herd.ok("server", "suspend", "pwr")
    assert states(herd, lab, "pwr") == ("suspended", "shutdown", "shut off")
    info = lab.exec_in(server["host"], [*VIRSH, "dominfo", f"herd-{server['uuid']}"], check=True)
    assert "Managed save:   yes" in info.stdout
    herd.ok("server", "resume", "pwr")
    assert states(herd, lab, "pwr") == ("active", "running", "running")
    herd.ok("server", "reboot", "pwr", "--timeout", "2")  # soft, then forced
    assert states(herd, lab, "pwr") == ("active", "running", "running")
    herd.ok("server", "reboot", "--hard", "pwr")
    assert states(herd, lab, "pwr") == ("active", "running", "running")
    actions = herd.ok("server", "actions", "pwr", "--json").json()
    assert [a["action"] for a in actions] == [
        "create", "stop", "start", "pause", "unpause", "suspend", "resume", "reboot", "hard_reboot",
    ]  # fmt: skip
    for action in actions[1:]:
        (event,) = action["events"]
        assert (event["event"], event["host"], event["result"]) == (
            action["action"], server["host"], "success",
        )  # fmt: skip


def test_actions_are_refused_by_state_and_two_racing_actions_cannot_both_run(
    herd: HerdCli, lab
) -> None:
    boot(herd, "guarded")
    line = assert_one_line_error(herd.run("server", "start", "guarded"), code=4)
    assert "cannot start server guarded: it is vm_state active, task_state none" in line
    assert "needs vm_state stopped" in line
    assert_one_line_error(
        herd.run("server", "unpause", "guarded"), code=4, contains="vm_state active"
    )
    racers = [
        subprocess.Popen(
            herd.command("server", "stop", "guarded", "--timeout", "3"),
            env=herd.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(2)
    ]  # fmt: skip
    results = sorted((p.wait(timeout=120), p.stderr.read()) for p in racers)
    assert [code for code, _ in results] == [0, 4], results
    assert "task_state powering-off" in results[1][1] or "vm_state stopped" in results[1][1]
    assert states(herd, lab, "guarded") == ("stopped", "shutdown", "shut off")


def test_many_servers_at_once_and_no_wait(herd: HerdCli, lab) -> None:
    herd.ok("server", "create", "many", "--flavor", "m1.nano", "--image", "blank", "--count", "3")
    started = time.monotonic()
    herd.ok("server", "stop", "many-1", "many-2", "many-3", "--timeout", "3")
    assert time.monotonic() - started < 3 * 3  # concurrently, not one after the other
    for name in ("many-1", "many-2", "many-3"):
        assert states(herd, lab, name) == ("stopped", "shutdown", "shut off")
    cast = herd.ok("server", "start", "many-1", "--no-wait", "--json").json()
    assert cast[0]["task_state"] == "powering-on"
    herd.ok("server", "wait", "many-1")
    assert states(herd, lab, "many-1") == ("active", "running", "running")


def test_rebuild_gives_a_new_disk_with_the_same_uuid_host_and_address(herd: HerdCli, lab) -> None:
    server = boot(herd, "rb", image="herd-test", flavor="m1.tiny")
    first = guest_report(herd, "rb")
    marker = f"/var/lib/herd/instances/{server['uuid']}/old-disk-was-here"
    lab.exec_in(server["host"], ["touch", marker], check=True)
    herd.ok("server", "rebuild", "rb")
    after = herd.server("rb")
    assert (after["uuid"], after["host"], after["addresses"]) == (
        server["uuid"], server["host"], server["addresses"],
    )  # fmt: skip
    assert lab.exec_in(server["host"], ["test", "-e", marker]).returncode != 0  # all made anew
    # The instance directory, console log included, is new: this boot is the rebuilt one.
    again = guest_report(herd, "rb")
    assert again["instance-id"] == first["instance-id"] == [server["uuid"]]
    assert again["ip"] == first["ip"]
    assert states(herd, lab, "rb") == ("active", "running", "running")


def test_a_disabled_host_gets_nothing_new_even_after_an_inventory_apply(
    herd: HerdCli, lab_inventory: Path
) -> None:
    herd.ok("host", "disable", "lab-2", "--reason", "maintenance")
    refused = herd.run(
        "server", "create", "x", "--flavor", "m1.nano", "--image", "blank", "--host", "lab-2"
    )
    assert refused.code == 5 and "lab-2: disabled" in refused.stderr
    herd.ok("inventory", "apply", str(lab_inventory))
    lab2 = next(h for h in herd.ok("host", "list", "--json").json() if h["name"] == "lab-2")
    assert lab2["status"] == "disabled"
    herd.ok("host", "enable", "lab-2")
    herd.ok("server", "delete", "x")
    boot(herd, "y", "--host", "lab-2")


def test_evacuate_rebuilds_a_dead_hosts_servers_elsewhere_and_reconcile_reaps_the_old_copy(
    herd: HerdCli, lab, tmp_path: Path
) -> None:
    server = boot(herd, "evac", "--host", "lab-3", image="herd-test", flavor="m1.tiny")
    before = guest_report(herd, "evac")
    assert_one_line_error(herd.run("host", "evacuate", "lab-3"), code=4, contains="answers")
    lab.stop_service("lab-3", "libvirtd")
    lab.stop_service("lab-3", "sshd")
    try:
        herd.ok("host", "evacuate", "lab-3")
        moved = herd.server("evac")
        assert moved["host"] in ("lab-1", "lab-2") and moved["uuid"] == server["uuid"]
        assert moved["addresses"] == server["addresses"]
        assert domain_state(lab, moved["host"], moved["uuid"]) == "running"
        after = guest_report(herd, "evac")
        assert after["instance-id"] == [server["uuid"]] and after["ip"] == before["ip"]
    finally:
        lab.start_service("lab-3", "libvirtd")
        lab.start_service("lab-3", "sshd")
    # The old host is back with its stale copy; reconcile removes it, never starts it.
    config = tmp_path / "config.yaml"
    config.write_text("reconcile:\n  unknown_domains: noop\n")
    herd.env["HERD_CONFIG"] = str(config)
    result = herd.run("reconcile", "--json")
    stale = [f for f in result.json()["findings"] if f["uuid"] == server["uuid"]]
    assert [(f["kind"], f["host"], f["outcome"]) for f in stale] == [
        ("deleted_running", "lab-3", "fixed")
    ], result.stdout
    assert domain_state(lab, "lab-3", server["uuid"]) is None
    assert domain_state(lab, moved["host"], server["uuid"]) == "running"


def test_cold_migration_moves_the_guest_with_its_uuid_and_ip_and_frees_the_source(
    herd: HerdCli, lab
) -> None:
    server = boot(herd, "mig", "--host", "lab-1", image="herd-test", flavor="m1.tiny")
    before = guest_report(herd, "mig")
    refused = herd.run("server", "migrate", "mig", "--host", "lab-1")
    assert refused.code == 5 and "lab-1: the server is moving away from this host" in refused.stderr
    assert states(herd, lab, "mig") == ("active", "running", "running")  # put back as it was
    herd.ok("server", "migrate", "mig", "--host", "lab-2", "--timeout", "2")
    moved = herd.server("mig")
    assert moved["host"] == "lab-2" and moved["uuid"] == server["uuid"]
    assert moved["addresses"] == server["addresses"]
    assert states(herd, lab, "mig") == ("active", "running", "running")
    assert domain_state(lab, "lab-1", server["uuid"]) is None  # the source copy is gone
    assert (
        lab.exec_in("lab-1", ["test", "-e", f"/var/lib/herd/instances/{server['uuid']}"]).returncode
        != 0
    )
    after = guest_report(herd, "mig")  # read from lab-2's console log now
    assert after["instance-id"] == [server["uuid"]] and after["ip"] == before["ip"]
    hosts = {h["name"]: h["instances"] for h in herd.ok("host", "list", "--json").json()}
    assert (hosts["lab-1"], hosts["lab-2"]) == (0, 1)  # the claim moved with it
    (migrate,) = [
        a
        for a in herd.ok("server", "actions", "mig", "--json").json()
        if a["action"] == "migrate" and a["message"] is None
    ]
    assert [(e["event"], e["result"]) for e in migrate["events"]] == [
        ("schedule", "success"), ("stop_source", "success"), ("copy_disk", "success"),
        ("spawn", "success"), ("cleanup_source", "success"),
    ]  # fmt: skip
    # A stopped server migrates stopped.
    herd.ok("server", "stop", "mig", "--timeout", "2")
    herd.ok("server", "migrate", "mig", "--host", "lab-3")
    assert herd.server("mig")["host"] == "lab-3"
    assert states(herd, lab, "mig") == ("stopped", "shutdown", "shut off")
