"""Reach lab guests from the root namespace, as a user on the provider LAN would.

The test guest serves its instance-id over HTTP on port 80 (guest_image.py), so one
GET to a server's herd-assigned address proves the whole path: herd's fixed IP in the
network-config, the guest configuring it, the NIC on the host's bridge, the bridges
joined across hosts. `make demo` ends with it:

    herd server list --json | python -m orchestrator.lab.reach
"""

from __future__ import annotations

import ipaddress
import json
import socket
import sys
import time
from typing import Any

from orchestrator.lab.network import PROVIDER_RANGE

PORT = 80
# Every lab's provider bridge is 198.19.N.0/24 (network.py): only those are asked.
LAB_PROVIDER_NETWORKS = PROVIDER_RANGE


def http_get(address: str, timeout: float = 10.0, path: str = "/") -> str:
    """The guest's page (its instance-id, or what ``path`` answers: the test guest's
    /cgi-bin/disk), over plain TCP: no proxy settings of the environment get a say."""
    if ipaddress.ip_address(address) not in LAB_PROVIDER_NETWORKS:
        # A user-mode network's 10.0.2.x (or any other) would be routed off the machine.
        raise OSError(f"{address} is not on a lab provider network ({LAB_PROVIDER_NETWORKS})")
    with socket.create_connection((address, PORT), timeout=timeout) as conn:
        conn.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        reply = b""
        while chunk := conn.recv(4096):
            reply += chunk
    return reply.decode(errors="replace").rsplit("\r\n\r\n", 1)[-1].strip()


def probe(server: dict[str, Any], wait: float) -> tuple[str, str, str]:
    """(address, what answered, how long it took) for a server's first fixed IP; the
    guest may still be booting, so it is asked again until `wait` seconds pass."""
    ips = [port["ip"] for port in server.get("addresses") or [] if port.get("ip")]
    if not ips:
        return "-", "no fixed IP (user-mode network?)", "-"
    deadline = time.monotonic() + wait
    while True:
        started = time.monotonic()
        try:
            answer = http_get(ips[0], timeout=5)
        except OSError as exc:
            if time.monotonic() >= deadline:
                return ips[0], f"no answer: {exc.strerror or exc}", "-"
            time.sleep(1)
            continue
        took = f"{(time.monotonic() - started) * 1000:.0f} ms"
        verdict = "its instance-id" if answer == server["uuid"] else f"wrong page: {answer[:40]}"
        return ips[0], verdict, took


def main() -> int:
    from rich.console import Console
    from rich.table import Table

    servers = json.load(sys.stdin)
    grid = Table(
        title=f"guests reached on port {PORT} from the root namespace", title_justify="left"
    )
    for column in ("server", "host", "address", "answered", "time"):
        grid.add_column(column)
    failed = 0
    for server in servers:
        address, verdict, took = probe(server, wait=60)
        failed += verdict != "its instance-id"
        grid.add_row(server["name"], server.get("host") or "-", address, verdict, took)
    Console().print(grid)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
