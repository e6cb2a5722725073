"""What the agent would refuse, the inventory refuses first: with the file and line, before
anything is claimed (builds used to fail on the host after the claim)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from agent import specs as agent_specs
from orchestrator.inventory import InventoryError, load_inventory

HOST = "hosts:\n  - name: hv1\n    address: 192.0.2.10\n"
FLAVOR = "flavors:\n  - name: m1\n    vcpus: 1\n    ram_mb: 512\n    disk_gb: 1\n"
IMAGE = "images:\n  - name: img\n    source: host:///srv/img.qcow2\n"


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def problems_of(text: str) -> list[str]:
    path = Path("inventory.yaml")
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    with pytest.raises(InventoryError) as caught:
        load_inventory(path)
    return str(caught.value).splitlines()


def loads(text: str) -> None:
    path = Path("inventory.yaml")
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    load_inventory(path)


AGENT_DIRS = [
    pytest.param("/", "a system directory", id="root"),
    pytest.param("/tmp", "a system directory", id="tmp"),
    pytest.param("/var/lib", "a system directory", id="var-lib"),
    pytest.param("/etc/herd", "a system directory", id="under-etc"),
    pytest.param("/run/herd", "not kept across reboots", id="under-run"),
    pytest.param("/srv/herd/../../etc", "normal form", id="dot-dot"),
    pytest.param("/srv//herd", "normal form", id="double-slash"),
    pytest.param("/srv/herd/", "normal form", id="trailing-slash"),
    pytest.param('"/srv/herd\\n"', "only letters", id="trailing-newline"),
    pytest.param('"/srv/he\\trd"', "only letters", id="tab"),
    pytest.param("var/lib/herd", "absolute path", id="relative"),
]


@pytest.mark.parametrize(("agent_dir", "reason"), AGENT_DIRS)
def test_an_agent_dir_the_agent_would_refuse_is_refused_with_its_line(
    agent_dir: str, reason: str
) -> None:
    (problem,) = problems_of(HOST + f"    agent_dir: {agent_dir}\n")
    assert problem.startswith("inventory.yaml:4: hosts[0] (hv1).agent_dir: must ")
    assert reason in problem


def test_an_agent_dir_in_defaults_is_checked_too() -> None:
    (problem,) = problems_of("defaults:\n  agent_dir: /tmp\n" + HOST)
    assert problem.startswith("inventory.yaml:2: defaults.agent_dir: must be a directory")


FLAVOR_LIMITS = [
    pytest.param("vcpus", agent_specs.VCPUS, id="vcpus"),
    pytest.param("ram_mb", agent_specs.RAM_MB, id="ram_mb"),
    pytest.param("disk_gb", agent_specs.DISK_GB, id="disk_gb"),
]


@pytest.mark.parametrize(("field", "limits"), FLAVOR_LIMITS)
def test_flavor_sizes_outside_the_agents_range_are_refused(
    field: str, limits: tuple[int, int]
) -> None:
    low, high = limits
    for value in (low, high):
        loads(FLAVOR.replace(f"{field}: ", f"{field}: {value} #"))
    (problem,) = problems_of(FLAVOR.replace(f"{field}: ", f"{field}: {high + 1} #"))
    assert problem.endswith(f"flavors[0] (m1).{field}: must be at most {high}")
    if low > 0:
        (problem,) = problems_of(FLAVOR.replace(f"{field}: ", f"{field}: {low - 1} #"))
        assert f"flavors[0] (m1).{field}: must be at least {low}" in problem


def test_sixteen_tib_and_more_of_ram_is_refused_at_validate() -> None:
    (problem,) = problems_of(FLAVOR.replace("ram_mb: 512", "ram_mb: 16777217"))
    assert problem == "inventory.yaml:4: flavors[0] (m1).ram_mb: must be at most 16777216"


NETWORKS = [
    pytest.param("bridge", '"br0; reboot"', id="bridge-shell-text"),
    pytest.param("bridge", "br0:1", id="bridge-colon"),
    pytest.param("bridge", "a-bridge-name-longer", id="bridge-past-ifnamsiz"),
    pytest.param("bridge", '"br0\\n"', id="bridge-trailing-newline"),
    pytest.param("bridge", "-br0", id="bridge-leading-dash"),
    pytest.param("network", '"default network"', id="network-space"),
    pytest.param("network", "n/../x", id="network-slash"),
    pytest.param("network", '"default\\n"', id="network-trailing-newline"),
    pytest.param("network", "x" * 65, id="network-too-long"),
]


@pytest.mark.parametrize(("kind", "source"), NETWORKS)
def test_a_bridge_or_network_name_the_agent_would_refuse_is_refused(kind: str, source: str) -> None:
    key = "bridge" if kind == "bridge" else "libvirt_network"
    (problem,) = problems_of(f"networks:\n  - name: lan\n    type: {kind}\n    {key}: {source}\n")
    assert problem.startswith(f"inventory.yaml:4: networks[0] (lan).{key}: must be a ")


@pytest.mark.parametrize(
    ("kind", "source"),
    [("bridge", "br0"), ("bridge", "virbr-lan.100"), ("network", "default"), ("network", "a:b")],
)
def test_ordinary_bridge_and_network_names_are_accepted(kind: str, source: str) -> None:
    key = "bridge" if kind == "bridge" else "libvirt_network"
    loads(f"networks:\n  - name: lan\n    type: {kind}\n    {key}: {source}\n")


CMDLINES = [
    pytest.param('"console=ttyS0\\0"', id="nul"),
    pytest.param('"console=ttyS0\\ninit=/bin/sh"', id="newline"),
    pytest.param('"console=ttyS0\\e[2J"', id="escape"),
    pytest.param("x" * (agent_specs.MAX_CMDLINE + 1), id="too-long"),
]


@pytest.mark.parametrize("cmdline", CMDLINES)
def test_a_kernel_command_line_the_agent_would_refuse_is_refused(cmdline: str) -> None:
    (problem,) = problems_of(IMAGE + f"    properties:\n      os_command_line: {cmdline}\n")
    assert problem.startswith(
        "inventory.yaml:5: images[0] (img).properties.os_command_line: must be one line "
    )


def test_the_longest_kernel_command_line_is_accepted() -> None:
    cmdline = "x" * agent_specs.MAX_CMDLINE
    loads(IMAGE + f"    properties:\n      os_command_line: {cmdline}\n")


HOST_SETTINGS = [
    pytest.param("address", "fe80::1%eth0", "IP address or a DNS name", id="scoped-address"),
    pytest.param("libvirt_uri", '"qemu:///system\\n"', "libvirt URI", id="uri-newline"),
    pytest.param("libvirt_uri", '"qemu:///system x"', "libvirt URI", id="uri-space"),
    pytest.param("availability_zone", '"az1\\n"', "surrounding spaces", id="zone-newline"),
    pytest.param("availability_zone", '"a\\nz"', "control characters", id="zone-inner-newline"),
    pytest.param("availability_zone", '"a\\e[31mz"', "control characters", id="zone-escape"),
]


@pytest.mark.parametrize(("key", "value", "message"), HOST_SETTINGS)
def test_host_settings_the_agent_or_a_listing_would_trip_on_are_refused(
    key: str, value: str, message: str
) -> None:
    host = {"name": "hv1", "address": "192.0.2.10", key: value}
    text = "hosts:\n" + "".join(
        f"{'  - ' if i == 0 else '    '}{k}: {v}\n" for i, (k, v) in enumerate(host.items())
    )
    (problem,) = problems_of(text)
    assert f"hosts[0] (hv1).{key}: must" in problem
    assert message in problem
