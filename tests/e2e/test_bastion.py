"""A server boots on lab hosts that herd reaches only through a bastion, with nothing
but the operator's ~/.ssh/config to say so: HostName-less aliases are not needed, the
inventory names no user, port, key or known_hosts, and ProxyJump does the rest.

"Only through" is made true, not assumed: while the test runs, a firewall rule of its
own rejects every TCP connection that root (herd's user) opens to the lab hosts' sshds,
and the bastion logs its users in as `nobody`, whose forwards the rule lets through.
A herd that ignored ProxyJump would fail, and would show in the rule's counter; the
bastion's own log names every forward it made.
"""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
import yaml

from orchestrator.lab import Lab
from orchestrator.lab.bastion import Bastion
from orchestrator.lab.render import inventory_document
from tests.e2e.herdcli import HerdCli, assert_one_line_error, domain_state

pytestmark = pytest.mark.e2e

BASTION_ADDRESS = "127.0.109.1"
BASTION_PORT = 2209
BASTION_USER = "nobody"
TABLE = "herd_e2e_bastion_only"


@pytest.fixture
def bastion(lab: Lab, tmp_path: Path) -> Iterator[Bastion]:
    hosts = [(h.address, h.port) for h in lab.info().hosts]
    jump = Bastion(tmp_path / "bastion", BASTION_ADDRESS, BASTION_PORT, BASTION_USER, hosts)
    jump.up()
    try:
        yield jump
    finally:
        jump.down()


def _nft(*args: str) -> str:
    return subprocess.run(["nft", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def root_cannot_reach_the_hosts(lab: Lab) -> Iterator[None]:
    """Reject root's own connections to the lab hosts' sshds (not the bastion's, which
    run as `nobody`); removed after the test, whatever happened."""
    targets = ", ".join(f"{h.address} . {h.port}" for h in lab.info().hosts)
    _nft("add", "table", "inet", TABLE)
    try:
        _nft("add", "chain", "inet", TABLE, "out", "{ type filter hook output priority 0; }")
        _nft(
            "add", "rule", "inet", TABLE, "out", "ip", "daddr", ".", "tcp", "dport",
            f"{{ {targets} }}", "meta", "skuid", "0", "counter", "reject", "with", "tcp", "reset",
        )  # fmt: skip
        yield
    finally:
        _nft("delete", "table", "inet", TABLE)


def rejected_packets() -> int:
    return int(re.search(r"counter packets (\d+)", _nft("list", "table", "inet", TABLE))[1])


def move_ssh_settings_to_config(document: dict[str, Any], jump: Bastion) -> str:
    """What an operator writes: the bastion, then each hypervisor by address with the
    user, port and key the lab's inventory gave it (taken out of the inventory), through
    the bastion."""
    blocks = [
        f"Host bastion\n    HostName {jump.address}\n    Port {jump.port}\n"
        f"    User {jump.user}\n    IdentityFile {jump.client_key}\n"
    ]
    for host in document["hosts"]:
        ssh = host.pop("ssh")
        blocks.append(
            f"Host {host['address']}\n    User {ssh['user']}\n    Port {ssh['port']}\n"
            f"    IdentityFile {ssh['key']}\n    ProxyJump bastion\n    ServerAliveInterval 10\n"
        )
    return "\n".join(blocks)


def test_a_server_boots_on_hosts_reached_only_through_the_bastion(
    lab: Lab, bastion: Bastion, root_cannot_reach_the_hosts: None, tmp_path: Path
) -> None:
    info = lab.info()
    first = info.hosts[0]
    with pytest.raises(ConnectionRefusedError):  # the rule works: root cannot go direct
        socket.create_connection((first.address, first.port), timeout=5).close()
    assert rejected_packets() == 1

    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    document = inventory_document(info)
    known = {host["ssh"]["known_hosts"] for host in document["hosts"]}
    (home / ".ssh" / "known_hosts").write_text("".join(Path(k).read_text() for k in known))
    (home / ".ssh" / "config").write_text(move_ssh_settings_to_config(document, bastion))
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump(document))

    herd = HerdCli(tmp_path)
    herd.env["HOME"] = str(home)
    herd.env.pop("SSH_AUTH_SOCK", None)
    herd.ok("inventory", "apply", str(inventory))

    refused = herd.run("host", "refresh", first.name)
    where = f"jump host bastion ({BASTION_ADDRESS}:{BASTION_PORT})"
    assert_one_line_error(refused, code=6, contains=f"SSH host key of {where} is not trusted")
    assert f"herd host trust {first.name}" in refused.stderr

    bastion_fp = asyncssh.import_public_key(bastion.host_public_key()).get_fingerprint("sha256")
    trusted = herd.ok("host", "trust", first.name, "--fingerprint", bastion_fp).stderr
    assert f"host {first.name}: {where}: trusted {bastion_fp}, recorded in " in trusted
    assert f"host {first.name}: SHA256:" in trusted and "is already trusted" in trusted

    herd.ok("host", "refresh")  # every host, each through the bastion
    try:
        (created,) = herd.ok(
            "server", "create", "via-bastion", "--flavor", "m1.nano", "--image", "blank", "--json"
        ).json()
        assert created["vm_state"] == "active", created
        server = herd.server("via-bastion")
        assert domain_state(lab, server["host"], server["uuid"]) == "running"
        chosen = next(h for h in info.hosts if h.name == server["host"])
        log = bastion.log.read_text()
        assert f"Accepted publickey for {BASTION_USER} from " in log
        assert f"target {chosen.address} port {chosen.port}" in log  # sshd's direct-tcpip line
        assert rejected_packets() == 1  # herd never tried to go direct
        herd.ok("server", "delete", "via-bastion")
        assert domain_state(lab, server["host"], server["uuid"]) is None
    finally:
        if any(s["name"] == "via-bastion" for s in herd.servers()):
            herd.run("server", "delete", "via-bastion")
