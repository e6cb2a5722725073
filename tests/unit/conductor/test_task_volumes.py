"""Volumes against real agents on fake hosts: files made by the real qemu-img, disks in
the fake domains' definitions, claims the scheduler counts."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from orchestrator.conductor.hosts import target_of
from orchestrator.conductor.outcomes import Outcome
from orchestrator.conductor.tasks.attach import AttachVolumeTask, DetachVolumeTask
from orchestrator.conductor.tasks.live_migrate import LiveMigrateTask
from orchestrator.conductor.tasks.migrate import MigrateTask
from orchestrator.conductor.tasks.power import power
from orchestrator.conductor.tasks.rebuild import RebuildTask
from orchestrator.conductor.tasks.resize import ConfirmResizeTask, ResizeTask, RevertResizeTask
from orchestrator.conductor.tasks.volumes import (
    VolumeCreate,
    VolumeDelete,
    VolumeExtend,
    volume_args,
)
from orchestrator.db.models import Allocation, Host, Instance, Volume
from orchestrator.errors import Conflict, HerdError, NoValidHost
from tests.unit.conductor.herdlab import HerdLab


def qemu_img_info(path: Path) -> dict[str, Any]:
    done = subprocess.run(
        ["qemu-img", "info", "--output=json", str(path)], capture_output=True, check=True, text=True
    )
    return dict(json.loads(done.stdout))


async def volume(lab: HerdLab, name: str) -> Volume:
    async with lab.db.read() as db:
        return (await db.exec(select(Volume).where(Volume.name == name))).one()


def disks(lab: HerdLab, host: str, uuid: str, live: bool = False) -> dict[str, str]:
    """{target dev: source file} of the fake domain's definition (or running state)."""
    dom = lab.virt_state(host)["domains"][uuid]
    root = ET.fromstring(dom["live_xml"] if live else dom["xml"])
    return {
        d.find("target").get("dev"): d.find("source").get("file")  # type: ignore[union-attr]
        for d in root.iterfind("devices/disk")
    }


async def test_create_makes_the_file_and_claims_its_space_on_the_host(lab: HerdLab) -> None:
    made = await VolumeCreate(lab.conductor, "data", 2, host="hv2").execute()
    assert (made.status, made.error) == ("available", None)
    path = Path(lab.agent_dir("hv2")) / "volumes" / f"{made.uuid}.qcow2"
    assert made.path == str(path) and path.exists()
    assert await lab.claims() == [(made.uuid, "hv2", 0)]
    async with lab.db.read() as db:
        from orchestrator.scheduler.loader import load_host_states

        (state,) = await load_host_states(db, [(await lab.host("hv2")).id])  # type: ignore[list-item]
    assert (state.used_disk_gb, state.instances) == (2, 0)  # a volume is no server


async def test_a_volume_larger_than_any_hosts_free_disk_is_refused_with_the_reason(
    lab: HerdLab,
) -> None:
    with pytest.raises(NoValidHost, match="disk"):
        await VolumeCreate(lab.conductor, "huge", 500).execute()
    assert await lab.claims() == []
    async with lab.db.read() as db:
        assert (await db.exec(select(Volume))).all() == []


async def test_a_name_taken_is_a_conflict_and_claims_nothing(lab: HerdLab) -> None:
    await VolumeCreate(lab.conductor, "data", 1, host="hv1").execute()
    with pytest.raises(Conflict, match="already exists"):
        await VolumeCreate(lab.conductor, "data", 1, host="hv1").execute()
    assert len(await lab.claims()) == 1


