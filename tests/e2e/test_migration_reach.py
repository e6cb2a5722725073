"""A live migration between hosts a firewall separates is refused before anything moves.

The rule goes into the SOURCE host's own network stack (``lab.exec_in``), in the
output chain, for the destination's address and libvirt's migration range only: where
the lab's hosts share one network namespace it is still specific to this pair's
traffic, and where each host has its own it is the source host's firewall.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator

import pytest

from tests.e2e.herdcli import HerdCli, domain_state
from tests.e2e.test_lifecycle import boot, ram_used, states

pytestmark = pytest.mark.e2e

MIGRATION_PORTS = "49152-49215"  # libvirt's default range, which the lab keeps


@contextlib.contextmanager
def firewall(lab, host: str, address: str, verdict: str) -> Iterator[None]:
    """``host`` sends nothing to ``address``'s migration ports while the block runs:
    ``drop`` (the knock times out) or ``reject`` (it is refused)."""
    table = f"herd_reach_{os.getpid()}"
    script = (
        f"add table inet {table}\n"
        f"add chain inet {table} out {{ type filter hook output priority 0; policy accept; }}\n"
        f"add rule inet {table} out ip daddr {address} tcp dport {MIGRATION_PORTS} {verdict}\n"
    )
    try:
        lab.exec_in(host, ["nft", "-f", "-"], input=script, check=True)
        yield
    finally:
        lab.exec_in(host, ["nft", "delete", "table", "inet", table])


def test_a_live_migration_a_firewall_blocks_is_refused_before_anything_moves(
    herd: HerdCli, lab
) -> None:
    uuid = boot(herd, "walled", "--host", "lab-1")["uuid"]
    address = lab.info().host("lab-2").address
    base = ram_used(herd)
    met = {"drop": r"timed out after 3 s \(dropped on the way", "reject": r"refused \(rejected"}
    for verdict, what in met.items():
        with firewall(lab, "lab-1", address, verdict):
            refused = herd.run("server", "live-migrate", "walled", "--host", "lab-2")
        assert refused.code == 5 and "Traceback" not in refused.stderr, refused
        (line,) = [x for x in refused.stderr.splitlines() if x.startswith("herd: error: ")]
        assert re.search(
            rf"cannot live-migrate walled from lab-1: lab-2: lab-1 cannot reach lab-2 at "
            rf"{re.escape(address)} on migration ports \d+, \d+ \(of 49152-49215, where QEMU "
            rf"streams memory and disk\): {what}",
            line,
        ), line
        # Nothing moved, nothing was prepared, nothing is held.
        assert states(herd, lab, "walled") == ("active", "running", "running")
        assert herd.server("walled")["host"] == "lab-1"
        assert domain_state(lab, "lab-2", uuid) is None
        assert lab.exec_in("lab-2", ["test", "-e", f"/var/lib/herd/instances/{uuid}"]).returncode
        assert ram_used(herd) == base
    actions = [
        a for a in herd.ok("server", "actions", "walled", "--json").json()
        if a["action"] == "live_migrate"
    ]  # fmt: skip
    assert [a["message"] for a in actions] == ["error", "error"]
    assert all("prepare_dest" not in [e["event"] for e in a["events"]] for a in actions)
    faults = [f["message"] for f in herd.server("walled")["faults"]]
    assert sum("lab-1 cannot reach lab-2" in f for f in faults) == 2, faults
    # The rule gone, the same pair works, on the ports it was checked on.
    herd.ok("server", "live-migrate", "walled", "--host", "lab-2")
    assert herd.server("walled")["host"] == "lab-2"
    assert domain_state(lab, "lab-2", uuid) == "running"
    assert domain_state(lab, "lab-1", uuid) is None
    herd.ok("server", "delete", "walled")
