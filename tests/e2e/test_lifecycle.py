"""Server actions on the lab: each checked in the host's own libvirtd and in the DB."""

from __future__ import annotations

import contextlib
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.herdcli import GuestConsole, HerdCli, assert_one_line_error, domain_state
from tests.e2e.test_guest import guest_report

pytestmark = [pytest.mark.e2e, pytest.mark.engine_postgresql]

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
    herd.ok("server", "stop", "many-1", "many-2", "many-3", "--timeout", "3")
    # Concurrently, not one after the other: every stop began before any had finished
    # (each takes 3 s, the blank guest ignoring ACPI). Read from the actions, not the
    # clock, which a loaded machine stretches.
    stops = [
        next(a for a in herd.ok("server", "actions", n, "--json").json() if a["action"] == "stop")
        for n in ("many-1", "many-2", "many-3")
    ]
    assert max(a["start_time"] for a in stops) < min(a["finish_time"] for a in stops), stops
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
    done = herd.ok("host", "disable", "lab-2", "--reason", "maintenance", "--json").json()
    assert done == {
        "host": "lab-2", "enabled": False, "disabled_reason": "maintenance", "changed": True
    }  # fmt: skip
    refused = herd.run(
        "server", "create", "x", "--flavor", "m1.nano", "--image", "blank", "--host", "lab-2"
    )
    assert refused.code == 5 and "lab-2: disabled: maintenance" in refused.stderr
    herd.ok("inventory", "apply", str(lab_inventory))
    lab2 = next(h for h in herd.ok("host", "list", "--json").json() if h["name"] == "lab-2")
    assert (lab2["status"], lab2["disabled_reason"]) == ("disabled", "maintenance")
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
    started = herd.ok("server", "migrate", "mig", "--host", "lab-3", "--no-wait", "--json")
    assert [(o["name"], o["task_state"]) for o in started.json()] == [("mig", "migrating")]
    waited = herd.ok("server", "wait", "mig", "--json").json()  # follows the background run
    assert [(o["host"], o["task_state"], o["error"]) for o in waited] == [("lab-3", None, None)]
    assert herd.server("mig")["host"] == "lab-3"
    assert states(herd, lab, "mig") == ("stopped", "shutdown", "shut off")


def ram_used(herd: HerdCli) -> dict[str, int]:
    return {h["name"]: h["ram_mb"]["used"] for h in herd.ok("host", "list", "--json").json()}


def memory_kib(lab, host: str, instance_uuid: str) -> int:
    done = lab.exec_in(host, [*VIRSH, "dumpxml", f"herd-{instance_uuid}"], check=True)
    return int(re.search(r"<memory unit='KiB'>(\d+)</memory>", done.stdout).group(1))


def kept(lab, host: str, instance_uuid: str) -> bool:
    """Whether the host keeps a resize's old directory for the server."""
    path = f"/var/lib/herd/instances/{instance_uuid}.resize"
    return lab.exec_in(host, ["test", "-d", path]).returncode == 0


def test_resize_same_host_revert_then_other_host_confirm(herd: HerdCli, lab) -> None:
    server = boot(herd, "rsz", "--host", "lab-1", image="herd-test", flavor="m1.tiny")
    uuid = server["uuid"]
    assert_one_line_error(
        herd.run("server", "resize", "rsz", "--flavor", "m1.tiny"), code=2, contains="already has"
    )
    assert_one_line_error(
        herd.run("server", "resize", "rsz", "--flavor", "m1.nano"), code=2, contains="needs 128 MiB"
    )
    base = ram_used(herd)
    # m1.small fits on lab-1 too: resized in place, both sizes held until confirmed.
    herd.ok("server", "resize", "rsz", "--flavor", "m1.small", "--timeout", "2")
    resized = herd.server("rsz")
    assert (resized["vm_state"], resized["host"], resized["flavor"]) == (
        "resized", "lab-1", "m1.small",
    )  # fmt: skip
    assert domain_state(lab, "lab-1", uuid) == "running"
    assert memory_kib(lab, "lab-1", uuid) == 256 * 1024
    assert kept(lab, "lab-1", uuid)
    assert ram_used(herd)["lab-1"] == base["lab-1"] + 256
    assert guest_report(herd, "rsz")["root-disk-bytes"] == [str(2 << 30)]  # grown
    # A resized server waits for confirm or revert; other actions are refused.
    assert_one_line_error(herd.run("server", "stop", "rsz"), code=4, contains="vm_state resized")
    herd.ok("server", "resize", "rsz", "--revert")
    reverted = herd.server("rsz")
    assert (reverted["vm_state"], reverted["host"], reverted["flavor"]) == (
        "active", "lab-1", "m1.tiny",
    )  # fmt: skip
    assert memory_kib(lab, "lab-1", uuid) == 128 * 1024
    assert not kept(lab, "lab-1", uuid)
    assert ram_used(herd) == base
    after = guest_report(herd, "rsz")
    assert after["root-disk-bytes"] == [str(1 << 30)] and after["instance-id"] == [uuid]
    # Onto another host, then confirmed: the source's kept disk and old claim go.
    herd.ok("server", "resize", "rsz", "--flavor", "m1.small", "--host", "lab-2", "--timeout", "2")
    assert herd.server("rsz")["host"] == "lab-2" and kept(lab, "lab-1", uuid)
    assert domain_state(lab, "lab-1", uuid) is None
    assert domain_state(lab, "lab-2", uuid) == "running"
    used = ram_used(herd)
    assert (used["lab-1"], used["lab-2"]) == (base["lab-1"], base["lab-2"] + 256)
    herd.ok("server", "resize", "rsz", "--confirm")
    confirmed = herd.server("rsz")
    assert (confirmed["vm_state"], confirmed["host"], confirmed["flavor"]) == (
        "active", "lab-2", "m1.small",
    )  # fmt: skip
    assert not kept(lab, "lab-1", uuid)
    used = ram_used(herd)
    assert (used["lab-1"], used["lab-2"]) == (base["lab-1"] - 128, base["lab-2"] + 256)
    moved = guest_report(herd, "rsz")
    assert moved["instance-id"] == [uuid] and moved["ip"] == after["ip"]
    assert moved["root-disk-bytes"] == [str(2 << 30)]
    assert herd.ok("reconcile", "--json").json()["exit_code"] == 0  # nothing looks drifted
    names = [a["action"] for a in herd.ok("server", "actions", "rsz", "--json").json()]
    assert names[-4:] == ["resize", "revert_resize", "resize", "confirm_resize"]


