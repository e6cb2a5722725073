"""Before a live migration prepares anything: can the source reach the destination?

Two paths matter. libvirt's own connection has no port to check: herd carries it over
its SSH sessions (rpc/tunnel.py), so the source asks the destination's libvirtd through
that same tunnel. QEMU's memory stream and the disk's NBD stream go straight from the
source to the destination's address, on ports nothing listens on until a migration
starts, where a firewall's ``reject`` and an idle port look alike. So the destination
listens on two free ports of its migration range for a few seconds, the source knocks
on each with a token, and the migration is then told to use exactly those ports
(agent/reach.py). A pair that fails is set aside with the reason, the ports and what
the knock met (timed out: dropped; refused: rejected; no route).

The ports are free when checked, not reserved: a process that takes one before the
migration starts (the destination is prepared in between) makes libvirt fail it, and
the guest stays on the source as for any failed migration. The random choice among
the range's 64 ports makes two herd migrations to one host rarely meet.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from orchestrator.errors import HerdError
from orchestrator.rpc.agent_api import AgentAPI, Listening, ReachCheck
from orchestrator.rpc.pool import AgentPool
from orchestrator.rpc.ssh import HostTarget
from orchestrator.rpc.tunnel import libvirt_tunnel

KNOCK_TIMEOUT = 3.0  # seconds a port may take to answer: a LAN answers in milliseconds
HOLD = 30  # seconds the destination keeps its listeners, whoever forgets to close them
CALL_TIMEOUT = 45.0  # the source's check: libvirt (15 s at most) and each knock
NOT_HEARD = "answered, but not by the destination's listener"
_HINTS = {
    "refused": "rejected on the way: a firewall?",
    "no route to host": "the source has no route there",
    NOT_HEARD: "another host answers at that address?",
}


@dataclass(frozen=True)
class Ports:
    """The two ports the source reached: QEMU's memory stream, then the disk's NBD."""

    memory: int
    disks: int

    def __str__(self) -> str:
        return f"{self.memory} and {self.disks}"


def refusal(
    source: str,
    dest: str,
    address: str,
    listening: Listening,
    check: ReachCheck,
    heard: frozenset[int],
) -> str | None:
    """Why ``source`` cannot migrate to ``dest`` by this probe, or None: every reason,
    on one line."""
    reasons = []
    if check.libvirt is not None:
        reasons.append(
            f"{dest}'s libvirtd does not answer {source} through herd's SSH tunnel "
            f"(libvirt's own connection needs no port): {check.libvirt}"
        )
    met = {k.port: k.error or NOT_HEARD for k in check.knocks if k.error or k.port not in heard}
    if met:
        low, high = listening.port_range
        ports = ", ".join(str(port) for port in met)
        noun = "port" if len(met) == 1 else "ports"
        if len(set(met.values())) == 1:
            (error,) = set(met.values())
            what = f"{error} ({_hint(error)})"
        else:
            what = "; ".join(f"{port} {error} ({_hint(error)})" for port, error in met.items())
        reasons.append(
            f"{source} cannot reach {dest} at {address} on migration {noun} {ports} "
            f"(of {low}-{high}, where QEMU streams memory and disk): {what}"
        )
    return "; and ".join(reasons) or None


def _hint(error: str) -> str:
    if error.startswith("timed out"):
        return "dropped on the way: a firewall?"
    return _HINTS.get(error, "the source's own error")


async def check(pool: AgentPool, source: HostTarget, dest: HostTarget) -> Ports | str:
    """The ports this migration will use, or why there are none (a ``str``). Only an
    error reaching a host's agent is raised, as a ``HerdError``."""
    agent = AgentAPI(pool)
    listening = await agent.reach_listen(dest, dest.address, 2, HOLD)
    try:
        source_conn = (await pool.session(source)).conn
        dest_conn = (await pool.session(dest)).conn
        socket = f"{source.agent_dir}/migrate-{uuid.uuid4().hex[:12]}.sock"
        async with libvirt_tunnel(source_conn, dest_conn, socket):
            result = await agent.reach_check(
                source,
                socket=socket, address=dest.address, listening=listening,
                timeout=KNOCK_TIMEOUT, call_timeout=CALL_TIMEOUT,
            )  # fmt: skip
    finally:
        heard = await _close(agent, dest, listening)
    why = refusal(source.name, dest.name, dest.address, listening, result, heard)
    if why is not None:
        return why
    memory, disks = listening.ports
    return Ports(memory, disks)


async def _close(agent: AgentAPI, dest: HostTarget, listening: Listening) -> frozenset[int]:
    """The ports the destination heard; none if it cannot say (its listeners expire
    by themselves after ``HOLD`` seconds)."""
    try:
        return await agent.reach_close(dest, listening.probe)
    except HerdError:
        return frozenset()
