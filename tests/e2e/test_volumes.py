"""Volumes on the lab: a file on the host's storage, hot-plugged into a running test
guest, written from inside it, detached, attached to another server on the same host
and read back there, then carried to another host by a cold migration and read back
again. The guest reports its disks on the console (``disk-added=vdc``)
and reads and writes a marker through its /cgi-bin/disk, from the root namespace."""

from __future__ import annotations

import ipaddress
import re
import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest
import yaml

from orchestrator.lab import Lab
from orchestrator.lab.reach import http_get, probe
from tests.e2e.herdcli import HerdCli, Result, assert_one_line_error

pytestmark = [pytest.mark.e2e, pytest.mark.engine_postgresql]

GIB = 1 << 30
VIRSH = ["virsh", "-c", "qemu:///system"]


def console_until(herd: HerdCli, name: str, needle: str, timeout: float = 120) -> list[str]:
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = herd.ok("server", "console-log", name, "--lines", "400", "--json").json()["lines"]
        if any(needle in line for line in lines):
            return lines
        time.sleep(1)
    raise AssertionError(f"{name} never printed {needle!r}; console:\n" + "\n".join(lines[-40:]))


def guest_disk(herd: HerdCli, name: str, volume: str, event: str, size: int) -> str:
    """The guest's name for the volume, from the console line it printed when the disk
    came (``event`` added, or empty for the boot's own list) or grew (resized), found by
    its serial (the volume's UUID): the kernel names disks in the order it finds them,
    not as libvirt was asked."""
    serial = herd.ok("volume", "show", volume, "--json").json()["uuid"][:20]
    pattern = re.compile(rf"HERD-TEST disk-?{event}=(vd[a-z]) bytes={size} serial={serial}")
    lines = console_until(herd, name, f"bytes={size} serial={serial}")
    (dev,) = {m.group(1) for m in map(pattern.search, lines) if m}
    return dev


def provider_ip(herd: HerdCli, lab: Lab, name: str) -> str:
    """The server's address on the lab's provider bridge: checked to be one, since the
    test sends it HTTP requests (an address of a user-mode network would be routed off
    the machine). Returned once the guest answers there with its own instance-id: a
    guest that just printed "ready" may still be bringing its NIC up, and the root
    namespace may still hold the MAC of an earlier guest that had the address."""
    server = herd.server(name)
    (port,) = server["addresses"]
    assert ipaddress.ip_address(port["ip"]) in lab.info().network.provider, port
    _, answered, _ = probe(server, 90)
    assert answered == "its instance-id", f"{name} at {port['ip']}: {answered}"
    return str(port["ip"])


def disk(address: str, query: str) -> str:
    return http_get(address, timeout=20, path=f"/cgi-bin/disk?{query}")


@pytest.fixture
def volumes(herd: HerdCli) -> Iterator[list[str]]:
    """Volumes the test made, deleted after it (their files live on the session lab)."""
    made: list[str] = []
    yield made
    for server in herd.servers():
        for name in made:
            herd.run("server", "remove", "volume", server["name"], name)
    for name in made:
        listed = herd.run("volume", "snapshot", "list", "--volume", name, "--json")
        for snap in listed.json() if listed.code == 0 else []:
            herd.run("volume", "snapshot", "delete", snap["name"])
        herd.run("volume", "delete", name)


