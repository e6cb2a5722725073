"""Rescue and unrescue against real agents on fake hosts: the rescue definition the host
makes from the server's own (rescue disk in vda's place, its own disk moved and marked),
and the server's own definition given back whole."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from orchestrator.conductor.tasks.power import power
from orchestrator.conductor.tasks.rescue import RescueTask, UnrescueTask
from tests.unit.conductor.herdlab import HerdLab


def definition(lab: HerdLab, host: str, uuid: str) -> ET.Element:
    return ET.fromstring(lab.virt_state(host)["domains"][uuid]["xml"])


def disks(root: ET.Element) -> dict[str, tuple[str, str | None]]:
    """{target dev: (source file, serial)}."""
    return {
        d.find("target").get("dev"): (d.find("source").get("file"), d.findtext("serial"))  # type: ignore[union-attr]
        for d in root.iterfind("devices/disk")
    }


def inst_dir(lab: HerdLab, host: str, uuid: str) -> Path:
    return Path(lab.agent_dir(host)) / "instances" / uuid


async def test_rescue_boots_a_fresh_disk_with_the_servers_own_second(lab: HerdLab) -> None:
    server = await lab.boot("s1", host="hv1")
    own = ET.tostring(definition(lab, "hv1", server.uuid), encoding="unicode")
    outcome = await RescueTask(lab.conductor, server).execute()
    assert outcome.error is None, outcome.error
    row = await lab.server(server.uuid)
    assert (row.vm_state, row.task_state, row.power_state) == ("rescued", None, "running")
    assert lab.domains("hv1")[server.uuid] == "running"
    found = disks(definition(lab, "hv1", server.uuid))
    home = inst_dir(lab, "hv1", server.uuid)
    assert found["vda"] == (str(home / "disk.rescue"), None)
    moved = [dev for dev, (src, _) in found.items() if src == str(home / "disk")]
    assert moved and moved[0] not in ("vda", "vdb"), found  # vdb is the seed
    assert found[moved[0]][1] == "herd-rescued-root"
    assert (home / "disk.rescue").is_file()
    events = await lab.events(server.uuid, "rescue")
    assert events == [("stop", True), ("rescue", True)]
    # The claim stays: the server is still on its host.
    assert await lab.claim_hosts(server.uuid) == ["hv1"]

    outcome = await UnrescueTask(lab.conductor, row).execute()
    assert outcome.error is None, outcome.error
    row = await lab.server(server.uuid)
    assert (row.vm_state, row.task_state, row.power_state) == ("active", None, "running")
    assert lab.domains("hv1")[server.uuid] == "running"
    back = definition(lab, "hv1", server.uuid)
    assert disks(back) == disks(ET.fromstring(own))
    assert not [p.name for p in home.iterdir() if "rescue" in p.name]
    uses = json.loads((home / "images.json").read_text())["images"]
    assert len(uses) == len(set(uses))


async def test_a_stopped_server_is_rescued_without_a_stop(lab: HerdLab) -> None:
    server = await lab.boot("s1", host="hv1")
    await power(lab.conductor, [server], "stop")
    outcome = await RescueTask(lab.conductor, await lab.server(server.uuid)).execute()
    assert outcome.error is None, outcome.error
    assert await lab.events(server.uuid, "rescue") == [("rescue", True)]
    assert lab.domains("hv1")[server.uuid] == "running"


async def test_a_rescue_that_cannot_start_gives_the_server_its_own_disk_back(
    lab: HerdLab,
) -> None:
    server = await lab.boot("s1", host="hv1")
    own = disks(definition(lab, "hv1", server.uuid))
    lab.fail("hv1", "start", "cannot start the rescue")
    outcome = await RescueTask(lab.conductor, server).execute()
    assert outcome.error is not None and "cannot start the rescue" in outcome.error
    lab.heal("hv1")
    row = await lab.server(server.uuid)
    assert row.vm_state == "active" and row.task_state is None
    assert disks(definition(lab, "hv1", server.uuid)) == own
    assert not (inst_dir(lab, "hv1", server.uuid) / "domain.unrescued.xml").exists()


async def test_only_a_rescued_server_is_unrescued(lab: HerdLab) -> None:
    server = await lab.boot("s1", host="hv1")
    outcome = await UnrescueTask(lab.conductor, server).execute()
    assert outcome.error is not None and "needs vm_state rescued" in outcome.error


async def test_an_unknown_rescue_image_is_refused_before_anything_happens(lab: HerdLab) -> None:
    server = await lab.boot("s1", host="hv1")
    outcome = await RescueTask(lab.conductor, server, "no-such").execute()
    assert outcome.error is not None and "not found" in outcome.error
    assert lab.domains("hv1")[server.uuid] == "running"
    assert (await lab.server(server.uuid)).task_state is None


@pytest.mark.parametrize(("step", "outcome", "state"), [
    ("stop", "rolled_back", "active"), ("rescue", "done", "rescued"),
])  # fmt: skip
async def test_a_rescue_killed_at_a_step_is_finished_or_undone(
    lab: HerdLab, step: str, outcome: str, state: str
) -> None:
    server = await lab.boot("s1", host="hv1")
    await lab.kill_at("rescue", step, lambda: RescueTask(lab.conductor, server).execute())
    (recovered,) = await lab.recover()
    assert recovered.outcome == outcome, recovered
    row = await lab.server(server.uuid)
    assert (row.vm_state, row.task_state) == (state, None)
    assert lab.domains("hv1")[server.uuid] == "running"
    rescued = disks(definition(lab, "hv1", server.uuid))["vda"][0].endswith("disk.rescue")
    assert rescued == (state == "rescued")


async def test_an_unrescue_killed_is_finished(lab: HerdLab) -> None:
    server = await lab.boot("s1", host="hv1")
    await RescueTask(lab.conductor, server).execute()
    row = await lab.server(server.uuid)
    await lab.kill_at("unrescue", "unrescue", lambda: UnrescueTask(lab.conductor, row).execute())
    (recovered,) = await lab.recover()
    assert recovered.outcome == "done", recovered
    assert (await lab.server(server.uuid)).vm_state == "active"
    assert disks(definition(lab, "hv1", server.uuid))["vda"][0].endswith("/disk")


async def test_a_failed_rescue_of_a_stopped_server_leaves_it_stopped_on_its_own_disk(
    lab: HerdLab,
) -> None:
    server = await lab.boot("s1", host="hv1")
    await power(lab.conductor, [server], "stop")
    own = disks(definition(lab, "hv1", server.uuid))
    lab.fail("hv1", "define", "the rescue definition is refused")
    outcome = await RescueTask(lab.conductor, await lab.server(server.uuid)).execute()
    assert outcome.error is not None and "refused" in outcome.error
    lab.heal("hv1")
    assert lab.domains("hv1")[server.uuid] == "shutoff"
    assert disks(definition(lab, "hv1", server.uuid)) == own
    home = inst_dir(lab, "hv1", server.uuid)
    assert not [p.name for p in home.iterdir() if "rescue" in p.name]
    row = await lab.server(server.uuid)
    assert (row.vm_state, row.task_state) == ("stopped", None)


async def test_a_finished_rescue_whose_journal_stayed_open_is_left_alone(lab: HerdLab) -> None:
    from sqlalchemy import update

    from orchestrator.db.models import TaskRecord

    server = await lab.boot("s1", host="hv1")
    assert (await RescueTask(lab.conductor, server).execute()).error is None
    (record,) = await lab.tasks(server.uuid)
    async with lab.db.session() as db:  # as if its runner died after the DB, before the row
        await db.exec(
            update(TaskRecord)  # type: ignore[call-overload]
            .where(TaskRecord.id == record.id)  # type: ignore[arg-type]
            .values(state="running", step="rescue")
        )
    await lab.orphan(record.id)
    (recovered,) = await lab.recover()
    assert recovered.outcome == "done", recovered
    row = await lab.server(server.uuid)
    assert (row.vm_state, row.task_state) == ("rescued", None)
    assert disks(definition(lab, "hv1", server.uuid))["vda"][0].endswith("disk.rescue")
    assert lab.domains("hv1")[server.uuid] == "running"


def test_the_rescue_definition_swaps_the_boot_disk_and_keeps_volumes() -> None:
    from agent.rescue import rescue_xml

    own = """<domain type='qemu'><name>herd-x</name><os><type>hvm</type><boot dev='hd'/></os>
    <devices>
      <disk type='file' device='disk'><source file='/i/disk'/><target dev='vda' bus='virtio'/>
        <address type='pci' domain='0x0000' bus='0x00' slot='0x04' function='0x0'/></disk>
      <disk type='file' device='disk'><source file='/i/seed.iso'/><target dev='vdb'/></disk>
      <disk type='file' device='disk'><source file='/v/vol.qcow2'/><target dev='vdc'/>
        <serial>vol</serial></disk>
      <interface type='bridge'><boot order='2'/></interface>
    </devices></domain>"""
    text, moved = rescue_xml(own, Path("/i/disk.rescue"), None, None, None)
    root = ET.fromstring(text)
    assert moved == "vdd"
    assert disks(root) == {
        "vda": ("/i/disk.rescue", None), "vdb": ("/i/seed.iso", None),
        "vdc": ("/v/vol.qcow2", "vol"), "vdd": ("/i/disk", "herd-rescued-root"),
    }  # fmt: skip
    (first, *_) = root.iterfind("devices/disk")
    assert first.find("address").get("slot") == "0x04"  # type: ignore[union-attr]
    assert first.find("boot").get("order") == "1"  # type: ignore[union-attr]
    assert root.find("os/boot") is None and root.find("devices/interface/boot") is None
    kernel, _ = rescue_xml(own, Path("/i/disk.rescue"), Path("/i/k"), None, "root=/dev/vda")
    booted = ET.fromstring(kernel)
    assert (booted.findtext("os/kernel"), booted.findtext("os/cmdline")) == (
        "/i/k",
        "root=/dev/vda",
    )
    assert next(booted.iterfind("devices/disk")).find("boot") is None
