"""The lab's HTTP probe asks only lab provider addresses: a user-mode network's
10.0.2.x, or any address off the lab, would be routed off the machine."""

from __future__ import annotations

import pytest

from orchestrator.lab.reach import http_get, probe


@pytest.mark.parametrize("address", ["10.0.2.100", "192.0.2.1", "198.18.101.1", "8.8.8.8"])
def test_an_address_off_the_lab_provider_networks_is_never_contacted(address: str) -> None:
    with pytest.raises(OSError, match="not on a lab provider network"):
        http_get(address, timeout=0.1)


def test_probe_reports_a_user_mode_address_as_unreachable_without_sending() -> None:
    server = {"uuid": "u", "addresses": [{"ip": "10.0.2.100"}]}
    address, verdict, _ = probe(server, wait=0)
    assert address == "10.0.2.100" and "not on a lab provider network" in verdict
