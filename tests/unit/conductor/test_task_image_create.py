"""`server image create` against real agents on fake hosts: the root disk flattened by
the real qemu-img into the host's cache, the running guest moved onto a snapshot overlay
and back, the image registered and relayed to another host that boots from it."""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from sqlmodel import select

from orchestrator.api import servers as api
from orchestrator.conductor.tasks.image_create import ImageCreateTask
from orchestrator.conductor.tasks.power import power
from orchestrator.db.models import Image
from tests.unit.conductor.herdlab import HerdLab


async def image(lab: HerdLab, name: str) -> Image | None:
    async with lab.db.read() as db:
        return (await db.exec(select(Image).where(Image.name == name))).first()


def root_source(lab: HerdLab, host: str, uuid: str) -> str:
    dom = lab.virt_state(host)["domains"][uuid]
    root = ET.fromstring(dom.get("live_xml") or dom["xml"])
    (source,) = [
        d.find("source").get("file")  # type: ignore[union-attr]
        for d in root.iterfind("devices/disk")
        if d.find("target").get("dev") == "vda"  # type: ignore[union-attr]
    ]
    return str(source)


def cached(lab: HerdLab, host: str, sha256: str) -> Path:
    return Path(lab.agent_dir(host)) / "images" / sha256


async def test_a_running_server_is_imaged_without_stopping_it(lab: HerdLab) -> None:
    server = await lab.boot("s1", host="hv1")
    disk = root_source(lab, "hv1", server.uuid)
    outcome = await ImageCreateTask(lab.conductor, server, "s1-image").execute()
    assert outcome.error is None, outcome.error
    made = await image(lab, "s1-image")
    assert made is not None and made.sha256 is not None
    assert (made.source, made.format, made.managed_by) == ("cache://hv1", "qcow2", "cli")
    assert made.properties["instance_uuid"] == server.uuid
    assert made.min_disk_gb == server.disk_gb
    path = cached(lab, "hv1", made.sha256)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == made.sha256
    assert made.size == path.stat().st_size
    # It ran on through it, and is back on its own disk with no overlay left behind.
    assert lab.domains("hv1")[server.uuid] == "running"
    assert root_source(lab, "hv1", server.uuid) == disk
    assert not list(Path(disk).parent.glob("disk.snapshot-*"))
    assert await lab.events(server.uuid, "image_create") == [
        ("snapshot", True), ("register", True),
    ]  # fmt: skip
    row = await lab.server(server.uuid)
    assert (row.vm_state, row.task_state) == ("active", None)


async def test_the_image_boots_a_server_on_another_host(lab: HerdLab) -> None:
    server = await lab.boot("s1", host="hv1")
    await ImageCreateTask(lab.conductor, server, "golden").execute()
    made = await image(lab, "golden")
    assert made is not None and made.sha256 is not None
    request = api.CreateRequest(name="s2", flavor="small", image="golden", host="hv2")
    (second,) = await api.create_servers(lab.db, request)
    (outcome,) = await lab.conductor.build([second])
    assert outcome.error is None, outcome.error
    relayed = cached(lab, "hv2", made.sha256)  # carried from hv1's cache through here
    assert hashlib.sha256(relayed.read_bytes()).hexdigest() == made.sha256
    assert lab.domains("hv2")[second.uuid] == "running"


async def test_a_stopped_server_is_imaged_as_it_is(lab: HerdLab) -> None:
    server = await lab.boot("s1", host="hv1")
    await power(lab.conductor, [server], "stop")
    outcome = await ImageCreateTask(lab.conductor, await lab.server(server.uuid), "cold").execute()
    assert outcome.error is None, outcome.error
    events = await lab.events(server.uuid, "image_create")
    assert events[0] == ("snapshot", True)
    assert lab.domains("hv1")[server.uuid] == "shutoff"
    assert (await lab.server(server.uuid)).vm_state == "stopped"


async def test_a_name_taken_is_refused_before_anything_happens(lab: HerdLab) -> None:
    server = await lab.boot("s1", host="hv1")
    outcome = await ImageCreateTask(lab.conductor, server, "cirros").execute()
    assert outcome.error is not None and "already exists" in outcome.error
    assert (await lab.server(server.uuid)).task_state is None


async def test_a_snapshot_the_host_cannot_merge_back_says_so(lab: HerdLab) -> None:
    server = await lab.boot("s1", host="hv1")
    lab.fail("hv1", "blockcommit", "block job failed")
    outcome = await ImageCreateTask(lab.conductor, server, "broken").execute()
    assert outcome.error is not None and "snapshot overlay" in outcome.error
    assert await image(lab, "broken") is None
    lab.heal("hv1")
    # The next one merges the leftover overlay back first, then images the disk.
    disk = str(Path(lab.agent_dir("hv1")) / "instances" / server.uuid / "disk")
    outcome = await ImageCreateTask(lab.conductor, await lab.server(server.uuid), "ok").execute()
    assert outcome.error is None, outcome.error
    assert root_source(lab, "hv1", server.uuid) == disk


@pytest.mark.parametrize(("step", "outcome"), [("snapshot", "rolled_back"), ("register", "done")])
async def test_a_create_killed_at_a_step_is_finished_or_undone_by_recovery(
    lab: HerdLab, step: str, outcome: str
) -> None:
    server = await lab.boot("s1", host="hv1")
    await lab.kill_at(
        "image_create", step, lambda: ImageCreateTask(lab.conductor, server, "img").execute()
    )
    (recovered,) = await lab.recover()
    assert recovered.outcome == outcome, recovered
    made = await image(lab, "img")
    if outcome == "done":
        assert made is not None and cached(lab, "hv1", str(made.sha256)).exists()
    else:
        assert made is None
    disk = str(Path(lab.agent_dir("hv1")) / "instances" / server.uuid / "disk")
    assert root_source(lab, "hv1", server.uuid) == disk  # never left on an overlay
    row = await lab.server(server.uuid)
    assert (row.vm_state, row.task_state) == ("active", None)


async def test_the_only_copy_of_a_server_image_is_never_pruned(lab: HerdLab) -> None:
    from orchestrator.api.images import prune_caches
    from orchestrator.reconcile.config import ReconcileConfig
    from orchestrator.reconcile.reconciler import Reconciler

    server = await lab.boot("s1", host="hv1")
    await ImageCreateTask(lab.conductor, server, "golden").execute()
    made = await image(lab, "golden")
    assert made is not None
    path = cached(lab, "hv1", str(made.sha256))
    removed, _ = await prune_caches(lab.db, lab.conductor, ["hv1"], 0, dry_run=False)
    assert made.sha256 not in [e.sha256 for e in removed] and path.exists()
    report = await Reconciler(lab.conductor, ReconcileConfig(image_cache_max_age_hours=0)).run()
    stale = [f for f in report.findings if f.kind == "stale_image"]
    assert made.sha256 not in [f.data["sha256"] for f in stale] and path.exists()
