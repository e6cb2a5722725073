"""Shelve and unshelve against real agents on fake hosts: the disk imaged into the host's
cache by the real qemu-img, the host freed, the server booted again elsewhere from that
image with its identity, and each step killed and recovered."""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from sqlmodel import select

from orchestrator.api import servers as api
from orchestrator.conductor.tasks.delete import DeleteTask
from orchestrator.conductor.tasks.power import power
from orchestrator.conductor.tasks.shelve import ShelveTask, UnshelveTask
from orchestrator.db.models import Image, Instance
from tests.unit.conductor.herdlab import HerdLab


def macs(lab: HerdLab, host: str, uuid: str) -> list[str]:
    dom = lab.virt_state(host)["domains"][uuid]
    root = ET.fromstring(dom.get("live_xml") or dom["xml"])
    return [m.get("address", "") for m in root.iterfind("devices/interface/mac")]


async def shelve_image(lab: HerdLab, row: Instance) -> Image:
    async with lab.db.read() as db:
        image = await db.get(Image, row.image_id)
    assert image is not None
    return image


async def shelved(lab: HerdLab, name: str = "s1", host: str = "hv1") -> tuple[Instance, list[str]]:
    server = await lab.boot(name, host=host)
    nics = macs(lab, host, server.uuid)
    outcome = await ShelveTask(lab.conductor, server).execute()
    assert outcome.error is None, outcome.error
    return await lab.server(server.uuid), nics


async def test_shelve_images_the_disk_and_frees_the_host(lab: HerdLab) -> None:
    server, _ = await shelved(lab)
    assert (server.vm_state, server.task_state, server.host_id) == ("shelved_offloaded", None, None)
    assert lab.where(server.uuid) == {}  # no domain anywhere
    assert lab.files("hv1", server.uuid)["dir"] is False  # nor its disk
    assert await lab.claim_hosts(server.uuid) == []
    image = await shelve_image(lab, server)
    assert image.name.startswith("s1-shelved-") and server.image_name == image.name
    assert image.source == "cache://hv1" and image.sha256 is not None
    assert image.properties["image_type"] == "shelved"
    assert image.properties["instance_uuid"] == server.uuid
    assert image.properties["base_image_ref"] == "cirros"
    cached = Path(lab.agent_dir("hv1")) / "images" / image.sha256
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == image.sha256
    assert await lab.events(server.uuid, "shelve") == [
        ("stop", True), ("snapshot", True), ("register", True), ("offload", True),
    ]  # fmt: skip


async def test_unshelve_boots_it_elsewhere_as_itself(lab: HerdLab) -> None:
    server, nics = await shelved(lab)
    outcome = await UnshelveTask(lab.conductor, server, "hv2").execute()
    assert outcome.error is None, outcome.error
    await lab.assert_whole(server.uuid, "hv2")
    row = await lab.server(server.uuid)
    assert (row.vm_state, row.task_state, row.power_state) == ("active", None, "running")
    assert macs(lab, "hv2", server.uuid) == nics  # its ports, so its addresses, kept
    image = await shelve_image(lab, row)
    relayed = Path(lab.agent_dir("hv2")) / "images" / str(image.sha256)
    assert relayed.exists()  # carried from hv1's cache through here
    assert await lab.events(server.uuid, "unshelve") == [("unshelve", True)]


async def test_a_stopped_server_is_shelved_without_a_stop(lab: HerdLab) -> None:
    server = await lab.boot("s1", host="hv1")
    await power(lab.conductor, [server], "stop")
    outcome = await ShelveTask(lab.conductor, await lab.server(server.uuid)).execute()
    assert outcome.error is None, outcome.error
    assert [e for e, _ in await lab.events(server.uuid, "shelve")] == [
        "snapshot",
        "register",
        "offload",
    ]


