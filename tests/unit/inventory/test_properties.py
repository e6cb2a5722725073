"""Properties: a valid inventory survives a trip through YAML; no input gets a traceback."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import specs as agent_specs
from orchestrator.inventory import (
    AllocationRatios,
    Capacity,
    FlavorSpec,
    HostSpec,
    ImageSpec,
    Inventory,
    InventoryError,
    Reserved,
    SshSpec,
    load_inventory,
)

_SEGMENT = r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,9}"
absolute_paths = st.from_regex(rf"(/{_SEGMENT}){{1,4}}", fullmatch=True)
# A directory of herd's own (agent.specs.check_state_dir): never a system directory.
agent_dirs = st.from_regex(rf"/(srv|data)(/{_SEGMENT}){{1,3}}", fullmatch=True)
string_maps = st.dictionaries(st.text(max_size=12), st.text(max_size=12), max_size=4)
counts = st.integers(min_value=1, max_value=2**31 - 1)
amounts = st.integers(min_value=0, max_value=2**31 - 1)
dns_label = r"[a-z]([a-z0-9-]{0,8}[a-z0-9])?"
addresses = st.one_of(
    st.ip_addresses().map(str),
    st.from_regex(rf"{dns_label}(\.{dns_label}){{0,3}}", fullmatch=True),
)
zones = st.text(min_size=1, max_size=12).filter(
    lambda z: z == z.strip() and z and ":" not in z and z.isprintable()
)


@st.composite
def sizing(draw: st.DrawFn) -> tuple[Capacity, AllocationRatios, Reserved]:
    """Ratios, a reservation, and capacity overrides that leave room above it (or none)."""
    ratios = [draw(st.floats(min_value=0.01, max_value=100.0)) for _ in range(3)]
    reserved = [draw(st.integers(min_value=0, max_value=2**20)) for _ in range(3)]
    capacity: list[int | None] = []
    for ratio, held in zip(ratios, reserved, strict=True):
        total = draw(st.none() | st.integers(min_value=1, max_value=2**20))
        while total is not None and total * ratio <= held:
            total *= 2
        capacity.append(total)
    return (
        Capacity(vcpus=capacity[0], ram_mb=capacity[1], disk_gb=capacity[2]),
        AllocationRatios(cpu=ratios[0], ram=ratios[1], disk=ratios[2]),
        Reserved(vcpus=reserved[0], ram_mb=reserved[1], disk_gb=reserved[2]),
    )


@st.composite
def hosts(draw: st.DrawFn) -> HostSpec:
    capacity, allocation_ratios, reserved = draw(sizing())
    return HostSpec(
        name=draw(st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}", fullmatch=True)),
        address=draw(addresses),
        ssh=SshSpec(
            user=draw(st.from_regex(r"[a-z_][a-z0-9_-]{0,15}", fullmatch=True)),
            port=draw(st.integers(min_value=1, max_value=65535)),
            key=Path(draw(absolute_paths)),
            known_hosts=draw(st.none() | absolute_paths.map(Path)),
        ),
        libvirt_uri=draw(st.sampled_from(["qemu:///system", "qemu:///session", "test:///default"])),
        agent_dir=draw(agent_dirs),
        labels=draw(string_maps),
        availability_zone=draw(zones),
        capacity=capacity,
        allocation_ratios=allocation_ratios,
        reserved=reserved,
        domain_type=draw(st.sampled_from(["auto", "kvm", "qemu"])),
        enabled=draw(st.booleans()),
    )


resource_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
flavors = st.builds(
    FlavorSpec,
    name=resource_names,
    vcpus=st.integers(*agent_specs.VCPUS),
    ram_mb=st.integers(*agent_specs.RAM_MB),
    disk_gb=st.integers(*agent_specs.DISK_GB),
    extra_specs=string_maps,
)
images = st.builds(
    ImageSpec,
    name=resource_names,
    source=st.one_of(
        absolute_paths,
        absolute_paths.map(lambda path: f"host://{path}"),
        absolute_paths.map(lambda path: f"https://images.example.org{path}"),
    ),
    format=st.sampled_from(["qcow2", "raw"]),
    sha256=st.none() | st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
    min_ram_mb=amounts,
    min_disk_gb=amounts,
    properties=string_maps,
)
inventories = st.builds(
    Inventory,
    hosts=st.lists(hosts(), max_size=4, unique_by=lambda host: host.name),
    flavors=st.lists(flavors, max_size=4, unique_by=lambda flavor: flavor.name),
    images=st.lists(images, max_size=4, unique_by=lambda image: image.name),
)


def load_text(text: str | bytes) -> Inventory:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "inventory.yaml"
        if isinstance(text, str):
            path.write_text(text, encoding="utf-8")
        else:
            path.write_bytes(text)
        return load_inventory(path)


@settings(deadline=None)
@given(inventories)
def test_a_valid_inventory_dumped_as_yaml_loads_back_equal(inventory: Inventory):
    assert load_text(yaml.safe_dump(inventory.model_dump(mode="json"))) == inventory


def assert_told_as_lines(text: str | bytes) -> None:
    """Either an inventory or an ``InventoryError`` of ``file:line: ...`` lines, nothing else."""
    try:
        load_text(text)
    except InventoryError as exc:
        assert exc.problems
        for line in str(exc).splitlines():
            assert re.match(r".*inventory\.yaml(:\d+)?: \S", line), line


@settings(deadline=None)
@given(st.text(max_size=200))
def test_any_text_gets_problems_not_a_traceback(text: str):
    assert_told_as_lines(text)


@settings(deadline=None)
@given(st.binary(max_size=100))
def test_any_bytes_get_problems_not_a_traceback(data: bytes):
    assert_told_as_lines(data)


keys = st.sampled_from(
    [
        "defaults",
        "hosts",
        "flavors",
        "images",
        "name",
        "address",
        "ssh",
        "port",
        "labels",
        "capacity",
        "reserved",
        "vcpus",
        "ram_mb",
        "source",
        "sha256",
        "<<",
        "x",
    ]
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8), absolute_paths
)
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=20,
)


@settings(deadline=None)
@given(st.dictionaries(keys, documents, max_size=4))
def test_any_yaml_shape_gets_problems_not_a_traceback(data: dict[str, object]):
    assert_told_as_lines(yaml.safe_dump(data))
