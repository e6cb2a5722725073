"""The lab's hosts are real, separate hypervisors with network stacks of their own, and
`down` leaves nothing behind."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from orchestrator.errors import LabError
from orchestrator.lab import Lab, LabHost, LabInfo, network, procs
from tests.e2e.conftest import LAB_BASE_ADDRESS
from tests.e2e.herdcli import HerdCli

pytestmark = pytest.mark.e2e

PROBE_XML = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices><serial type='pty'/></devices>
</domain>
"""


def ssh(info: LabInfo, host: LabHost, command: str, known_hosts: Path | None = None) -> str:
    """ssh as the orchestrator does: the host's own user (lab-2's is not root), the lab key,
    host keys checked strictly."""
    done = subprocess.run(
        [
            "ssh",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={known_hosts or info.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-i",
            str(info.key),
            "-p",
            str(host.port),
            f"{host.user}@{host.address}",
            command,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, f"ssh {host.name}: {done.stderr}"
    return done.stdout


def virsh(
    lab: Lab, host: str, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return lab.exec_in(host, ["virsh", "-c", "qemu:///system", *args], input=stdin)


def namespaces_of(pids: set[int]) -> set[tuple[str, int]]:
    found = set()
    for pid in pids:
        for kind in ("mnt", "uts", "net"):
            with contextlib.suppress(OSError):
                found.add((kind, os.stat(f"/proc/{pid}/ns/{kind}").st_ino))
    return found


def processes_in(namespaces: set[tuple[str, int]]) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or not procs.alive(int(name)):
            continue
        for kind in ("mnt", "uts", "net"):
            try:
                if (kind, os.stat(f"/proc/{name}/ns/{kind}").st_ino) in namespaces:
                    found.append(int(name))
                    break
            except OSError:
                pass
    return found


def test_every_host_answers_ssh_with_its_own_verified_host_key(lab: Lab) -> None:
    info = lab.info()
    assert [h.name for h in info.hosts] == ["lab-1", "lab-2", "lab-3"]
    for host in info.hosts:
        assert ssh(info, host, "hostname").strip() == host.name


def test_a_host_key_listed_for_another_address_is_refused(lab: Lab, tmp_path: Path) -> None:
    info = lab.info()
    first, second = info.hosts[0], info.hosts[1]
    lines = info.known_hosts.read_text().splitlines()
    second_key = next(line for line in lines if line.startswith(f"[{second.address}]:"))
    swapped = tmp_path / "known_hosts"
    swapped.write_text(second_key.replace(f"[{second.address}]", f"[{first.address}]") + "\n")
    with pytest.raises(AssertionError, match="Host key verification failed"):
        ssh(info, first, "hostname", known_hosts=swapped)


def test_each_host_runs_its_own_libvirtd(lab: Lab) -> None:
    names = [h.name for h in lab.hosts]
    assert [virsh(lab, name, "hostname").stdout.strip() for name in names] == names
    defined = virsh(lab, "lab-1", "define", "/dev/stdin", stdin=PROBE_XML.format(name="probe"))
    assert defined.returncode == 0, defined.stderr
    try:
        assert "probe" in virsh(lab, "lab-1", "list", "--all", "--name").stdout.split()
        for other in names[1:]:
            assert virsh(lab, other, "list", "--all", "--name").stdout.split() == []
            assert virsh(lab, other, "dominfo", "probe").returncode != 0
    finally:
        assert virsh(lab, "lab-1", "undefine", "probe").returncode == 0
    assert [s.domains for s in lab.status()] == [0, 0, 0]


def test_each_host_has_its_own_agent_state_dir(lab: Lab) -> None:
    lab.exec_in("lab-1", ["touch", "/var/lib/herd/only-on-lab-1"], check=True)
    try:
        assert lab.exec_in("lab-2", ["test", "-e", "/var/lib/herd/only-on-lab-1"]).returncode == 1
        assert (lab.info().host("lab-1").dir / "herd" / "only-on-lab-1").exists()
    finally:
        lab.exec_in("lab-1", ["rm", "/var/lib/herd/only-on-lab-1"], check=True)


def test_the_inventory_names_every_host_with_the_lab_key_and_known_hosts(
    lab: Lab, lab_inventory: Path
) -> None:
    info = lab.info()
    inventory = yaml.safe_load(lab_inventory.read_text())
    subnet = LAB_BASE_ADDRESS.rsplit(".", 1)[0]
    assert [(h["name"], h["address"], h["ssh"]["port"]) for h in inventory["hosts"]] == [
        ("lab-1", f"{subnet}.1", 2222),
        ("lab-2", f"{subnet}.2", 2222),
        ("lab-3", f"{subnet}.3", 2222),
    ]
    for host in inventory["hosts"]:
        assert Path(host["ssh"]["key"]) == info.key and info.key.exists()
        assert Path(host["ssh"]["known_hosts"]) == info.known_hosts
    assert Path(inventory["images"][0]["source"]).exists()


def lab_links(lab_network: network.LabNetwork) -> list[str]:
    return sorted(name for name in network.links() if lab_network.owns_name(name))


def sysctl(name: str) -> str:
    return Path("/proc/sys", *name.split(".")).read_text().strip()


def test_each_host_has_its_own_network_stack_and_no_way_off_the_lab(lab: Lab) -> None:
    info = lab.info()
    for host in info.hosts:
        addresses = json.loads(lab.exec_in(host.name, ["ip", "-j", "-4", "addr"]).stdout)
        assert {
            (link["ifname"], f"{a['local']}/{a['prefixlen']}")
            for link in addresses
            for a in link["addr_info"]
        } == {("lo", "127.0.0.1/8"), ("mgmt0", f"{host.address}/24")}
        assert lab.exec_in(host.name, ["ip", "-4", "route", "show", "default"]).stdout == ""
        assert lab.exec_in(host.name, ["ip", "-6", "addr"]).stdout == ""  # IPv6 off
        bridge = lab.exec_in(host.name, ["ip", "-j", "link", "show", "master", "br-provider"])
        assert [link["ifname"] for link in json.loads(bridge.stdout)] == ["prov0"]
    # Hosts reach each other over the management network only, and nothing else.
    lab_2 = info.host("lab-2").address
    reached = lab.exec_in("lab-1", ["busybox", "ping", "-c", "1", "-W", "2", lab_2])
    assert reached.returncode == 0, reached.stderr
    # TEST-NET-3, routed nowhere: the host has no route for it, so nothing is sent.
    off_lab = lab.exec_in("lab-1", ["busybox", "ping", "-c", "1", "-W", "2", "203.0.113.1"])
    assert "Network is unreachable" in off_lab.stderr
    # Root-namespace side: the lab's bridges route nothing on, whatever ip_forward says.
    lab_network = info.network
    for bridge_name in (lab_network.management_bridge, lab_network.provider_bridge):
        assert sysctl(f"net.ipv4.conf.{bridge_name}.forwarding") == "0"
        assert sysctl(f"net.ipv6.conf.{bridge_name}.disable_ipv6") == "1"
    n = lab_network.index
    assert lab_links(lab_network) == sorted(
        [
            f"herd{n}m", f"herd{n}p", f"herd{n}m1", f"herd{n}m2", f"herd{n}m3",
            f"herd{n}p1", f"herd{n}p2", f"herd{n}p3",
        ]
    )  # fmt: skip


def test_up_again_changes_nothing(lab: Lab) -> None:
    said: list[str] = []
    lab.up(3, progress=said.append)
    assert said == []
    assert all(s.healthy for s in lab.status())


def test_status_sees_a_host_whose_cable_is_pulled(lab: Lab) -> None:
    info = lab.info()
    management, _ = info.network.host_links(2)
    subprocess.run(["ip", "link", "set", "dev", management, "down"], check=True)
    try:
        assert [s.links for s in lab.status()] == [True, False, True]
        assert not next(s for s in lab.status() if s.name == "lab-2").healthy
    finally:
        subprocess.run(["ip", "link", "set", "dev", management, "up"], check=True)
    assert all(s.healthy for s in lab.status())
    assert lab.bastion_status() is None


def test_a_stopped_sshd_refuses_connections_until_it_is_started(lab: Lab) -> None:
    host = lab.info().host("lab-3")
    lab.stop_service(host.name, "sshd")
    try:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((host.address, host.port), timeout=5).close()
        assert [s.sshd for s in lab.status()] == [True, True, False]
    finally:
        lab.start_service(host.name, "sshd")
    assert ssh(lab.info(), host, "hostname").strip() == "lab-3"


def test_a_stopped_libvirtd_leaves_the_host_reachable_without_libvirt(lab: Lab) -> None:
    lab.stop_service("lab-2", "libvirtd")
    try:
        assert virsh(lab, "lab-2", "hostname").returncode != 0
        (status,) = [s for s in lab.status() if s.name == "lab-2"]
        assert (status.libvirtd, status.sshd, status.domains) == (False, True, None)
    finally:
        lab.start_service("lab-2", "libvirtd")
    assert virsh(lab, "lab-2", "hostname").stdout.strip() == "lab-2"


def test_down_leaves_no_process_and_no_directory(make_lab: Callable[[str], Lab]) -> None:
    lab = make_lab("198.18.102.1")
    info = lab.up(2)
    assert lab_links(info.network) == [
        "herd102m", "herd102m1", "herd102m2", "herd102p", "herd102p1", "herd102p2",
    ]  # fmt: skip
    # A running guest (qemu sits in a mount namespace libvirt makes for it) and a
    # detached process started over SSH, as an agent's job runner would be.
    assert (
        virsh(lab, "lab-1", "define", "/dev/stdin", stdin=PROBE_XML.format(name="g")).returncode
        == 0
    )
    started = virsh(lab, "lab-1", "start", "g")
    assert started.returncode == 0, started.stderr
    detached = int(
        ssh(info, info.hosts[1], "setsid sleep 600 </dev/null >/dev/null 2>&1 & echo $!")
    )
    pids = set().union(*(procs.host_pids(h.dir / "herd") for h in info.hosts))
    assert detached in pids
    commands = {procs.command_name(pid) for pid in pids}
    assert {"qemu-system-x86", "libvirtd", "virtlogd", "sshd"} <= commands
    namespaces = namespaces_of(pids)

    lab.down()

    assert processes_in(namespaces) == []
    assert not any(procs.alive(pid) for pid in pids)
    assert not info.root.exists()
    assert lab_links(info.network) == []
    addresses = json.loads(subprocess.run(["ip", "-j", "addr"], capture_output=True).stdout)
    subnets = (info.network.management, info.network.provider)
    assert not [
        a["local"]
        for link in addresses
        for a in link["addr_info"]
        if any(ipaddress.ip_address(a["local"]) in subnet for subnet in subnets)
    ]
    lab.down()  # again: nothing to do, no error


def test_down_cleans_up_after_a_half_failed_up(make_lab: Callable[[str], Lab]) -> None:
    lab = make_lab("198.18.103.1")
    lab_network = network.LabNetwork.for_base("198.18.103.1")
    # Someone else's interface holds the name of lab-2's management veth.
    squatter = lab_network.host_links(2)[0]
    subprocess.run(["ip", "link", "add", squatter, "type", "bridge"], check=True)
    subprocess.run(["ip", "link", "set", squatter, "alias", "not-a-lab"], check=True)
    try:
        with pytest.raises(
            LabError, match=rf"interface name {squatter} is taken by a bridge link of not-a-lab"
        ):
            lab.up(2)
        survivors = procs.host_pids(lab.root / "lab-1" / "herd")
        assert survivors, "lab-1 should have come up"

        lab.down()

        assert not any(procs.alive(pid) for pid in survivors)
        assert not lab.root.exists()
        assert lab_links(lab_network) == [squatter]  # not the lab's: left alone
    finally:
        subprocess.run(["ip", "link", "delete", squatter], check=True)


def test_lab_up_and_down_answer_json(make_lab: Callable[[str], Lab], tmp_path: Path) -> None:
    lab = make_lab("198.18.106.1")  # taken down by the fixture whatever happens here
    herd = HerdCli(tmp_path / "herd")
    where = ("--root", str(lab.root))
    up = herd.ok("lab", "up", *where, "--base-address", "198.18.106.1", "--hosts", "1", "--json")
    made = up.json()
    assert (made["root"], made["changed"], made["inventory"]) == (
        str(lab.root), True, str(lab.root / "inventory.yaml"),
    )  # fmt: skip
    assert [(h["name"], h["address"]) for h in made["hosts"]] == [("lab-1", "198.18.106.1")]
    assert "lab hosts" in up.stderr and "lab hosts" not in up.stdout
    assert herd.ok("lab", "up", *where, "--json").json()["changed"] is False
    gone = herd.ok("lab", "down", *where, "--json").json()
    assert (gone["removed"], gone["hosts"]) == (True, ["lab-1"])
    assert not lab.root.exists()
    assert herd.ok("lab", "down", *where, "--json").json()["removed"] is False