async def test_hot_attach_detach_and_attach_to_another_server(lab: HerdLab) -> None:
    first = await lab.boot("s1", host="hv1")
    second = await lab.boot("s2", host="hv1")
    data = await VolumeCreate(lab.conductor, "data", 1, host="hv1").execute()
    outcome = await AttachVolumeTask(lab.conductor, first, data, None).execute()
    assert outcome.error is None, outcome.error
    attached = await volume(lab, "data")
    assert (attached.status, attached.instance_uuid, attached.device) == (
        "in-use", first.uuid, "vdc",
    )  # fmt: skip
    assert disks(lab, "hv1", first.uuid)["vdc"] == data.path
    assert disks(lab, "hv1", first.uuid, live=True)["vdc"] == data.path  # hot
    assert await lab.events(first.uuid, "attach_volume") == [("attach_volume", True)]
    # In use: not to a second server, and not deleted.
    refused = await AttachVolumeTask(lab.conductor, second, attached, None).execute()
    assert refused.error is not None and "in-use" in refused.error
    with pytest.raises(Conflict, match="in use by server s1"):
        await VolumeDelete(lab.conductor, attached).execute()
    outcome = await DetachVolumeTask(lab.conductor, first, attached).execute()
    assert outcome.error is None, outcome.error
    assert "vdc" not in disks(lab, "hv1", first.uuid)
    assert "vdc" not in disks(lab, "hv1", first.uuid, live=True)
    freed = await volume(lab, "data")
    assert (freed.status, freed.instance_uuid, freed.device) == ("available", None, None)
    outcome = await AttachVolumeTask(lab.conductor, second, freed, "vdd").execute()
    assert outcome.error is None, outcome.error
    assert disks(lab, "hv1", second.uuid)["vdd"] == data.path
    assert (await lab.server(second.uuid)).task_state is None


async def test_cold_attach_to_a_stopped_server_changes_only_its_definition(
    lab: HerdLab,
) -> None:
    server = await lab.boot("s1", host="hv1")
    await power(lab.conductor, [server], "stop")
    data = await VolumeCreate(lab.conductor, "data", 1, host="hv1").execute()
    outcome = await AttachVolumeTask(lab.conductor, server, data, None).execute()
    assert outcome.error is None, outcome.error
    assert disks(lab, "hv1", server.uuid)["vdc"] == data.path
    (started,) = await power(lab.conductor, [await lab.server(server.uuid)], "start")
    assert started.error is None
    assert disks(lab, "hv1", server.uuid, live=True)["vdc"] == data.path


async def test_a_volume_on_another_host_is_refused_and_left_available(lab: HerdLab) -> None:
    server = await lab.boot("s1", host="hv1")
    data = await VolumeCreate(lab.conductor, "data", 1, host="hv2").execute()
    outcome = await AttachVolumeTask(lab.conductor, server, data, None).execute()
    assert outcome.error is not None and "on another host" in outcome.error
    assert (await volume(lab, "data")).status == "available"
    assert (await lab.server(server.uuid)).task_state is None


async def test_an_attach_the_hypervisor_refuses_puts_the_volume_back(lab: HerdLab) -> None:
    server = await lab.boot("s1", host="hv1")
    data = await VolumeCreate(lab.conductor, "data", 1, host="hv1").execute()
    lab.fail("hv1", "attach-device", "no PCI slot left")
    outcome = await AttachVolumeTask(lab.conductor, server, data, None).execute()
    assert outcome.error is not None and "no PCI slot left" in outcome.error
    back = await volume(lab, "data")
    assert (back.status, back.instance_uuid) == ("available", None)
    row = await lab.server(server.uuid)
    assert (row.vm_state, row.task_state) == ("active", None)


async def test_an_attach_killed_at_its_step_is_finished_by_recovery(lab: HerdLab) -> None:
    server = await lab.boot("s1", host="hv1")
    data = await VolumeCreate(lab.conductor, "data", 1, host="hv1").execute()
    await lab.kill_at(
        "attach_volume", "attach",
        lambda: AttachVolumeTask(lab.conductor, server, data, None).execute(),
    )  # fmt: skip
    assert (await volume(lab, "data")).status == "attaching"
    (recovered,) = await lab.recover()
    assert recovered.outcome == "done", recovered
    assert (await volume(lab, "data")).status == "in-use"
    assert disks(lab, "hv1", server.uuid)["vdc"] == data.path
    assert (await lab.server(server.uuid)).task_state is None


