"""Lab hosts get consecutive management addresses in one /24 of 198.18.0.0/16, and
the lab's subnets and link names follow from that /24 alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import LabError
from orchestrator.lab import network
from orchestrator.lab.addressing import check_port, host_addresses
from orchestrator.lab.network import LabNetwork


def test_hosts_get_consecutive_addresses_from_the_base() -> None:
    assert host_addresses("198.18.100.1", 3) == ["198.18.100.1", "198.18.100.2", "198.18.100.3"]


def test_the_last_host_may_take_252_but_not_the_bastions_253_or_the_roots_254() -> None:
    assert host_addresses("198.18.100.251", 2) == ["198.18.100.251", "198.18.100.252"]
    with pytest.raises(LabError, match=r"run past 198\.18\.100\.252 \(\.253 is the bastion"):
        host_addresses("198.18.100.252", 2)


def test_the_bastion_has_its_own_names_and_the_address_no_host_may_take() -> None:
    lab = LabNetwork(104)
    assert lab.bastion_address == "198.18.104.253"
    assert lab.bastion_netns == "herd104-bastion"
    assert (lab.bastion_link, lab.bastion_management_link) == ("herd104b", "herd104m0")
    assert lab.owns_name("herd104b") and lab.owns_name("herd104m0")
    assert not lab.owns_name("herd104bx") and not lab.owns_name("herd10b")


@pytest.mark.parametrize(
    ("base", "count", "reason"),
    [
        pytest.param("127.0.100.1", 1, r"inside 198\.18\.0\.0/16", id="loopback"),
        pytest.param("192.0.2.10", 1, r"inside 198\.18\.0\.0/16", id="a-real-network"),
        pytest.param("198.19.100.1", 1, r"inside 198\.18\.0\.0/16", id="the-provider-half"),
        pytest.param("198.18.100.0", 1, "network address", id="network-address"),
        pytest.param("198.18.100.255", 1, "run past", id="broadcast"),
        pytest.param("lab-1", 1, "not an IPv4 address", id="not-an-address"),
        pytest.param("::1", 1, "not an IPv4 address", id="ipv6"),
        pytest.param("198.18.100.1", 0, "at least one host", id="no-hosts"),
    ],
)
def test_addresses_outside_the_lab_range_are_refused(base: str, count: int, reason: str) -> None:
    with pytest.raises(LabError, match=reason):
        host_addresses(base, count)


def test_a_labs_subnets_and_links_follow_from_its_third_octet() -> None:
    lab = LabNetwork.for_base("198.18.101.1")
    assert (str(lab.management), str(lab.provider)) == ("198.18.101.0/24", "198.19.101.0/24")
    assert (lab.management_gateway, lab.provider_address) == ("198.18.101.254", "198.19.101.254")
    assert lab.provider_pool == ("198.19.101.10", "198.19.101.200")
    assert (lab.management_bridge, lab.provider_bridge) == ("herd101m", "herd101p")
    assert lab.host_links(250) == ("herd101m250", "herd101p250")
    assert max(len(name) for name in lab.host_links(250)) <= 15  # IFNAMSIZ - 1


@pytest.mark.parametrize(
    ("name", "owned"),
    [
        pytest.param("herd1m", True, id="management-bridge"),
        pytest.param("herd1p3", True, id="provider-veth"),
        pytest.param("herd10m", False, id="another-labs-bridge"),
        pytest.param("herd1mx", False, id="not-a-host-number"),
        pytest.param("eth0", False, id="a-real-nic"),
    ],
)
def test_a_lab_claims_only_its_own_link_names(name: str, owned: bool) -> None:
    assert LabNetwork.for_base("198.18.1.1").owns_name(name) is owned


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_ports_outside_tcp_range_are_refused(port: int) -> None:
    with pytest.raises(LabError, match="not a TCP port"):
        check_port(port)


ROOT = Path("/var/lib/herd-lab")


@pytest.mark.parametrize(
    ("existing", "ours"),
    [
        pytest.param({}, False, id="free"),
        pytest.param({"herd1m": {"kind": "bridge", "alias": str(ROOT)}}, True, id="ours"),
        pytest.param({"herd1m": {"kind": "bridge", "alias": None}}, True, id="ours-half-made"),
    ],
)
def test_a_link_name_is_free_or_this_labs(existing: dict, ours: bool) -> None:
    assert network._claim("herd1m", ROOT, existing, "bridge") is ours


@pytest.mark.parametrize(
    ("link", "says"),
    [
        pytest.param(
            {"kind": "bridge", "alias": "/srv/other-lab"},
            "a bridge link of /srv/other-lab",
            id="another-lab",
        ),
        pytest.param({"kind": "dummy", "alias": None}, "a dummy link", id="another-kind"),
        pytest.param({"kind": None, "alias": None}, "a plain link", id="a-plain-nic"),
    ],
)
def test_a_link_name_held_by_anything_else_is_refused_not_taken_over(link: dict, says: str) -> None:
    with pytest.raises(LabError, match=f"interface name herd1m is taken by {says}, not this lab's"):
        network._claim("herd1m", ROOT, {"herd1m": link}, "bridge")
