"""Where lab hosts listen: consecutive loopback addresses from a base, one port.

Every address of 127.0.0.0/8 reaches `lo` on Linux without configuration, so each
host gets an address of its own and sshd can use the same port everywhere, as on a
real fleet. Nothing outside 127.0.0.0/8 is ever allowed: a lab must not send a
packet off this machine.
"""

from __future__ import annotations

import errno
import ipaddress
import socket

from orchestrator.errors import LabError

LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


def host_addresses(base_address: str, count: int) -> list[str]:
    """`count` consecutive addresses from `base_address`, all inside 127.0.0.0/8."""
    if count < 1:
        raise LabError(f"a lab needs at least one host, not {count}")
    try:
        base = ipaddress.IPv4Address(base_address)
    except ValueError:
        raise LabError(f"--base-address {base_address!r} is not an IPv4 address") from None
    last = int(base) + count - 1
    if base not in LOOPBACK or last > int(LOOPBACK.broadcast_address) - 1:
        raise LabError(
            f"lab addresses {base}..+{count - 1} must stay inside 127.0.0.0/8 "
            "(the lab never uses a real network); pick another --base-address"
        )
    if base == LOOPBACK.network_address:
        raise LabError("127.0.0.0 is the network address; start the lab at 127.0.0.1 or above")
    return [str(ipaddress.IPv4Address(int(base) + i)) for i in range(count)]


def check_port(port: int) -> int:
    if not 1 <= port <= 65535:
        raise LabError(f"--ssh-port {port} is not a TCP port (1-65535)")
    return port


def port_is_free(address: str, port: int) -> bool:
    """Whether sshd could listen on address:port. SO_REUSEADDR as sshd sets it, so
    connections of a previous lab lingering in TIME_WAIT do not count as in use; a
    listener on that address or on 0.0.0.0 does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise LabError(f"cannot use {address}:{port}: {exc.strerror}") from None
    return True