async def attached(lab: HerdLab, host: str = "hv1") -> tuple[Instance, Volume]:
    server = await lab.boot("s1", host=host)
    data = await VolumeCreate(lab.conductor, "data", 2, host=host).execute()
    outcome = await AttachVolumeTask(lab.conductor, server, data, None).execute()
    assert outcome.error is None, outcome.error
    return await lab.server(server.uuid), await volume(lab, "data")


def volume_files(lab: HerdLab, host: str) -> list[str]:
    """The files in ``host``'s volume directory and carried volumes in its incoming one."""
    base = Path(lab.agent_dir(host))
    found = [p.name for p in (base / "volumes").glob("*")]
    return sorted(found + [p.name for p in (base / "images" / "incoming").glob("*.volume")])


async def claimed_disk(lab: HerdLab) -> list[tuple[str, str, int]]:
    """(consumer, host, disk GB) of every claim."""
    async with lab.db.read() as db:
        hosts = {h.id: h.name for h in (await db.exec(select(Host))).all()}
        rows = (await db.exec(select(Allocation))).all()
    return sorted((a.instance_uuid, hosts[a.host_id], a.disk_gb) for a in rows)


def digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


async def test_a_cold_migration_carries_the_attached_volumes(lab: HerdLab) -> None:
    server, data = await attached(lab)
    before = digest(str(data.path))
    outcome = await MigrateTask(lab.conductor, server, "hv2").execute()
    assert outcome.error is None, outcome.error
    moved = await volume(lab, "data")
    new_path = Path(lab.agent_dir("hv2")) / "volumes" / f"{data.uuid}.qcow2"
    assert (moved.host_id, moved.path, moved.status, moved.instance_uuid, moved.device) == (
        (await lab.host("hv2")).id, str(new_path), "in-use", server.uuid, "vdc",
    )  # fmt: skip
    assert digest(str(new_path)) == before
    assert volume_files(lab, "hv1") == [] and volume_files(lab, "hv2") == [new_path.name]
    assert disks(lab, "hv2", server.uuid)["vdc"] == str(new_path)
    assert disks(lab, "hv2", server.uuid, live=True)["vdc"] == str(new_path)
    await lab.assert_whole(server.uuid, "hv2")
    # The server's claim is its flavor's again; the volume's moved with it.
    assert await claimed_disk(lab) == sorted([(server.uuid, "hv2", 1), (data.uuid, "hv2", 2)])
    assert ("copy_volumes", True) in await lab.events(server.uuid, "migrate")


async def test_a_migration_needs_room_for_the_volumes_too(lab: HerdLab) -> None:
    server, _ = await attached(lab)
    async with lab.db.session() as db:  # hv2 has room for the server's disk, not its volume
        host = (await db.exec(select(Host).where(Host.name == "hv2"))).one()
        host.override_disk_gb = 2
        db.add(host)
    outcome = await MigrateTask(lab.conductor, server, "hv2").execute()
    assert outcome.error is not None and "disk" in outcome.error
    assert (await volume(lab, "data")).host_id == (await lab.host("hv1")).id
    await lab.assert_whole(server.uuid, "hv1")


async def test_a_migration_that_fails_on_the_destination_leaves_the_volume_home(
    lab: HerdLab,
) -> None:
    server, data = await attached(lab)
    lab.fail("hv2", "define", "no room at the inn")
    outcome = await MigrateTask(lab.conductor, server, "hv2").execute()
    assert outcome.error is not None and "no room at the inn" in outcome.error
    home = await volume(lab, "data")
    assert (home.host_id, home.path, home.status) == (
        (await lab.host("hv1")).id, data.path, "in-use",
    )  # fmt: skip
    assert volume_files(lab, "hv2") == []  # the copy is gone, the volume is not
    assert Path(str(data.path)).exists()
    await lab.assert_whole(server.uuid, "hv1")
    assert await claimed_disk(lab) == sorted([(server.uuid, "hv1", 1), (data.uuid, "hv1", 2)])


