"""inventory.example.yaml is documentation operators copy: it must stay loadable and complete."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from orchestrator.inventory import FlavorSpec, HostSpec, ImageSpec, load_inventory
from orchestrator.inventory.models import (
    AllocationPool,
    AllocationRatios,
    Capacity,
    NetworkSpec,
    Reserved,
    SshSpec,
)
from orchestrator.scheduler.filters import LabelsFilter
from orchestrator.scheduler.host_state import HostState
from orchestrator.scheduler.request import RequestSpec

EXAMPLE = Path(__file__).resolve().parents[3] / "inventory.example.yaml"


def test_the_example_loads_cleanly():
    inventory = load_inventory(EXAMPLE)
    assert [host.name for host in inventory.hosts] == ["hv1", "hv2", "hv3"]
    assert [flavor.name for flavor in inventory.flavors] == ["m1.tiny", "m1.small", "m1.large.ssd"]
    assert {image.source_kind for image in inventory.images} == {"local", "host", "url"}


def test_the_example_shows_defaults_at_work():
    hv1, hv2, _ = load_inventory(EXAMPLE).hosts
    assert hv2.ssh.port == 2222
    assert hv2.ssh.key == hv1.ssh.key == Path("~/.ssh/herd_ed25519").expanduser()
    assert hv2.allocation_ratios == AllocationRatios(cpu=2.0, ram=1.5, disk=1.0)
    assert hv1.labels == {"site": "par1", "rack": "r1", "ssd": "true"}


@pytest.mark.parametrize(
    "model",
    [
        HostSpec,
        SshSpec,
        Capacity,
        AllocationRatios,
        Reserved,
        FlavorSpec,
        ImageSpec,
        NetworkSpec,
        AllocationPool,
    ],
    ids=lambda model: model.__name__,
)
def test_the_example_shows_every_key(model: type):
    text = EXAMPLE.read_text(encoding="utf-8")
    missing = [key for key in model.model_fields if not re.search(rf"^\s*-? *{key}:", text, re.M)]
    assert missing == []


def test_the_example_flavors_extra_specs_are_ones_the_scheduler_reads_and_some_host_meets():
    inventory = load_inventory(EXAMPLE)
    labels = LabelsFilter()
    for flavor in inventory.flavors:
        if not flavor.extra_specs:
            continue
        spec = RequestSpec("u-1", flavor.vcpus, flavor.ram_mb, flavor.disk_gb,
                           extra_specs=dict(flavor.extra_specs))  # fmt: skip
        assert len(labels.wanted(spec)) == len(flavor.extra_specs), flavor.extra_specs
        hosts = {
            host.name: HostState(1, host.name, True, True, None, None, None, None, 1.0, 1.0,
                                 1.0, 0, 0, 0, 0, None, labels=dict(host.labels))
            for host in inventory.hosts
        }  # fmt: skip
        fits = [name for name, state in hosts.items() if labels.check(state, spec).passed]
        assert fits == ["hv1"], (flavor.name, fits)
