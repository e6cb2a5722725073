"""Where lab hosts listen: consecutive management addresses from a base, one port.

Each host has a network namespace of its own, so each gets an address of its own on
the lab's management network (network.py) and sshd uses the same port everywhere, as
on a real fleet. Nothing outside 198.18.0.0/16 (RFC 2544's benchmarking range, kept
inside the lab's namespaces) is ever allowed: a lab must not send a packet off this
machine.
"""

from __future__ import annotations

from orchestrator.errors import LabError
from orchestrator.lab.network import host_addresses

__all__ = ["check_port", "host_addresses"]


def check_port(port: int) -> int:
    if not 1 <= port <= 65535:
        raise LabError(f"--ssh-port {port} is not a TCP port (1-65535)")
    return port