@pytest.mark.parametrize(("step", "home"), [("copy_volumes", "hv1"), ("switch", "hv2")])
async def test_a_migration_killed_with_its_volumes_half_moved_ends_on_one_side(
    lab: HerdLab, step: str, home: str
) -> None:
    server, data = await attached(lab)
    await lab.kill_at("migrate", step, lambda: MigrateTask(lab.conductor, server, "hv2").execute())
    (recovered,) = await lab.recover()
    assert recovered.outcome in ("done", "rolled_back"), recovered
    kept = await volume(lab, "data")
    assert kept.host_id == (await lab.host(home)).id
    assert Path(str(kept.path)).exists() and kept.status == "in-use"
    away = "hv2" if home == "hv1" else "hv1"
    assert volume_files(lab, away) == [], volume_files(lab, away)
    await lab.assert_whole(server.uuid, home)
    assert disks(lab, home, server.uuid)["vdc"] == kept.path
    assert await claimed_disk(lab) == sorted([(server.uuid, home, 1), (data.uuid, home, 2)])


async def test_a_rebuild_keeps_the_volumes_attached(lab: HerdLab) -> None:
    server, data = await attached(lab)
    outcome = await RebuildTask(lab.conductor, server).execute()
    assert outcome.error is None, outcome.error
    assert disks(lab, "hv1", server.uuid)["vdc"] == data.path
    assert (await volume(lab, "data")).status == "in-use"


async def test_moves_that_cannot_carry_volumes_are_refused_naming_them(lab: HerdLab) -> None:
    server, _ = await attached(lab)
    outcome = await LiveMigrateTask(lab.conductor, server, "hv2").execute()
    assert outcome.error is not None and "has volumes attached (data)" in outcome.error
    assert "cold-migrate" in outcome.error
    assert lab.where(server.uuid) == {"hv1": "running"}


async def test_a_volume_is_not_extended_while_its_server_moves(lab: HerdLab) -> None:
    server, data = await attached(lab)
    async with lab.db.session() as db:
        row = (await db.exec(select(Instance).where(Instance.uuid == server.uuid))).one()
        row.task_state = "resize_migrating"
        db.add(row)
    with pytest.raises(Conflict, match="which is resize_migrating: extend it when"):
        await VolumeExtend(lab.conductor, data, 3).execute()
    assert (await volume(lab, "data")).status == "in-use"


async def test_extend_grows_the_file_and_the_claim(lab: HerdLab) -> None:
    data = await VolumeCreate(lab.conductor, "data", 1, host="hv1").execute()
    grown = await VolumeExtend(lab.conductor, data, 3).execute()
    assert (grown.size_gb, grown.status) == (3, "available")
    async with lab.db.read() as db:
        from orchestrator.db.models import Allocation

        claim = (
            await db.exec(select(Allocation).where(Allocation.instance_uuid == data.uuid))
        ).one()
    assert claim.disk_gb == 3
    info = await asyncio.to_thread(qemu_img_info, Path(str(data.path)))
    assert info["virtual-size"] == 3 << 30


async def test_delete_removes_the_file_the_row_and_the_claim(lab: HerdLab) -> None:
    data = await VolumeCreate(lab.conductor, "data", 1, host="hv1").execute()
    await VolumeDelete(lab.conductor, data).execute()
    assert not Path(str(data.path)).exists()
    assert await lab.claims() == []
    async with lab.db.read() as db:
        assert (await db.exec(select(Volume))).all() == []


