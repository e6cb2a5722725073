"""The lab's hosts are real, separate hypervisors, and `down` leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from orchestrator.errors import LabError
from orchestrator.lab import Lab, LabHost, LabInfo, procs

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
    """ssh as the orchestrator does: the lab key, host keys checked strictly."""
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
            f"root@{host.address}",
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
        for kind in ("mnt", "uts"):
            with contextlib.suppress(OSError):
                found.add((kind, os.stat(f"/proc/{pid}/ns/{kind}").st_ino))
    return found


def processes_in(namespaces: set[tuple[str, int]]) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or not procs.alive(int(name)):
            continue
        for kind in ("mnt", "uts"):
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
    assert [(h["name"], h["address"], h["ssh"]["port"]) for h in inventory["hosts"]] == [
        ("lab-1", "127.0.101.1", 2222),
        ("lab-2", "127.0.101.2", 2222),
        ("lab-3", "127.0.101.3", 2222),
    ]
    for host in inventory["hosts"]:
        assert Path(host["ssh"]["key"]) == info.key and info.key.exists()
        assert Path(host["ssh"]["known_hosts"]) == info.known_hosts
    assert Path(inventory["images"][0]["source"]).exists()


def test_up_again_changes_nothing(lab: Lab) -> None:
    said: list[str] = []
    lab.up(3, progress=said.append)
    assert said == []
    assert all(s.healthy for s in lab.status())


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
    lab = make_lab("127.0.102.1")
    info = lab.up(2)
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
    lab.down()  # again: nothing to do, no error


def test_down_cleans_up_after_a_half_failed_up(make_lab: Callable[[str], Lab]) -> None:
    lab = make_lab("127.0.102.11")
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.102.12", 2222))
    squatter.listen()
    try:
        with pytest.raises(LabError, match=r"lab-2: 127\.0\.102\.12:2222 is already in use"):
            lab.up(2)
    finally:
        squatter.close()
    survivors = procs.host_pids(lab.root / "lab-1" / "herd")
    assert survivors, "lab-1 should have come up"

    lab.down()

    assert not any(procs.alive(pid) for pid in survivors)
    assert not lab.root.exists()
