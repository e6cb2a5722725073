"""Volume snapshots against real agents on fake hosts: copies made by the real qemu-img
(of a detached volume directly, of one a running guest has through the freeze-and-merge
of the fake hypervisor), claims the scheduler counts, and reverts that put the bytes
back."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pytest
from sqlmodel import select

from orchestrator.conductor.tasks.attach import AttachVolumeTask, DetachVolumeTask
from orchestrator.conductor.tasks.migrate import MigrateTask
from orchestrator.conductor.tasks.volume_snapshots import (
    SnapshotCreate,
    SnapshotDelete,
    SnapshotRevert,
)
from orchestrator.conductor.tasks.volumes import VolumeCreate, VolumeDelete, VolumeExtend
from orchestrator.db.models import Allocation, Volume, VolumeSnapshot
from orchestrator.errors import Conflict
from orchestrator.scheduler.loader import load_host_states
from tests.unit.conductor.herdlab import HerdLab
from tests.unit.conductor.test_task_volumes import disks, volume


def write(path: Path, fmt: str, offset: int, data: bytes) -> None:
    """``data`` at ``offset`` of the volume's disk, through qemu-io as a guest would."""
    text = data.decode()
    subprocess.run(
        ["qemu-io", "-f", fmt, "-c", f"write -P {ord(text[0])} {offset} {len(data)}", str(path)],
        check=True,
        capture_output=True,
    )


def read(path: Path, fmt: str, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset`` of the disk's content (converted to a sparse raw)."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        subprocess.run(
            ["qemu-img", "convert", "-U", "-f", fmt, "-O", "raw", str(path), str(raw)],
            check=True, capture_output=True,
        )  # fmt: skip
        with raw.open("rb") as handle:
            handle.seek(offset)
            return handle.read(size)


def volume_file(lab: HerdLab, host: str, v: Volume) -> Path:
    return Path(lab.agent_dir(host)) / "volumes" / f"{v.uuid}.{v.format}"


async def snapshot(lab: HerdLab, name: str) -> VolumeSnapshot:
    async with lab.db.read() as db:
        return (await db.exec(select(VolumeSnapshot).where(VolumeSnapshot.name == name))).one()


@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
async def test_a_snapshot_copies_the_volume_and_a_revert_puts_it_back(
    lab: HerdLab, fmt: str
) -> None:
    await VolumeCreate(lab.conductor, "data", 1, host="hv1", fmt=fmt).execute()
    data = await volume(lab, "data")
    path = volume_file(lab, "hv1", data)
    write(path, fmt, 0, b"A" * 512)
    made = await SnapshotCreate(lab.conductor, data, "before").execute()
    assert (made.status, made.size_gb) == ("available", 1)
    copy = Path(str(made.path))
    assert copy == path.parent / f"{data.uuid}.snapshots" / f"{made.uuid}.qcow2"
    assert read(copy, "qcow2", 0, 512) == b"A" * 512
    # Its space is claimed on the volume's host, as a volume's is.
    async with lab.db.read() as db:
        claim = (
            await db.exec(select(Allocation).where(Allocation.instance_uuid == made.uuid))
        ).one()
        assert (claim.host_id, claim.disk_gb, claim.vcpus) == (data.host_id, 1, 0)

    write(path, fmt, 0, b"B" * 512)
    reverted = await SnapshotRevert(lab.conductor, await snapshot(lab, "before")).execute()
    assert (reverted.status, reverted.error) == ("available", None)
    assert read(path, fmt, 0, 512) == b"A" * 512
    assert copy.exists()  # the snapshot is kept