async def test_deleting_a_server_leaves_its_volume_available(lab: HerdLab) -> None:
    server = await lab.boot("s1", host="hv1")
    data = await VolumeCreate(lab.conductor, "data", 1, host="hv1").execute()
    await AttachVolumeTask(lab.conductor, server, data, None).execute()
    (deleted,) = await lab.conductor.delete([await lab.server(server.uuid)])
    assert deleted.error is None, deleted.error
    left = await volume(lab, "data")
    assert (left.status, left.instance_uuid) == ("available", None)
    assert Path(str(data.path)).exists()


async def boot_with(lab: HerdLab, name: str, *volumes: str) -> Outcome:
    from orchestrator.api import servers as api
    from orchestrator.conductor.tasks.attach import attach_boot_volumes

    request = api.CreateRequest(name=name, flavor="small", image="cirros", volumes=volumes)
    (instance,) = await api.create_servers(lab.db, request)
    (outcome,) = await lab.conductor.build([instance])
    return await attach_boot_volumes(lab.conductor, outcome)


async def test_create_with_volumes_lands_on_their_host_and_attaches_them(lab: HerdLab) -> None:
    a = await VolumeCreate(lab.conductor, "a", 1, host="hv3").execute()
    b = await VolumeCreate(lab.conductor, "b", 1, host="hv3").execute()
    outcome = await boot_with(lab, "db", "a", "b")
    assert (outcome.error, outcome.host) == (None, "hv3")
    attached = disks(lab, "hv3", outcome.uuid, live=True)
    assert (attached["vdc"], attached["vdd"]) == (a.path, b.path)
    assert disks(lab, "hv3", outcome.uuid)["vdd"] == b.path  # and in its definition
    row = await lab.server(outcome.uuid)
    assert "volume_host" not in row.request_spec  # later moves are scheduled freely


async def test_create_with_a_volume_whose_host_is_full_is_refused_with_the_reason(
    lab: HerdLab,
) -> None:
    await VolumeCreate(lab.conductor, "a", 1, host="hv2").execute()
    await lab.fill("hv2")
    outcome = await boot_with(lab, "db", "a")
    assert outcome.error is not None and "not the host of its volumes (a on hv2)" in outcome.error
    assert (await volume(lab, "a")).status == "available"


async def test_create_with_volumes_on_two_hosts_is_refused_before_anything(
    lab: HerdLab,
) -> None:
    from orchestrator.api import servers as api
    from orchestrator.errors import InvalidInput

    await VolumeCreate(lab.conductor, "a", 1, host="hv1").execute()
    await VolumeCreate(lab.conductor, "b", 1, host="hv2").execute()
    request = api.CreateRequest(name="db", flavor="small", image="cirros", volumes=("a", "b"))
    with pytest.raises(InvalidInput, match="on different hosts"):
        await api.create_servers(lab.db, request)


async def test_the_host_refuses_to_delete_a_file_a_domain_still_has(lab: HerdLab) -> None:
    server = await lab.boot("s1", host="hv1")
    data = await VolumeCreate(lab.conductor, "data", 1, host="hv1").execute()
    await AttachVolumeTask(lab.conductor, server, data, None).execute()
    host = await lab.host("hv1")
    with pytest.raises(HerdError, match=f"still a disk of domain herd-{server.uuid}"):
        await lab.conductor.agent.volume_delete(target_of(host), volume_args(data, host))
    assert Path(str(data.path)).exists()


async def test_a_migration_waits_for_a_volume_that_is_busy(lab: HerdLab) -> None:
    server, data = await attached(lab)
    async with lab.db.session() as db:  # an extend in flight on it
        row = (await db.exec(select(Volume).where(Volume.uuid == data.uuid))).one()
        row.status = "extending"
        db.add(row)
    outcome = await MigrateTask(lab.conductor, server, "hv2").execute()
    assert outcome.error is not None and "data is extending" in outcome.error
    await lab.assert_whole(server.uuid, "hv1")
    assert volume_files(lab, "hv2") == []


# -- resize carries volumes ---------------------------------------------------------


