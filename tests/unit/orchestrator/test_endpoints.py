"""Endpoints read back as what they are: an IPv6 address and its port in brackets."""

from __future__ import annotations

import pytest

from orchestrator.endpoints import host_port
from orchestrator.rpc.ssh import HostTarget


@pytest.mark.parametrize(
    ("address", "port", "shown"),
    [
        pytest.param("2001:db8::30", 22, "[2001:db8::30]:22", id="ipv6"),
        pytest.param("[2001:db8::30]", 2222, "[2001:db8::30]:2222", id="ipv6-already-bracketed"),
        pytest.param("192.0.2.7", 2222, "192.0.2.7:2222", id="ipv4"),
        pytest.param("hv1.example.net", 22, "hv1.example.net:22", id="dns-name"),
        pytest.param("2001:db8::30", None, "2001:db8::30", id="no-port-is-the-address-alone"),
    ],
)
def test_an_endpoint_is_written_as_openssh_and_uris_write_it(
    address: str, port: int | None, shown: str
) -> None:
    assert host_port(address, port) == shown


def test_a_login_over_ipv6_names_its_endpoint_in_brackets() -> None:
    target = HostTarget(name="hv6", address="2001:db8::30", port=2222, user="ops")
    assert target.endpoint == "ops@[2001:db8::30]:2222"
    assert target.hop == "[2001:db8::30]:2222"
