"""Reconcile of volumes, against real agents on fake hosts: the files in the hosts'
volume directories and the disks of the fake domains, compared with the DB, and each
kind of drift repaired by its policy."""

from __future__ import annotations

import json
import uuid as uuidlib
import xml.etree.ElementTree as ET
from datetime import timedelta
from pathlib import Path

from sqlmodel import delete, select

from orchestrator.api import volumes as volumes_api
from orchestrator.conductor.tasks.attach import AttachVolumeTask
from orchestrator.conductor.tasks.volumes import VolumeCreate
from orchestrator.db.models import Allocation, Volume, utcnow
from orchestrator.reconcile.config import ReconcileConfig
from orchestrator.reconcile.findings import Finding
from orchestrator.reconcile.reconciler import Reconciler, RunReport
from tests.unit.conductor.herdlab import HerdLab
from tests.unit.conductor.test_task_volumes import disks, volume

VOLUME_KINDS = (
    "orphan_volume",
    "missing_volume",
    "stuck_volume",
    "volume_attachment_missing",
    "volume_attachment_unknown",
    "claim",
)


async def reconcile(lab: HerdLab, **policies: object) -> RunReport:
    return await Reconciler(lab.conductor, ReconcileConfig(**policies)).run()  # type: ignore[arg-type]


def found(report: RunReport) -> list[Finding]:
    return [f for f in report.findings if f.kind in VOLUME_KINDS]


def drop_disk(lab: HerdLab, host: str, server_uuid: str, dev: str) -> None:
    """The disk gone from the fake domain, definition and live, as if an operator had
    run `virsh detach-disk` behind herd's back."""
    path = lab.virt / f"{host}.json"
    state = json.loads(path.read_text())
    dom = state["domains"][server_uuid]
    for field in ("xml", "live_xml"):
        if field not in dom:
            continue
        root = ET.fromstring(dom[field])
        devices = root.find("devices")
        assert devices is not None
        for disk in devices.findall("disk"):
            if disk.find("target").get("dev") == dev:  # type: ignore[union-attr]
                devices.remove(disk)
        dom[field] = ET.tostring(root, encoding="unicode")
    path.write_text(json.dumps(state))


async def attached_volume(lab: HerdLab) -> tuple[object, Volume]:
    server = await lab.boot("s1", host="hv1")
    data = await VolumeCreate(lab.conductor, "data", 1, host="hv1").execute()
    outcome = await AttachVolumeTask(lab.conductor, server, data, None).execute()
    assert outcome.error is None, outcome.error
    return server, await volume(lab, "data")


async def test_volumes_in_agreement_find_nothing(lab: HerdLab) -> None:
    await attached_volume(lab)
    await VolumeCreate(lab.conductor, "spare", 1, host="hv2").execute()
    report = await reconcile(lab)
    assert found(report) == [], [f.detail for f in found(report)]


async def test_a_file_no_record_knows_is_reported_and_kept_unless_reaped(lab: HerdLab) -> None:
    await VolumeCreate(lab.conductor, "data", 1, host="hv1").execute()  # makes the directory
    stray = Path(lab.agent_dir("hv1")) / "volumes" / f"{uuidlib.uuid4()}.raw"
    stray.write_bytes(b"\0" * 4096)
    report = await reconcile(lab)
    (finding,) = found(report)
    assert (finding.kind, finding.host, finding.outcome) == ("orphan_volume", "hv1", "unfixed")
    assert "no volume in this database" in finding.detail and stray.exists()
    assert report.exit_code == 2
    report = await reconcile(lab, orphan_volumes="reap")
    assert [(f.kind, f.outcome) for f in found(report)] == [("orphan_volume", "fixed")]
    assert not stray.exists()
    assert found(await reconcile(lab)) == []


async def test_a_volume_whose_file_is_gone_stays_in_the_db_in_error(lab: HerdLab) -> None:
    data = await VolumeCreate(lab.conductor, "data", 1, host="hv1").execute()
    Path(str(data.path)).unlink()
    report = await reconcile(lab)
    (finding,) = found(report)
    assert (finding.kind, finding.outcome) == ("missing_volume", "fixed")
    kept = await volume(lab, "data")
    assert kept.status == "error" and "missing on hv1" in str(kept.error)
    assert await lab.claims() == [(data.uuid, "hv1", 0)]
    assert found(await reconcile(lab)) == []  # an error volume is not judged again


async def test_an_in_use_volume_whose_file_is_gone_keeps_its_attachment(lab: HerdLab) -> None:
    server, data = await attached_volume(lab)
    Path(str(data.path)).unlink()
    report = await reconcile(lab)
    assert [(f.kind, f.outcome) for f in found(report)] == [("missing_volume", "fixed")]
    kept = await volume(lab, "data")
    assert (kept.status, kept.instance_uuid) == ("in-use", server.uuid)  # type: ignore[attr-defined]
    assert "missing on hv1" in str(kept.error)


