"""Lab hosts get consecutive loopback addresses and never anything else."""

from __future__ import annotations

import pytest

from orchestrator.errors import LabError
from orchestrator.lab.addressing import check_port, host_addresses


def test_hosts_get_consecutive_addresses_from_the_base() -> None:
    assert host_addresses("127.0.100.1", 3) == ["127.0.100.1", "127.0.100.2", "127.0.100.3"]


def test_addresses_carry_over_an_octet() -> None:
    assert host_addresses("127.0.100.254", 3) == ["127.0.100.254", "127.0.100.255", "127.0.101.0"]


@pytest.mark.parametrize(
    ("base", "count", "reason"),
    [
        pytest.param("10.0.0.1", 1, "127.0.0.0/8", id="not-loopback"),
        pytest.param("127.255.255.253", 3, "127.0.0.0/8", id="runs-into-broadcast"),
        pytest.param("127.255.255.255", 1, "127.0.0.0/8", id="broadcast"),
        pytest.param("127.0.0.0", 1, "network address", id="network-address"),
        pytest.param("lab-1", 1, "not an IPv4 address", id="not-an-address"),
        pytest.param("::1", 1, "not an IPv4 address", id="ipv6"),
        pytest.param("127.0.100.1", 0, "at least one host", id="no-hosts"),
    ],
)
def test_addresses_outside_loopback_are_refused(base: str, count: int, reason: str) -> None:
    with pytest.raises(LabError, match=reason):
        host_addresses(base, count)


def test_the_last_usable_loopback_address_is_allowed() -> None:
    assert host_addresses("127.255.255.253", 2) == ["127.255.255.253", "127.255.255.254"]


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_ports_outside_tcp_range_are_refused(port: int) -> None:
    with pytest.raises(LabError, match="not a TCP port"):
        check_port(port)