async def test_an_unshelve_with_no_room_leaves_it_shelved(lab: HerdLab) -> None:
    server, _ = await shelved(lab)
    await lab.fill("hv2")
    outcome = await UnshelveTask(lab.conductor, server, "hv2").execute()
    assert outcome.error is not None and "unshelve" in outcome.error
    row = await lab.server(server.uuid)
    assert (row.vm_state, row.task_state, row.host_id) == ("shelved_offloaded", None, None)
    assert await lab.claim_hosts(server.uuid) == []
    # And once there is room, it goes.
    outcome = await UnshelveTask(lab.conductor, row).execute()
    assert outcome.error is None, outcome.error


async def test_a_failed_build_leaves_it_shelved_to_try_again(lab: HerdLab) -> None:
    server, _ = await shelved(lab)
    lab.fail("hv2", "define", "no room for the domain")
    outcome = await UnshelveTask(lab.conductor, server, "hv2").execute()
    assert outcome.error is not None
    row = await lab.server(server.uuid)
    assert (row.vm_state, row.task_state, row.host_id) == ("shelved_offloaded", None, None)
    assert await lab.claim_hosts(server.uuid) == []
    lab.heal("hv2")
    outcome = await UnshelveTask(lab.conductor, row, "hv2").execute()
    assert outcome.error is None, outcome.error
    await lab.assert_whole(server.uuid, "hv2")


async def test_only_a_shelved_server_is_unshelved(lab: HerdLab) -> None:
    server = await lab.boot("s1", host="hv1")
    outcome = await UnshelveTask(lab.conductor, server).execute()
    assert outcome.error is not None and "needs vm_state shelved_offloaded" in outcome.error
    assert lab.domains("hv1")[server.uuid] == "running"


async def test_a_shelved_server_deleted_takes_its_image_along(lab: HerdLab) -> None:
    server, _ = await shelved(lab)
    name = server.image_name
    outcome = await DeleteTask(lab.conductor, server).execute()
    assert outcome.error is None, outcome.error
    assert (await lab.server(server.uuid)).vm_state == "deleted"
    async with lab.db.read() as db:
        assert (await db.exec(select(Image).where(Image.name == name))).first() is None


async def test_an_image_booted_from_a_shelve_image_keeps_it(lab: HerdLab) -> None:
    server, _ = await shelved(lab)
    request = api.CreateRequest(name="s2", flavor="small", image=server.image_name, host="hv2")
    (second,) = await api.create_servers(lab.db, request)
    (built,) = await lab.conductor.build([second])
    assert built.error is None, built.error
    await DeleteTask(lab.conductor, server).execute()
    async with lab.db.read() as db:
        assert (await db.exec(select(Image).where(Image.name == server.image_name))).first()


@pytest.mark.parametrize(
    ("step", "outcome", "state"),
    [
        ("stop", "rolled_back", "active"),
        ("snapshot", "rolled_back", "active"),
        ("register", "done", "shelved_offloaded"),
        ("offload", "done", "shelved_offloaded"),
    ],
)
async def test_a_shelve_killed_at_a_step_is_finished_or_undone(
    lab: HerdLab, step: str, outcome: str, state: str
) -> None:
    server = await lab.boot("s1", host="hv1")
    await lab.kill_at("shelve", step, lambda: ShelveTask(lab.conductor, server).execute())
    (recovered,) = await lab.recover()
    assert recovered.outcome == outcome, recovered
    row = await lab.server(server.uuid)
    assert (row.vm_state, row.task_state) == (state, None)
    if state == "active":
        await lab.assert_whole(server.uuid, "hv1")
        async with lab.db.read() as db:
            images = (await db.exec(select(Image.name))).all()
        assert not [n for n in images if "shelved" in n]
    else:
        assert lab.where(server.uuid) == {} and await lab.claim_hosts(server.uuid) == []
        assert (await shelve_image(lab, row)).properties["image_type"] == "shelved"


@pytest.mark.parametrize("step", ["schedule", "prepare", "cast"])
async def test_an_unshelve_killed_at_a_step_is_finished(lab: HerdLab, step: str) -> None:
    server, _ = await shelved(lab)
    await lab.kill_at(
        "unshelve", step, lambda: UnshelveTask(lab.conductor, server, "hv2").execute()
    )
    (recovered,) = await lab.recover()
    assert recovered.outcome == "done", recovered
    await lab.assert_whole(server.uuid, "hv2")
    assert (await lab.server(server.uuid)).vm_state == "active"


