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
