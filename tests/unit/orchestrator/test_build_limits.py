"""The orchestrator refuses what the agent would refuse, before it writes or claims anything;
and what it accepts at the very limits, the agent's own parser takes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent import specs as agent_specs
from agent.specs import BuildSpec
from orchestrator.api import images as images_api
from orchestrator.api import servers as servers_api
from orchestrator.db.engine import Database
from orchestrator.db.models import Image, Instance, Network
from orchestrator.errors import InvalidInput
from orchestrator.guest_config import CMDLINE_PROPERTY, GuestConfig
from orchestrator.inventory.models import FlavorSpec, ImageSpec, NetworkSpec
from orchestrator.networking import PortView, random_mac


async def add_networks(db: Database, count: int) -> list[str]:
    names = [f"net{i}" for i in range(count)]
    async with db.session() as session:
        for name in names:
            session.add(Network(name=name, kind="bridge", source="br0"))
    return names


@pytest.mark.usefixtures("catalog")
async def test_more_networks_than_the_agent_takes_are_refused_before_any_row(
    db: Database,
) -> None:
    names = await add_networks(db, agent_specs.MAX_NICS + 1)
    request = servers_api.CreateRequest("web", "small", "cirros", networks=tuple(names))
    with pytest.raises(InvalidInput) as caught:
        await servers_api.create_servers(db, request)
    assert str(caught.value) == (
        f"{len(names)} --network options: a server has at most {agent_specs.MAX_NICS} NICs"
    )
    assert await servers_api.list_servers(db) == []


@pytest.mark.usefixtures("catalog")
async def test_as_many_networks_as_the_agent_takes_are_accepted(db: Database) -> None:
    names = await add_networks(db, agent_specs.MAX_NICS)
    request = servers_api.CreateRequest("web", "small", "cirros", networks=tuple(names))
    (server,) = await servers_api.create_servers(db, request)
    view = await servers_api.show_server(db, server.uuid)
    assert len(view.ports) == agent_specs.MAX_NICS


@pytest.mark.parametrize(
    "cmdline",
    [
        pytest.param("console=ttyS0\x00", id="nul"),
        pytest.param("console=ttyS0\ninit=/bin/sh", id="newline"),
        pytest.param("x" * (agent_specs.MAX_CMDLINE + 1), id="too-long"),
    ],
)
async def test_image_create_refuses_a_command_line_the_agent_would_refuse(
    db: Database, cmdline: str
) -> None:
    values = {
        "name": "k",
        "source": "host:///srv/k.qcow2",
        "properties": {CMDLINE_PROPERTY: cmdline},
    }
    with pytest.raises(InvalidInput) as caught:
        await images_api.create_image(db, values)
    assert f"properties.{CMDLINE_PROPERTY}" in str(caught.value)
    assert "must be one line" in str(caught.value)
    assert "\n" not in str(caught.value)
    assert await images_api.list_images(db) == []


def test_what_the_orchestrator_accepts_at_its_limits_the_agent_builds(tmp_path: Path) -> None:
    """The real build arguments, made from specs at every limit, parse on the agent."""
    flavor = FlavorSpec(
        name="f" * 63,
        vcpus=agent_specs.VCPUS[1],
        ram_mb=agent_specs.RAM_MB[1],
        disk_gb=agent_specs.DISK_GB[1],
    )
    kernel = ImageSpec(name="k", source="host:///srv/k", format="aki", sha256="1" * 64)
    image = ImageSpec(
        name="i" * 63,
        source="host:///srv/i",
        sha256="2" * 64,
        properties={CMDLINE_PROPERTY: "c" * agent_specs.MAX_CMDLINE, "kernel_id": "k"},
    )
    bridge = NetworkSpec(name="lan", type="bridge", bridge="b" * 15)
    network = NetworkSpec(name="virt", type="network", libvirt_network="n" * 64)
    name = "s" * 63
    servers_api.instance_names(name, 1)
    instance = Instance(
        uuid="00000000-0000-4000-8000-000000000000",
        name=name,
        hostname=servers_api.hostname_of(name),
        flavor_name=flavor.name,
        vcpus=flavor.vcpus,
        ram_mb=flavor.ram_mb,
        disk_gb=flavor.disk_gb,
        image_name=image.name,
        created_at=datetime.now(UTC),
        updated_at=datetime.now(UTC),
    )
    ports = [
        PortView(
            network=spec.name,
            kind=spec.type,
            source=spec.bridge or spec.libvirt_network,
            mac=random_mac(),
            ip=None,
            cidr=None,
            gateway=None,
            dns=(),
            device_index=index,
        )
        for index, spec in enumerate([bridge, network] * (agent_specs.MAX_NICS // 2))
    ]
    config = GuestConfig(
        image=Image(
            name=image.name, source=image.source, sha256=image.sha256, properties=image.properties
        ),
        kernel=Image(name=kernel.name, source=kernel.source, format="aki", sha256=kernel.sha256),
        ramdisk=None,
        flavor={**flavor.model_dump(include={"name", "vcpus", "ram_mb", "disk_gb", "extra_specs"})},
        ports=ports,
        documents={},
    )
    spec = BuildSpec.from_args(config.build_args(instance, "kvm", b"seed"))
    assert spec.flavor.ram_mb == agent_specs.RAM_MB[1]
    assert len(spec.nics) == agent_specs.MAX_NICS
    assert spec.boot is not None and len(spec.boot.cmdline) == agent_specs.MAX_CMDLINE