def test_a_resize_that_fails_on_the_destination_goes_back_to_the_source(herd: HerdCli, lab) -> None:
    server = boot(herd, "rszf", "--host", "lab-1")
    uuid = server["uuid"]
    base = ram_used(herd)
    lab.stop_service("lab-2", "libvirtd")  # its agent answers, but nothing can be defined
    try:
        result = herd.run(
            "server", "resize", "rszf", "--flavor", "m1.tiny", "--host", "lab-2", "--timeout", "2"
        )
    finally:
        lab.start_service("lab-2", "libvirtd")
    assert result.code == 1 and "resize to m1.tiny on lab-2 failed" in result.stdout, result
    back = herd.server("rszf")
    assert (back["vm_state"], back["task_state"], back["host"], back["flavor"]) == (
        "active", None, "lab-1", "m1.nano",
    )  # fmt: skip
    assert "resize to m1.tiny on lab-2 failed" in back["faults"][0]["message"]
    assert domain_state(lab, "lab-1", uuid) == "running"
    assert memory_kib(lab, "lab-1", uuid) == 64 * 1024
    assert domain_state(lab, "lab-2", uuid) is None
    assert lab.exec_in("lab-2", ["test", "-e", f"/var/lib/herd/instances/{uuid}"]).returncode
    assert not kept(lab, "lab-1", uuid)
    assert ram_used(herd) == base  # the new claim released, the old one back
    (resize,) = [a for a in herd.ok("server", "actions", "rszf", "--json").json()
                 if a["action"] == "resize"]  # fmt: skip
    events = [(e["event"], e["result"]) for e in resize["events"]]
    assert ("spawn", "error") in events and ("revert_source", "success") in events, events
    # Deleting a server whose resize waits removes the disk kept on its source too.
    herd.ok("server", "resize", "rszf", "--flavor", "m1.tiny", "--host", "lab-2", "--timeout", "2")
    assert kept(lab, "lab-1", uuid)
    herd.ok("server", "delete", "rszf")
    assert not kept(lab, "lab-1", uuid) and domain_state(lab, "lab-2", uuid) is None
    used = ram_used(herd)
    assert (used["lab-1"], used["lab-2"]) == (base["lab-1"] - 64, base["lab-2"])