def _write(path: str, char: str) -> None:
    from tests.unit.conductor.test_volume_snapshots import write

    write(Path(path), "qcow2", 0, char.encode() * 512)


def _read(path: str) -> bytes:
    from tests.unit.conductor.test_volume_snapshots import read

    return read(Path(path), "qcow2", 0, 512)


async def test_a_resize_carries_the_volumes_and_a_confirm_drops_the_old_files(
    lab: HerdLab,
) -> None:
    server, data = await attached(lab)
    _write(str(data.path), "A")
    outcome = await ResizeTask(lab.conductor, server, "big", "hv2").execute()
    assert outcome.error is None, outcome.error
    moved = await volume(lab, "data")
    assert (moved.host_id, moved.status) == ((await lab.host("hv2")).id, "in-use")
    assert moved.path != data.path and _read(str(moved.path)) == b"A" * 512
    assert disks(lab, "hv2", server.uuid)["vdc"] == moved.path
    assert Path(str(data.path)).exists()  # the revert's way back, until the confirm
    assert (data.uuid, "hv2", 2) in await claimed_disk(lab)
    outcome = await ConfirmResizeTask(lab.conductor, await lab.server(server.uuid)).execute()
    assert outcome.error is None, outcome.error
    assert volume_files(lab, "hv1") == []
    assert await claimed_disk(lab) == sorted([(server.uuid, "hv2", 2), (data.uuid, "hv2", 2)])


async def test_a_revert_brings_the_volumes_back_with_what_was_written_meanwhile(
    lab: HerdLab,
) -> None:
    server, data = await attached(lab)
    _write(str(data.path), "A")
    assert (await ResizeTask(lab.conductor, server, "big", "hv2").execute()).error is None
    _write(str((await volume(lab, "data")).path), "B")  # the resized server writes
    outcome = await RevertResizeTask(lab.conductor, await lab.server(server.uuid)).execute()
    assert outcome.error is None, outcome.error
    back = await volume(lab, "data")
    assert (back.host_id, back.path) == (data.host_id, data.path)
    assert _read(str(back.path)) == b"B" * 512  # the volume's data is never reverted
    assert volume_files(lab, "hv2") == []
    await lab.assert_whole(server.uuid, "hv1")
    assert disks(lab, "hv1", server.uuid)["vdc"] == data.path
    assert await claimed_disk(lab) == sorted([(server.uuid, "hv1", 1), (data.uuid, "hv1", 2)])


@pytest.mark.parametrize(("kind", "step"), [
    ("resize", "copy_volumes"), ("resize", "spawn"), ("revert", "copy_volumes"),
    ("revert", "remove_dest"), ("revert", "revert_source"),
])  # fmt: skip
async def test_a_resize_or_revert_killed_with_volumes_ends_on_one_side(
    lab: HerdLab, kind: str, step: str
) -> None:
    server, _ = await attached(lab)
    if kind == "resize":
        work = ResizeTask(lab.conductor, server, "big", "hv2").execute
    else:
        assert (await ResizeTask(lab.conductor, server, "big", "hv2").execute()).error is None
        work = RevertResizeTask(lab.conductor, await lab.server(server.uuid)).execute
    await lab.kill_at(kind, step, work)
    (recovered,) = await lab.recover()
    assert recovered.outcome in ("done", "rolled_back"), recovered
    row = await lab.server(server.uuid)
    home = await lab.host_name(row.host_id)
    assert home == "hv1", recovered  # a resize killed before its switch, or a revert
    kept = await volume(lab, "data")
    assert await lab.host_name(kept.host_id) == home and Path(str(kept.path)).exists()
    assert disks(lab, str(home), server.uuid)["vdc"] == kept.path
    if row.vm_state != "resized":  # a resize waiting keeps the old file for its revert
        away = "hv2" if home == "hv1" else "hv1"
        assert volume_files(lab, away) == [], volume_files(lab, away)
