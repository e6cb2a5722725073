"""Guests on the lab's provider network, bridged as on a real fleet: each host's
br-provider, one layer-2 segment across hosts, the root namespace at .254 on it.

Two guests on different hosts reach each other by the addresses herd gave them, the
root namespace reaches both, and a live migration of one costs a ping from the other
(and from the root namespace) only the moment of the switch-over."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from orchestrator.lab.reach import http_get
from tests.e2e.herdcli import GuestConsole, HerdCli
from tests.e2e.test_guest import guest_report

pytestmark = pytest.mark.e2e

PING_INTERVAL = 0.05
# A live migration stops the guest for its last memory pass (libvirt's default
# downtime target: 300 ms), then QEMU announces the guest's MAC from the destination
# and the bridges learn the new port: a few hundred ms here when idle (8 pings lost
# at 50 ms intervals). 40 pings, two seconds, leaves room for a loaded machine and
# still fails a guest that drops off the network until some ARP entry times out.
MAX_LOST = 40
_STATISTICS = re.compile(r"(\d+) packets transmitted, (\d+) packets received")


def lost(statistics: str) -> tuple[int, int]:
    """(sent, lost) from ping's summary line."""
    match = _STATISTICS.search(statistics)
    assert match, f"no ping statistics in {statistics!r}"
    sent, received = int(match[1]), int(match[2])
    return sent, sent - received


def test_guests_on_different_hosts_reach_each_other_and_a_live_migration_loses_few_pings(
    herd: HerdCli, lab, tmp_path: Path
) -> None:
    herd.ok("server", "create", "net-b", "--flavor", "m1.tiny", "--image", "herd-test",
            "--host", "lab-2")  # fmt: skip
    b = herd.server("net-b")
    (b_port,) = b["addresses"]
    assert b_port["network"] == "provider"  # the lab's default network
    b_ip = b_port["ip"]
    user_data = tmp_path / "user-data"
    user_data.write_text(f"#cloud-config\n# herd-test-peer: {b_ip}\n")
    herd.ok("server", "create", "net-a", "--flavor", "m1.tiny", "--image", "herd-test",
            "--host", "lab-1", "--user-data", str(user_data))  # fmt: skip
    a = herd.server("net-a")
    (a_port,) = a["addresses"]

    # Each guest configured what herd allocated (no gateway on the provider network,
    # so no default route), and a reached b, on another host, by b's address.
    facts_b = guest_report(herd, "net-b")
    assert facts_b["ip"] == [f"{b_ip}/24 nic=eth0 mac={b_port['mac']}"]
    assert "route" not in facts_b
    facts_a = guest_report(herd, "net-a")
    assert facts_a["ip"] == [f"{a_port['ip']}/24 nic=eth0 mac={a_port['mac']}"]
    assert facts_a["peer"] == [f"{b_ip} reply={b['uuid']}"]
    xml = lab.exec_in("lab-2", ["virsh", "-c", "qemu:///system", "dumpxml", b["uuid"]]).stdout
    assert "<interface type='bridge'>" in xml and "<source bridge='br-provider'/>" in xml

    # The root namespace, at .254 on the provider network, reaches both guests' port.
    assert http_get(a_port["ip"]) == a["uuid"]
    assert http_get(b_ip) == b["uuid"]

    # b moves to lab-3 while a, and the root namespace, ping it 20 times a second.
    console = GuestConsole(herd, "net-a")
    root_ping: subprocess.Popen[str] | None = None
    try:
        console.ask("echo UP$((1+1))", b"UP2")
        console.type(f"ping -q -i {PING_INTERVAL} {b_ip}")
        root_ping = subprocess.Popen(
            ["busybox", "ping", "-q", "-i", str(PING_INTERVAL), b_ip],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        time.sleep(1)
        started = time.monotonic()
        herd.ok("server", "live-migrate", "net-b", "--host", "lab-3")
        took = time.monotonic() - started
        time.sleep(1)
        root_ping.send_signal(signal.SIGINT)
        root_sent, root_lost = lost(root_ping.communicate(timeout=10)[0])
        console.seen = b""
        console.type("\x03")  # Ctrl-C: ping prints its statistics
        console.expect(b"packet loss")
        guest_sent, guest_lost = lost(console.seen.decode(errors="replace"))
    finally:
        if root_ping is not None and root_ping.poll() is None:
            root_ping.kill()
            root_ping.wait()
        console.detach()
    print(
        f"\nlive migration of net-b lab-2 -> lab-3 took {took:.1f}s; pings lost at "
        f"{PING_INTERVAL * 1000:.0f} ms intervals: from net-a {guest_lost}/{guest_sent}, "
        f"from the root namespace {root_lost}/{root_sent}"
    )
    assert herd.server("net-b")["host"] == "lab-3"
    assert guest_sent > 20 and root_sent > 20  # the pings ran through the migration
    assert guest_lost <= MAX_LOST, f"net-a lost {guest_lost} of {guest_sent} pings"
    assert root_lost <= MAX_LOST, f"the root namespace lost {root_lost} of {root_sent} pings"
    # b answers after: its page from the root namespace, from its new host's port.
    assert http_get(b_ip) == b["uuid"]
