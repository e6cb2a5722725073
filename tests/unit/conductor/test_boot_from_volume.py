"""Servers booted from a volume, against real agents on fake hosts: the root volume made
from the image by the real qemu-img on the server's host and its domain's vda, the
claims split between the server and its volume, and the volume's end with the server."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from sqlmodel import select

from orchestrator.api import servers as api
from orchestrator.conductor.tasks.attach import DetachVolumeTask
from orchestrator.conductor.tasks.delete import DeleteTask
from orchestrator.conductor.tasks.migrate import MigrateTask
from orchestrator.db.models import Instance, Volume
from tests.unit.conductor.herdlab import HerdLab
from tests.unit.conductor.test_task_volumes import claimed_disk


async def boot(lab: HerdLab, name: str, *, size: int = 2, delete: bool = False) -> Instance:
    request = api.CreateRequest(
        name=name, flavor="small", image="cirros", host="hv1", boot_volume_gb=size,
        delete_on_termination=delete,
    )  # fmt: skip
    (instance,) = await api.create_servers(lab.db, request)
    (outcome,) = await lab.conductor.build([instance])
    assert outcome.error is None, outcome.error
    return await lab.server(instance.uuid)


async def root_of(lab: HerdLab, uuid: str) -> Volume | None:
    async with lab.db.read() as db:
        query = select(Volume).where(Volume.instance_uuid == uuid, Volume.device == "vda")
        return (await db.exec(query)).first()


def vda(lab: HerdLab, host: str, uuid: str) -> tuple[str, str]:
    root = ET.fromstring(lab.virt_state(host)["domains"][uuid]["xml"])
    (disk,) = [d for d in root.iterfind("devices/disk") if d.find("target").get("dev") == "vda"]  # type: ignore[union-attr]
    return disk.find("source").get("file"), disk.find("driver").get("type")  # type: ignore[union-attr,return-value]


async def test_a_server_boots_from_a_volume_made_from_its_image(lab: HerdLab) -> None:
    server = await boot(lab, "b1")
    root = await root_of(lab, server.uuid)
    assert root is not None and root.name.startswith("b1-root-")
    assert (root.status, root.size_gb, root.image_name) == ("in-use", 2, "cirros")
    assert vda(lab, "hv1", server.uuid) == (root.path, "qcow2")
    assert lab.domains("hv1")[server.uuid] == "running"
    home = Path(lab.agent_dir("hv1")) / "instances" / server.uuid
    assert not (home / "disk").exists()  # no overlay of the cached image
    # The server claims no disk; its volume claims its size.
    claims = await claimed_disk(lab)
    assert (server.uuid, "hv1", 0) in claims and (root.uuid, "hv1", 2) in claims
    assert server.disk_gb == 0


async def test_its_volume_outlives_it_unless_deleted_on_termination(lab: HerdLab) -> None:
    kept, gone = await boot(lab, "kept"), await boot(lab, "gone", delete=True)
    kept_root, gone_root = await root_of(lab, kept.uuid), await root_of(lab, gone.uuid)
    assert kept_root is not None and gone_root is not None
    for server in (kept, gone):
        assert (await DeleteTask(lab.conductor, server).execute()).error is None
    async with lab.db.read() as db:
        volumes = {v.uuid: v for v in (await db.exec(select(Volume))).all()}
    assert gone_root.uuid not in volumes and not Path(str(gone_root.path)).exists()
    left = volumes[kept_root.uuid]
    assert (left.status, left.instance_uuid, left.device) == ("available", None, None)
    assert Path(str(left.path)).exists()


async def test_moves_and_a_detach_of_its_root_are_refused_with_the_reason(lab: HerdLab) -> None:
    server = await boot(lab, "b1")
    moved = await MigrateTask(lab.conductor, server, "hv2").execute()
    assert (
        moved.error is not None and "boots from a volume: migrate is not supported" in moved.error
    )
    root = await root_of(lab, server.uuid)
    assert root is not None
    detached = await DetachVolumeTask(lab.conductor, server, root).execute()
    assert detached.error is not None and "root disk" in detached.error
    assert lab.domains("hv1")[server.uuid] == "running"


async def test_a_root_volume_too_big_for_the_host_is_refused_and_none_is_left(
    lab: HerdLab,
) -> None:
    request = api.CreateRequest(
        name="big", flavor="small", image="cirros", host="hv1", boot_volume_gb=500
    )
    (instance,) = await api.create_servers(lab.db, request)
    (outcome,) = await lab.conductor.build([instance])
    assert outcome.error is not None and "hv1: needs 500 GiB" in outcome.error
    async with lab.db.read() as db:
        assert (await db.exec(select(Volume))).first() is None