async def test_a_shelved_server_keeps_its_volume_and_comes_back_to_its_host(lab: HerdLab) -> None:
    from orchestrator.conductor.tasks.attach import AttachVolumeTask
    from orchestrator.conductor.tasks.volumes import VolumeCreate
    from tests.unit.conductor.test_task_volumes import disks, volume

    server = await lab.boot("s1", host="hv1")
    data = await VolumeCreate(lab.conductor, "data", 1, host="hv1").execute()
    attach = AttachVolumeTask(lab.conductor, server, await volume(lab, "data"), None)
    assert (await attach.execute()).error is None
    shelve = await ShelveTask(lab.conductor, await lab.server(server.uuid)).execute()
    assert shelve.error is None, shelve.error
    row = await lab.server(server.uuid)
    assert row.vm_state == "shelved_offloaded"
    kept = await volume(lab, "data")
    assert (kept.status, kept.instance_uuid) == ("in-use", row.uuid)
    assert (Path(lab.agent_dir("hv1")) / "volumes" / f"{data.uuid}.qcow2").exists()
    # Its volume is a file on hv1: hv2 is refused, and saying why.
    refused = await UnshelveTask(lab.conductor, row, "hv2").execute()
    assert (
        refused.error is not None and "not the host of its volumes (data on hv1)" in refused.error
    )
    outcome = await UnshelveTask(lab.conductor, await lab.server(row.uuid)).execute()
    assert outcome.error is None, outcome.error
    await lab.assert_whole(row.uuid, "hv1")
    assert disks(lab, "hv1", row.uuid)[str(kept.device)].endswith(f"{data.uuid}.qcow2")


async def test_a_shelve_whose_image_was_pruned_meanwhile_is_rolled_back(lab: HerdLab) -> None:
    server = await lab.boot("s1", host="hv1")
    record = await lab.kill_at(
        "shelve", "register", lambda: ShelveTask(lab.conductor, server).execute()
    )
    cached = Path(lab.agent_dir("hv1")) / "images" / record.inputs["sha256"]
    cached.unlink()  # an `image cache prune` while the task waited for recovery
    (recovered,) = await lab.recover()
    assert recovered.outcome == "rolled_back", recovered
    await lab.assert_whole(server.uuid, "hv1")  # its disk never went
    assert (await lab.server(server.uuid)).vm_state == "active"


async def test_an_unshelve_whose_image_cannot_be_relayed_stays_shelved(lab: HerdLab) -> None:
    server, _ = await shelved(lab)
    image = await shelve_image(lab, server)
    (Path(lab.agent_dir("hv1")) / "images" / str(image.sha256)).unlink()  # hv1's copy lost
    outcome = await UnshelveTask(lab.conductor, server, "hv2").execute()
    assert outcome.error is not None
    row = await lab.server(server.uuid)
    assert (row.vm_state, row.task_state, row.host_id) == ("shelved_offloaded", None, None)
    assert await lab.claim_hosts(server.uuid) == []


async def test_shelve_images_go_when_nothing_needs_them(lab: HerdLab) -> None:
    server, _ = await shelved(lab)
    first = server.image_name
    assert (await UnshelveTask(lab.conductor, server, "hv2").execute()).error is None
    again = await ShelveTask(lab.conductor, await lab.server(server.uuid)).execute()
    assert again.error is None, again.error
    row = await lab.server(server.uuid)
    assert row.image_name != first
    async with lab.db.read() as db:
        names = set((await db.exec(select(Image.name))).all())
    assert first not in names and row.image_name in names  # the newer holds its disk
    assert (await UnshelveTask(lab.conductor, row, "hv1").execute()).error is None
    assert (await DeleteTask(lab.conductor, await lab.server(server.uuid)).execute()).error is None
    async with lab.db.read() as db:
        names = set((await db.exec(select(Image.name))).all())
    assert row.image_name not in names  # deleted with its server, once unshelved too