async def test_an_attachment_the_domain_lost_is_reported_then_restored(lab: HerdLab) -> None:
    server, data = await attached_volume(lab)
    uuid = server.uuid  # type: ignore[attr-defined]
    drop_disk(lab, "hv1", uuid, "vdc")
    (finding,) = found(await reconcile(lab))
    assert (finding.kind, finding.server, finding.outcome) == (
        "volume_attachment_missing", "s1", "unfixed",
    )  # fmt: skip
    assert "vdc" not in disks(lab, "hv1", uuid)
    (finding,) = found(await reconcile(lab, volume_attachments="restore"))
    assert finding.outcome == "fixed", finding.error
    assert disks(lab, "hv1", uuid)["vdc"] == data.path
    assert disks(lab, "hv1", uuid, live=True)["vdc"] == data.path
    assert (await volume(lab, "data")).status == "in-use"
    assert await lab.events(uuid, "volume_sync") == [("reconcile", True)]
    assert found(await reconcile(lab)) == []


async def test_an_attachment_the_domain_lost_can_be_recorded_as_detached(lab: HerdLab) -> None:
    server, _ = await attached_volume(lab)
    drop_disk(lab, "hv1", server.uuid, "vdc")  # type: ignore[attr-defined]
    (finding,) = found(await reconcile(lab, volume_attachments="record"))
    assert finding.outcome == "fixed", finding.error
    freed = await volume(lab, "data")
    assert (freed.status, freed.instance_uuid, freed.device) == ("available", None, None)


async def test_a_volume_disk_the_db_does_not_have_is_detached_or_recorded(lab: HerdLab) -> None:
    server, data = await attached_volume(lab)
    uuid = server.uuid  # type: ignore[attr-defined]
    async with lab.db.session() as db:  # the DB forgot the attachment
        row = (await db.exec(select(Volume).where(Volume.uuid == data.uuid))).one()
        row.status, row.instance_uuid, row.device = "available", None, None
        db.add(row)
    (finding,) = found(await reconcile(lab))
    assert (finding.kind, finding.outcome) == ("volume_attachment_unknown", "unfixed")
    assert "has, as vdc, volume data" in finding.detail
    (finding,) = found(await reconcile(lab, volume_attachments="record"))
    assert finding.outcome == "fixed", finding.error
    back = await volume(lab, "data")
    assert (back.status, back.instance_uuid, back.device) == ("in-use", uuid, "vdc")
    async with lab.db.session() as db:
        row = (await db.exec(select(Volume).where(Volume.uuid == data.uuid))).one()
        row.status, row.instance_uuid, row.device = "available", None, None
        db.add(row)
    (finding,) = found(await reconcile(lab, volume_attachments="restore"))
    assert finding.outcome == "fixed", finding.error
    assert "vdc" not in disks(lab, "hv1", uuid)
    assert "vdc" not in disks(lab, "hv1", uuid, live=True)
    assert (await volume(lab, "data")).status == "available"


async def test_a_create_whose_command_died_is_finished_or_undone(lab: HerdLab) -> None:
    made = await VolumeCreate(lab.conductor, "made", 1, host="hv1").execute()
    lost = await VolumeCreate(lab.conductor, "lost", 1, host="hv1").execute()
    Path(str(lost.path)).unlink()
    long_ago = utcnow() - timedelta(hours=2)
    async with lab.db.session() as db:
        for row in (await db.exec(select(Volume))).all():
            row.status, row.path, row.updated_at = "creating", None, long_ago
            row.task_owner = "pid 4242 on a-machine-long-gone"
            db.add(row)
    report = await reconcile(lab)
    assert sorted((f.kind, f.outcome) for f in found(report)) == [
        ("stuck_volume", "fixed"), ("stuck_volume", "fixed"),
    ]  # fmt: skip
    finished, undone = await volume(lab, "made"), await volume(lab, "lost")
    assert (finished.status, finished.path, finished.task_owner) == ("available", made.path, None)
    assert undone.status == "error" and "interrupted" in str(undone.error)
    assert await lab.claims() == [(made.uuid, "hv1", 0)]  # the undone one gave its claim back


async def test_a_create_still_running_here_is_not_stuck(lab: HerdLab) -> None:
    import os
    import socket

    await VolumeCreate(lab.conductor, "data", 1, host="hv1").execute()
    async with lab.db.session() as db:
        row = (await db.exec(select(Volume))).one()
        row.status, row.updated_at = "creating", utcnow() - timedelta(hours=2)
        row.task_owner = f"pid {os.getpid()} on {socket.gethostname()}"
        db.add(row)
    assert found(await reconcile(lab)) == []
    assert (await volume(lab, "data")).status == "creating"