def test_live_migration_moves_the_running_guest_with_its_memory(herd: HerdCli, lab) -> None:
    server = boot(herd, "live", "--host", "lab-1", image="herd-test", flavor="m1.tiny")
    uuid = server["uuid"]
    guest_report(herd, "live")
    console = GuestConsole(herd, "live")
    console.ask("echo kept-$((40 + 2)) > /tmp/mark; cat /tmp/mark", b"kept-42")  # RAM: initramfs
    console.detach()
    base = ram_used(herd)
    # A destination whose libvirtd is down: refused before anything is prepared there.
    lab.stop_service("lab-2", "libvirtd")
    try:
        refused = herd.run("server", "live-migrate", "live", "--host", "lab-2")
    finally:
        lab.start_service("lab-2", "libvirtd")
    assert refused.code == 5, refused
    assert (
        "herd: error: live-migrate: cannot live-migrate live from lab-1: lab-2: lab-2's "
        "libvirtd does not answer lab-1 through herd's SSH tunnel"
    ) in refused.stderr
    assert lab.exec_in("lab-2", ["test", "-e", f"/var/lib/herd/instances/{uuid}"]).returncode
    # A destination libvirt turns the guest away once it is prepared (its qemu hook says
    # no to an incoming migration): libvirt keeps the guest where it was.
    with refusing_migrations(lab, "lab-2"):
        failed = herd.run("server", "live-migrate", "live", "--host", "lab-2")
    assert failed.code == 1, failed
    assert "live migration to lab-2 failed, the server still runs on lab-1" in failed.stdout
    assert states(herd, lab, "live") == ("active", "running", "running")
    assert herd.server("live")["host"] == "lab-1"
    assert lab.exec_in("lab-2", ["test", "-e", f"/var/lib/herd/instances/{uuid}"]).returncode
    assert ram_used(herd) == base
    # A pair of hosts that cannot: said before anything moves.
    herd.sql("UPDATE hosts SET domain_type = 'kvm' WHERE name = 'lab-3'")
    try:
        refused = herd.run("server", "live-migrate", "live", "--host", "lab-3")
    finally:
        herd.sql("UPDATE hosts SET domain_type = 'qemu' WHERE name = 'lab-3'")
    assert refused.code == 5, refused
    assert (
        "herd: error: live-migrate: cannot live-migrate live from lab-1: lab-3: lab-1 runs "
        "qemu guests and lab-3 runs kvm"
    ) in refused.stderr
    herd.ok("server", "live-migrate", "live", "--host", "lab-2")
    moved = herd.server("live")
    assert (moved["host"], moved["vm_state"], moved["uuid"]) == ("lab-2", "active", uuid)
    assert domain_state(lab, "lab-2", uuid) == "running"
    assert domain_state(lab, "lab-1", uuid) is None
    assert lab.exec_in("lab-1", ["test", "-e", f"/var/lib/herd/instances/{uuid}"]).returncode
    used = ram_used(herd)
    assert (used["lab-1"], used["lab-2"]) == (base["lab-1"] - 128, base["lab-2"] + 128)
    # The same guest, never rebooted: what it kept in RAM is still there.
    console = GuestConsole(herd, "live")
    console.ask("cat /tmp/mark", b"kept-42")
    console.detach()
    log = herd.ok("server", "console-log", "live", "--json").json()["lines"]
    assert not any("HERD-TEST ready" in line for line in log), log
    (live,) = [
        a
        for a in herd.ok("server", "actions", "live", "--json").json()
        if a["action"] == "live_migrate" and a["message"] is None
    ]
    assert [(e["event"], e["result"]) for e in live["events"]] == [
        ("schedule", "success"), ("prepare_dest", "success"), ("live_migrate", "success"),
    ]  # fmt: skip
    schedule = live["events"][0]
    assert schedule["host"] == "lab-2", schedule
    assert re.fullmatch(r"lab-1 reaches it on migration ports \d+ and \d+", schedule["details"])


@contextlib.contextmanager
def refusing_migrations(lab, host: str) -> Iterator[None]:
    """libvirt on ``host`` refuses every incoming migration while the block runs: a qemu
    hook that fails the "migrate" operation (libvirtd reads its hooks when it starts)."""
    hook = "/etc/libvirt/hooks/qemu"
    script = '#!/bin/sh\n[ "$2" != migrate ]\n'
    lab.exec_in(host, ["mkdir", "-p", "/etc/libvirt/hooks"], check=True)
    lab.exec_in(host, ["sh", "-c", f"cat > {hook} && chmod 755 {hook}"], input=script, check=True)
    lab.stop_service(host, "libvirtd")
    lab.start_service(host, "libvirtd")
    try:
        yield
    finally:
        lab.exec_in(host, ["rm", "-f", hook], check=True)
        lab.stop_service(host, "libvirtd")
        lab.start_service(host, "libvirtd")


def test_a_move_keeps_the_server_groups_policy(herd: HerdCli, lab) -> None:
    herd.ok("group", "create", "apart", "--policy", "anti-affinity")
    boot(herd, "apart-1", "--group", "apart", "--host", "lab-1")
    boot(herd, "apart-2", "--group", "apart", "--host", "lab-2")
    herd.ok("server", "migrate", "apart-1", "--timeout", "2")
    assert herd.server("apart-1")["host"] == "lab-3"  # never lab-2, where apart-2 runs
    refused = herd.run("server", "migrate", "apart-2", "--host", "lab-3", "--timeout", "2")
    assert refused.code == 5, refused
    assert states(herd, lab, "apart-2") == ("active", "running", "running")
    herd.ok("server", "delete", "apart-1", "apart-2")
