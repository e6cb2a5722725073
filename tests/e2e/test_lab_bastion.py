"""`herd lab up --bastion`: the hosts' management network is reachable from herd only
through one bastion sshd, and herd still does its whole job there.

"Only through" is the lab's topology, not a firewall rule: the root namespace (where
herd runs) has no address on the management bridge, one point-to-point link to the
bastion, and an ``unreachable`` route for the rest of the subnet. A direct connection
fails at once; the lab's inventory reaches each host with ``ssh.proxy_jump``; the
bastion's log names every forward it made. Live migration still works, because the
hosts reach each other over the management network behind the bastion, as on a real
fleet. And ``lab down`` leaves no namespace, route or link of it behind.
"""

from __future__ import annotations

import errno
import json
import re
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from orchestrator.lab import Lab
from orchestrator.lab.network import netns_names
from tests.e2e.herdcli import HerdCli, domain_state

pytestmark = pytest.mark.e2e

BASE = "198.18.104.1"


def _connect_errno(address: str, port: int) -> int:
    try:
        with socket.create_connection((address, port), timeout=5):
            return 0
    except OSError as exc:
        return exc.errno or -1


def _root_addresses_on(subnet: str) -> list[str]:
    found = json.loads(subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True).stdout)
    return [
        f"{link['ifname']} {info['local']}/{info['prefixlen']}"
        for link in found
        for info in link.get("addr_info", [])
        if info["local"].startswith(subnet)
    ]


def test_a_lab_behind_a_bastion_is_used_only_through_it(
    make_lab: Callable[..., Lab], tmp_path: Path
) -> None:
    lab = make_lab(BASE, bastion=True)
    info = lab.up(2)
    lab_network = info.network
    jump = f"nobody@{lab_network.bastion_address}:{info.ssh_port}"

    # The topology: root holds only .254 on its link to the bastion, no host answers.
    assert _root_addresses_on("198.18.104.") == [f"herd104b {lab_network.management_gateway}/32"]
    for host in info.hosts:
        assert _connect_errno(host.address, host.port) == errno.EHOSTUNREACH
    assert _connect_errno(lab_network.bastion_address, info.ssh_port) == 0
    inventory = yaml.safe_load(info.inventory.read_text())
    assert [host["ssh"]["proxy_jump"] for host in inventory["hosts"]] == [jump, jump]

    status = lab.bastion_status()
    assert status is not None and status.healthy and status.endpoint == jump
    assert all(row.healthy and row.links for row in lab.status())

    herd = HerdCli(tmp_path / "herd")
    herd.ok("inventory", "apply", str(info.inventory))
    refreshed = herd.ok("host", "refresh", "--json").json()
    assert {h["name"]: h["ok"] for h in refreshed} == {"lab-1": True, "lab-2": True}

    # lab-2 is the non-root host: build there, then live-migrate to lab-1 and back.
    herd.ok("host", "disable", "lab-1")
    herd.ok("server", "create", "behind", "--flavor", "m1.nano", "--image", "blank")
    server = herd.server("behind")
    assert (server["host"], server["vm_state"]) == ("lab-2", "active")
    herd.ok("host", "enable", "lab-1")
    herd.ok("server", "live-migrate", "behind", "--host", "lab-1")
    assert herd.server("behind")["host"] == "lab-1"
    assert domain_state(lab, "lab-1", server["uuid"]) == "running"
    assert domain_state(lab, "lab-2", server["uuid"]) is None
    herd.ok("server", "delete", "behind")
    assert domain_state(lab, "lab-1", server["uuid"]) is None

    log = (info.bastion_dir / "sshd.log").read_text()
    forwarded = set(re.findall(r"server_request_direct_tcpip: .* target (\S+) port (\d+)", log))
    assert forwarded == {(host.address, str(host.port)) for host in info.hosts}

    lab.down()
    assert lab_network.bastion_netns not in netns_names()
    routes = subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True, text=True)
    assert "198.18.104." not in routes.stdout
    assert _root_addresses_on("198.18.104.") == []
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert "herd104" not in links