async def test_a_delete_whose_command_died_is_done_again(lab: HerdLab) -> None:
    data = await VolumeCreate(lab.conductor, "data", 1, host="hv1").execute()
    async with lab.db.session() as db:
        row = (await db.exec(select(Volume))).one()
        row.status, row.updated_at = "deleting", utcnow() - timedelta(hours=2)
        db.add(row)
    (finding,) = found(await reconcile(lab))
    assert (finding.kind, finding.outcome) == ("stuck_volume", "fixed")
    assert not Path(str(data.path)).exists()
    assert await lab.claims() == []
    async with lab.db.read() as db:
        assert (await db.exec(select(Volume))).all() == []


async def test_a_volume_without_its_claim_is_claimed_again(lab: HerdLab) -> None:
    data = await VolumeCreate(lab.conductor, "data", 2, host="hv2").execute()
    async with lab.db.session() as db:
        await db.exec(delete(Allocation))  # type: ignore[call-overload]
    (finding,) = found(await reconcile(lab))
    assert (finding.kind, finding.outcome) == ("claim", "fixed")
    assert await lab.claims() == [(data.uuid, "hv2", 0)]
    async with lab.db.read() as db:
        claim = (await db.exec(select(Allocation))).one()
    assert claim.disk_gb == 2


async def test_a_host_that_does_not_answer_keeps_its_volumes(lab: HerdLab) -> None:
    data = await VolumeCreate(lab.conductor, "data", 1, host="hv2").execute()
    lab.fail("hv2", "list", "libvirtd is not running")
    report = await reconcile(lab, down_after=1)
    assert found(report) == []
    assert [(f.kind, f.host) for f in report.findings] == [("host_down", "hv2")]
    (view,) = await volumes_api.list_volumes(lab.db)
    assert (view.volume.status, view.host, view.host_status) == ("available", "hv2", "down")
    assert view.to_dict()["host_status"] == "down"
    assert Path(str(data.path)).exists()


async def test_a_host_whose_volume_files_are_all_gone_is_one_report_and_marks_nothing(
    lab: HerdLab,
) -> None:
    first = await VolumeCreate(lab.conductor, "one", 1, host="hv1").execute()
    second = await VolumeCreate(lab.conductor, "two", 1, host="hv1").execute()
    for made in (first, second):  # as if its storage were not mounted
        Path(str(made.path)).unlink()
    report = await reconcile(lab)
    (finding,) = found(report)
    assert (finding.kind, finding.outcome) == ("missing_volume", "unfixed")
    assert "is its storage mounted?" in finding.detail
    assert {(await volume(lab, n)).status for n in ("one", "two")} == {"available"}


async def test_a_snapshot_whose_command_died_is_made_or_deleted_again(lab: HerdLab) -> None:
    from orchestrator.conductor.tasks.volume_snapshots import SnapshotCreate
    from orchestrator.db.models import VolumeSnapshot

    data = await VolumeCreate(lab.conductor, "data", 1, host="hv1").execute()
    made = await SnapshotCreate(lab.conductor, data, "made").execute()
    gone = await SnapshotCreate(lab.conductor, data, "gone").execute()
    Path(str(made.path)).unlink()  # its copy was never made: the create died before
    long_ago = utcnow() - timedelta(hours=2)
    async with lab.db.session() as db:
        for row in (await db.exec(select(VolumeSnapshot))).all():
            row.status = "creating" if row.name == "made" else "deleting"
            row.updated_at, row.task_owner = long_ago, "pid 4242 on a-machine-long-gone"
            db.add(row)
    report = await reconcile(lab)
    stuck = [f for f in report.findings if f.kind == "stuck_snapshot"]
    assert all(f.error is None for f in stuck), [f.error for f in stuck]
    assert sorted((f.uuid, f.outcome) for f in stuck) == sorted(
        [(made.uuid, "fixed"), (gone.uuid, "fixed")]
    )
    async with lab.db.read() as db:
        rows = {s.name: s for s in (await db.exec(select(VolumeSnapshot))).all()}
    assert list(rows) == ["made"] and rows["made"].status == "available"
    assert Path(str(made.path)).exists() and not Path(str(gone.path)).exists()
    assert sorted(c for c, _, _ in await lab.claims()) == sorted([data.uuid, made.uuid])
    # Their claims are a snapshot's, not a lost server's: none is released as unknown.
    assert not [f for f in report.findings if f.kind == "claim"]