def test_a_volume_hot_plugged_written_detached_read_back_elsewhere_and_carried_by_a_migration(
    herd: HerdCli, lab: Lab, volumes: list[str]
) -> None:
    created = herd.ok(
        "server", "create", "vol", "--flavor", "m1.tiny", "--image", "herd-test",
        "--count", "2", "--network", "provider", "--host", "lab-1", "--json",
    ).json()  # fmt: skip
    assert {c["vm_state"] for c in created} == {"active"}, created
    ips = {}
    for name in ("vol-1", "vol-2"):
        console_until(herd, name, "HERD-TEST ready")
        ips[name] = provider_ip(herd, lab, name)

    made = herd.ok("volume", "create", "data", "--size", "2", "--host", "lab-1", "--json").json()
    volumes.append("data")
    assert [(v["status"], v["size_gb"], v["host"]) for v in made] == [("available", 2, "lab-1")]
    attached = herd.ok("server", "add", "volume", "vol-1", "data", "--json").json()
    assert attached[0]["error"] is None, attached
    dev = guest_disk(herd, "vol-1", "data", "added", 2 * GIB)
    shown = herd.ok("volume", "show", "data", "--json").json()
    assert (shown["status"], shown["server"], shown["device"]) == ("in-use", "vol-1", "vdc")
    assert disk(ips["vol-1"], f"op=write&dev={dev}&marker=e2e-7c1f") == f"wrote e2e-7c1f to {dev}"
    assert disk(ips["vol-1"], f"op=read&dev={dev}") == "HERD-MARKER e2e-7c1f"

    # Attached: not to another server, and not deleted (the refusal names its server).
    refused = herd.run("volume", "delete", "data")
    assert "in use by server vol-1" in assert_one_line_error(refused, code=4)
    refused = herd.run("server", "add", "volume", "vol-2", "data")
    assert "volume data is in-use" in assert_one_line_error(refused, code=4)

    detached = herd.ok("server", "remove", "volume", "vol-1", "data", "--json").json()
    assert detached[0]["error"] is None, detached
    console_until(herd, "vol-1", f"HERD-TEST disk-removed={dev}")
    assert herd.ok("volume", "show", "data", "--json").json()["status"] == "available"

    herd.ok("server", "add", "volume", "vol-2", "data", "--device", "vdd")
    assert herd.ok("volume", "show", "data", "--json").json()["device"] == "vdd"
    there = guest_disk(herd, "vol-2", "data", "added", 2 * GIB)
    assert disk(ips["vol-2"], f"op=read&dev={there}") == "HERD-MARKER e2e-7c1f"

    # A cold migration carries the volume: the guest boots on lab-2 with it (it lists
    # it at boot) and reads the marker back from it.
    moved = herd.ok("server", "migrate", "vol-2", "--host", "lab-2", "--json").json()
    assert (moved[0]["host"], moved[0]["error"]) == ("lab-2", None), moved
    shown = herd.ok("volume", "show", "data", "--json").json()
    assert (shown["host"], shown["status"], shown["server"]) == ("lab-2", "in-use", "vol-2")
    console_until(herd, "vol-2", "HERD-TEST ready")  # its console on lab-2: this boot's
    booted = guest_disk(herd, "vol-2", "data", "", 2 * GIB)  # the boot's own disk list
    assert disk(provider_ip(herd, lab, "vol-2"), f"op=read&dev={booted}") == (
        "HERD-MARKER e2e-7c1f"
    )
    left = lab.exec_in("lab-1", ["test", "-e", str(made[0]["path"])])
    assert left.returncode == 1, "the volume's old file is still on lab-1"


def test_a_server_boots_on_its_volumes_host_grows_it_cannot_live_migrate_and_reconcile_mends_it(
    herd: HerdCli, lab: Lab, volumes: list[str], tmp_path: Path
) -> None:
    herd.ok("volume", "create", "grown", "--size", "1", "--host", "lab-2", "--format", "raw")
    volumes.append("grown")
    (booted,) = herd.ok(
        "server", "create", "grow", "--flavor", "m1.tiny", "--image", "herd-test",
        "--network", "provider", "--volume", "grown", "--json",
    ).json()  # fmt: skip
    assert (booted["host"], booted["error"]) == ("lab-2", None), booted  # the volume's host
    console_until(herd, "grow", "HERD-TEST ready")
    dev = guest_disk(herd, "grow", "grown", "(?:added)?", GIB)  # seen at boot, or hot
    herd.ok("volume", "extend", "grown", "--size", "3")
    assert guest_disk(herd, "grow", "grown", "resized", 3 * GIB) == dev
    refused = herd.run("server", "live-migrate", "grow")
    message = assert_one_line_error(refused, code=4)
    assert "has volumes attached (grown)" in message and "cold-migrate" in message

    # Behind herd's back: the disk unplugged with virsh, a stray file in the volume
    # directory. Reconcile reports both, then (by policy) plugs the disk back in, which
    # the guest sees, and removes the stray file.
    shown = herd.ok("volume", "show", "grown", "--json").json()
    server_uuid = herd.server("grow")["uuid"]
    unplug = ["detach-disk", f"herd-{server_uuid}", shown["device"], "--live", "--config"]
    lab.exec_in("lab-2", [*VIRSH, *unplug], check=True)
    console_until(herd, "grow", f"HERD-TEST disk-removed={dev}")
    stray = f"{PurePosixPath(shown['path']).parent}/{uuidlib.uuid4()}.qcow2"
    lab.exec_in("lab-2", ["qemu-img", "create", "-q", "-f", "qcow2", stray, "1G"], check=True)
    drift = {("volume_attachment_missing", "grow"), ("orphan_volume", "lab-2")}

    result, report = reconcile(herd, tmp_path)
    assert result.code == 2, result.stderr
    seen = {(f["kind"], f["server"] or f["host"]): f for f in report["findings"]}
    assert drift <= set(seen), report["findings"]
    assert {seen[d]["outcome"] for d in drift} == {"unfixed"}
    assert stray.rsplit("/", 1)[1] in seen[("orphan_volume", "lab-2")]["detail"]

    result, report = reconcile(herd, tmp_path, volume_attachments="restore", orphan_volumes="reap")
    seen = {(f["kind"], f["server"] or f["host"]): f for f in report["findings"]}
    assert {seen[d]["outcome"] for d in drift} == {"fixed"}, report["findings"]
    # The guest sees it come back at its grown size (at boot it came as 1 GiB).
    plugged = re.compile(rf"disk-added=vd[a-z] bytes={3 * GIB} serial={shown['uuid'][:20]}")
    deadline = time.monotonic() + 60
    while not any(map(plugged.search, console_until(herd, "grow", "HERD-TEST ready"))):
        assert time.monotonic() < deadline, "the guest never saw the volume plugged back in"
        time.sleep(1)
    assert lab.exec_in("lab-2", ["test", "-e", stray]).returncode == 1  # reaped
    assert herd.ok("volume", "show", "grown", "--json").json()["status"] == "in-use"