async def test_an_attached_volume_of_a_running_server_is_copied_while_it_runs(
    lab: HerdLab,
) -> None:
    server = await lab.boot("s1", host="hv1")
    await VolumeCreate(lab.conductor, "data", 1, host="hv1").execute()
    attach = AttachVolumeTask(lab.conductor, server, await volume(lab, "data"), None)
    assert (await attach.execute()).error is None
    data = await volume(lab, "data")
    path = volume_file(lab, "hv1", data)
    write(path, "qcow2", 0, b"C" * 512)
    made = await SnapshotCreate(lab.conductor, data, "live").execute()
    assert read(Path(str(made.path)), "qcow2", 0, 512) == b"C" * 512
    # It ran through it and is back on the volume itself, no overlay left.
    assert lab.domains("hv1")[server.uuid] == "running"
    assert disks(lab, "hv1", server.uuid, live=True)[str(data.device)] == str(path)
    assert not list((path.parent / f"{data.uuid}.snapshots").glob("overlay-*"))
    assert (await volume(lab, "data")).status == "in-use"

    # A revert wants it detached, and says so.
    with pytest.raises(Conflict, match="detach it"):
        await SnapshotRevert(lab.conductor, made).execute()
    detach = DetachVolumeTask(lab.conductor, await lab.server(server.uuid), data)
    assert (await detach.execute()).error is None
    await SnapshotRevert(lab.conductor, made).execute()


async def test_a_volume_with_snapshots_is_neither_deleted_nor_moved(lab: HerdLab) -> None:
    server = await lab.boot("s1", host="hv1")
    await VolumeCreate(lab.conductor, "data", 1, host="hv1").execute()
    data = await volume(lab, "data")
    await SnapshotCreate(lab.conductor, data, "keep").execute()
    with pytest.raises(Conflict, match=r"has snapshots \(keep\)"):
        await VolumeDelete(lab.conductor, data).execute()
    attach = AttachVolumeTask(lab.conductor, server, data, None)
    assert (await attach.execute()).error is None
    outcome = await MigrateTask(lab.conductor, await lab.server(server.uuid), "hv2").execute()
    assert outcome.error is not None and "have snapshots on this host" in outcome.error
    await lab.assert_whole(server.uuid, "hv1")

    detach = DetachVolumeTask(
        lab.conductor, await lab.server(server.uuid), await volume(lab, "data")
    )
    assert (await detach.execute()).error is None
    snap = await snapshot(lab, "keep")
    await SnapshotDelete(lab.conductor, snap).execute()
    assert not Path(str(snap.path)).exists()
    async with lab.db.read() as db:
        assert (await db.exec(select(VolumeSnapshot))).first() is None
        assert (
            await db.exec(select(Allocation).where(Allocation.instance_uuid == snap.uuid))
        ).first() is None
    await VolumeDelete(lab.conductor, await volume(lab, "data")).execute()
    assert not Path(str(snap.path)).parent.exists()  # its directory went with the volume


async def test_a_snapshot_needs_room_and_a_unique_name(lab: HerdLab) -> None:
    await VolumeCreate(lab.conductor, "data", 1, host="hv1").execute()
    data = await volume(lab, "data")
    await SnapshotCreate(lab.conductor, data, "one").execute()
    with pytest.raises(Conflict, match="already exists"):
        await SnapshotCreate(lab.conductor, data, "one").execute()
    async with lab.db.read() as db:
        (state,) = await load_host_states(db, [data.host_id])
    await VolumeExtend(lab.conductor, data, 1 + int(state.free_disk_gb)).execute()
    with pytest.raises(Conflict, match="GB of disk free"):
        await SnapshotCreate(lab.conductor, await volume(lab, "data"), "two").execute()
    # The extended volume cannot go back to its smaller self.
    with pytest.raises(Conflict, match="would shrink it"):
        await SnapshotRevert(lab.conductor, await snapshot(lab, "one")).execute()


async def test_a_failed_copy_leaves_no_record_and_no_claim(lab: HerdLab) -> None:
    await VolumeCreate(lab.conductor, "data", 1, host="hv1").execute()
    data = await volume(lab, "data")
    volume_file(lab, "hv1", data).unlink()  # lost behind herd's back
    with pytest.raises(Exception, match="is missing"):
        await SnapshotCreate(lab.conductor, data, "lost").execute()
    async with lab.db.read() as db:
        assert (await db.exec(select(VolumeSnapshot))).first() is None
        consumers = {a.instance_uuid for a in (await db.exec(select(Allocation))).all()}
    assert consumers == {data.uuid}
