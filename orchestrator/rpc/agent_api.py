"""Typed clients for agent calls: one coroutine per op, its answer as a record.

Mirrors docs/protocol.md. It holds the reachability ops a live migration asks before
anything moves (agent/reach.py); other ops are still named where they are used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from orchestrator.rpc.ssh import HostTarget


class Caller(Protocol):
    async def call(
        self, target: HostTarget, op: str, args: dict[str, object], timeout: float = ...
    ) -> dict: ...


@dataclass(frozen=True)
class Listening:
    """Listeners a destination opened for one probe: where, and the token to send."""

    probe: str
    token: str
    ports: tuple[int, ...]
    port_range: tuple[int, int]


@dataclass(frozen=True)
class Knock:
    """One port as the source found it: ``error`` None when the destination answered."""

    port: int
    error: str | None


@dataclass(frozen=True)
class ReachCheck:
    libvirt: str | None  # None: the destination's libvirtd answered through the tunnel
    knocks: tuple[Knock, ...]


async def reach_listen(
    pool: Caller, target: HostTarget, address: str, count: int, hold: int
) -> Listening:
    answer = await pool.call(
        target, "reach_listen", {"address": address, "count": count, "hold": hold}
    )
    low, high = answer["range"]
    return Listening(answer["probe"], answer["token"], tuple(answer["ports"]), (low, high))


async def reach_check(
    pool: Caller,
    target: HostTarget,
    *,
    socket: str,
    address: str,
    listening: Listening,
    timeout: float,
    call_timeout: float,
) -> ReachCheck:
    args: dict[str, object] = {
        "socket": socket,
        "address": address,
        "ports": list(listening.ports),
        "token": listening.token,
        "timeout": timeout,
    }
    answer = await pool.call(target, "reach_check", args, call_timeout)
    knocks = tuple(Knock(k["port"], k["error"]) for k in answer["ports"])
    return ReachCheck(answer["libvirt"], knocks)


async def reach_close(pool: Caller, target: HostTarget, probe: str) -> frozenset[int]:
    """Close the probe's listeners; the ports whose token the destination heard."""
    answer = await pool.call(target, "reach_close", {"probe": probe})
    return frozenset(answer["heard"])