def reconcile(herd: HerdCli, tmp_path: Path, **policies: str) -> tuple[Result, dict]:
    """One run under these policies; other tests' domains on the session lab are not
    this test's to judge."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"reconcile": {"unknown_domains": "noop", **policies}}))
    herd.env["HERD_CONFIG"] = str(path)
    result = herd.run("reconcile", "--json")
    assert result.code in (0, 1, 2), result.stderr
    return result, result.json()


def test_a_snapshot_of_a_volume_in_use_is_taken_while_the_guest_writes_and_reverted_later(
    herd: HerdCli, lab: Lab, volumes: list[str]
) -> None:
    (made,) = herd.ok(
        "server", "create", "snap", "--flavor", "m1.tiny", "--image", "herd-test",
        "--network", "provider", "--host", "lab-1", "--json",
    ).json()  # fmt: skip
    assert made["vm_state"] == "active", made
    console_until(herd, "snap", "HERD-TEST ready")
    address = provider_ip(herd, lab, "snap")
    herd.ok("volume", "create", "kept", "--size", "1", "--host", "lab-1")
    volumes.append("kept")
    herd.ok("server", "add", "volume", "snap", "kept")
    dev = guest_disk(herd, "snap", "kept", "added", GIB)
    assert disk(address, f"op=write&dev={dev}&marker=first-3a") == f"wrote first-3a to {dev}"

    (taken,) = herd.ok("volume", "snapshot", "create", "kept", "--name", "kept-1", "--json").json()
    assert (taken["status"], taken["volume"], taken["host"]) == ("available", "kept", "lab-1")
    # Taken while the guest ran on: it answers, and writes on over the volume.
    assert disk(address, f"op=write&dev={dev}&marker=second-4b") == f"wrote second-4b to {dev}"
    listed = herd.ok("volume", "snapshot", "list", "--volume", "kept", "--json").json()
    assert [s["name"] for s in listed] == ["kept-1"]
    refused = herd.run("volume", "snapshot", "revert", "kept-1")
    assert "detach it" in assert_one_line_error(refused, code=4)
    refused = herd.run("volume", "delete", "kept")
    assert "in use by server snap" in assert_one_line_error(refused, code=4)

    herd.ok("server", "remove", "volume", "snap", "kept")
    console_until(herd, "snap", f"HERD-TEST disk-removed={dev}")
    refused = herd.run("volume", "delete", "kept")
    assert "has snapshots (kept-1)" in assert_one_line_error(refused, code=4)
    (reverted,) = herd.ok("volume", "snapshot", "revert", "kept-1", "--json").json()
    assert reverted["status"] == "available", reverted
    herd.ok("server", "add", "volume", "snap", "kept")
    again = guest_disk(herd, "snap", "kept", "added", GIB)
    assert disk(address, f"op=read&dev={again}") == "HERD-MARKER first-3a"

    herd.ok("server", "remove", "volume", "snap", "kept")
    herd.ok("volume", "snapshot", "delete", "kept-1")
    gone = lab.exec_in("lab-1", ["test", "-e", str(taken["path"])])
    assert gone.returncode == 1, "the snapshot's file is still on lab-1"
    herd.run("server", "delete", "snap")


def test_a_resize_carries_a_volume_and_a_revert_brings_back_what_the_guest_wrote(
    herd: HerdCli, lab: Lab, volumes: list[str]
) -> None:
    (made,) = herd.ok(
        "server", "create", "rsz", "--flavor", "m1.tiny", "--image", "herd-test",
        "--network", "provider", "--host", "lab-1", "--json",
    ).json()  # fmt: skip
    assert made["vm_state"] == "active", made
    console_until(herd, "rsz", "HERD-TEST ready")
    address = provider_ip(herd, lab, "rsz")
    herd.ok("volume", "create", "carried", "--size", "1", "--host", "lab-1")
    volumes.append("carried")
    herd.ok("server", "add", "volume", "rsz", "carried")
    dev = guest_disk(herd, "rsz", "carried", "added", GIB)
    assert disk(address, f"op=write&dev={dev}&marker=before-5e") == f"wrote before-5e to {dev}"
    source_file = herd.ok("volume", "show", "carried", "--json").json()["path"]

    (resized,) = herd.ok(
        "server", "resize", "rsz", "--flavor", "m1.small", "--host", "lab-2",
        "--timeout", "2", "--json",
    ).json()  # fmt: skip
    assert (resized["vm_state"], resized["host"], resized["error"]) == ("resized", "lab-2", None)
    shown = herd.ok("volume", "show", "carried", "--json").json()
    assert (shown["host"], shown["status"]) == ("lab-2", "in-use"), shown
    console_until(herd, "rsz", "HERD-TEST ready")
    booted = guest_disk(herd, "rsz", "carried", "", GIB)
    assert disk(address, f"op=read&dev={booted}") == "HERD-MARKER before-5e"
    assert (
        disk(address, f"op=write&dev={booted}&marker=during-6f") == f"wrote during-6f to {booted}"
    )

    (reverted,) = herd.ok("server", "resize", "rsz", "--revert", "--timeout", "2", "--json").json()
    assert (reverted["vm_state"], reverted["host"], reverted["error"]) == ("active", "lab-1", None)
    shown = herd.ok("volume", "show", "carried", "--json").json()
    assert (shown["host"], shown["path"]) == ("lab-1", source_file), shown
    console_until(herd, "rsz", "HERD-TEST ready")  # its console on lab-1: this boot's
    again = guest_disk(herd, "rsz", "carried", "", GIB)
    assert disk(address, f"op=read&dev={again}") == "HERD-MARKER during-6f"
    copy = f"/var/lib/herd/volumes/{shown['uuid']}.qcow2"  # where lab-2 kept its copy
    assert lab.exec_in("lab-2", ["test", "-e", copy]).returncode == 1
    herd.ok("server", "remove", "volume", "rsz", "carried")
    herd.run("server", "delete", "rsz")


def test_a_server_booted_from_a_volume_leaves_it_with_its_data_unless_deleted_with_it(
    herd: HerdCli, lab: Lab, volumes: list[str]
) -> None:
    (made,) = herd.ok(
        "server", "create", "bfv", "--flavor", "m1.tiny", "--image", "herd-test",
        "--network", "provider", "--host", "lab-1", "--boot-from-volume", "1", "--json",
    ).json()  # fmt: skip
    assert (made["vm_state"], made["error"]) == ("active", None), made
    console_until(herd, "bfv", "HERD-TEST ready")
    (root,) = [v for v in herd.ok("volume", "list", "--json").json() if v["server"] == "bfv"]
    volumes.append(root["name"])
    assert (root["device"], root["status"], root["host"]) == ("vda", "in-use", "lab-1"), root
    address = provider_ip(herd, lab, "bfv")
    assert disk(address, "op=write&dev=vda&marker=root-8d") == "wrote root-8d to vda"
    refused = herd.run("server", "migrate", "bfv")
    assert "boots from a volume" in assert_one_line_error(refused, code=4)
    herd.ok("server", "delete", "bfv")
    kept = herd.ok("volume", "show", root["name"], "--json").json()
    assert (kept["status"], kept["server"]) == ("available", None), kept

    # Its data is there: attached to another server, read back from it.
    (other,) = herd.ok(
        "server", "create", "reader", "--flavor", "m1.tiny", "--image", "herd-test",
        "--network", "provider", "--host", "lab-1", "--json",
    ).json()  # fmt: skip
    assert other["vm_state"] == "active", other
    console_until(herd, "reader", "HERD-TEST ready")
    herd.ok("server", "add", "volume", "reader", root["name"])
    dev = guest_disk(herd, "reader", root["name"], "added", GIB)
    assert disk(provider_ip(herd, lab, "reader"), f"op=read&dev={dev}") == "HERD-MARKER root-8d"
    herd.ok("server", "remove", "volume", "reader", root["name"])
    herd.run("server", "delete", "reader")

    (gone,) = herd.ok(
        "server", "create", "bfv2", "--flavor", "m1.tiny", "--image", "herd-test",
        "--network", "provider", "--host", "lab-1", "--boot-from-volume", "1",
        "--delete-on-termination", "--json",
    ).json()  # fmt: skip
    assert gone["vm_state"] == "active", gone
    (root2,) = [v for v in herd.ok("volume", "list", "--json").json() if v["server"] == "bfv2"]
    herd.ok("server", "delete", "bfv2")
    assert root2["name"] not in {v["name"] for v in herd.ok("volume", "list", "--json").json()}
    assert lab.exec_in("lab-1", ["test", "-e", str(root2["path"])]).returncode == 1
