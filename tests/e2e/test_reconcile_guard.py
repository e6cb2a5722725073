"""Reconcile never removes a domain an open task may own: a live migration's destination
copy, made for real with the lab's virsh, survives `herd reconcile` while the task's row
is open, and is reaped by the default policy once the row is closed."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.e2e.herdcli import HerdCli, domain_state
from tests.e2e.test_reconcile import VIRSH, boot, configure, orphan_xml, reconcile

pytestmark = pytest.mark.e2e


def host_id(herd: HerdCli, name: str) -> int:
    ((found,),) = herd.sql("SELECT id FROM hosts WHERE name = :name", name=name)
    return int(found)


def open_live_migration(herd: HerdCli, instance_uuid: str, source: str, dest: str) -> int:
    """A live migration's row at step switch, its runner another operator's herd whose
    heartbeat is fresh: alive, so recovery leaves it to its runner."""
    now = datetime.now(UTC).replace(tzinfo=None)  # herd stores UTC without a zone
    ((task,),) = herd.sql(
        "INSERT INTO tasks (kind, instance_uuid, source_host_id, dest_host_id, step, "
        "inputs, claims, state, runner_host, runner_pid, runner_boot_id, runner_started, "
        "heartbeat_at, generation, created_at, updated_at) VALUES ('live_migrate', :uuid, "
        ":source, :dest, 'switch', '{}', '{}', 'running', 'ops-elsewhere', 4242, 'boot', 1, "
        ":now, 0, :now, :now) RETURNING id",
        uuid=instance_uuid,
        source=host_id(herd, source),
        dest=host_id(herd, dest),
        now=now,
    )
    return int(task)


def test_a_destination_copy_survives_reconcile_until_its_task_closes(
    herd: HerdCli, lab, tmp_path: Path
) -> None:
    configure(herd, tmp_path)  # deleted_running: reap, the default
    server = boot(herd, "moving")
    source, uuid = server["host"], server["uuid"]
    dest = next(h["name"] for h in herd.ok("host", "list", "--json").json() if h["name"] != source)
    xml = tmp_path / "copy.xml"
    xml.write_text(orphan_xml(uuid))  # the copy libvirt would have made on the destination
    lab.exec_in(dest, [*VIRSH, "define", str(xml)], check=True)
    lab.exec_in(dest, [*VIRSH, "start", f"herd-{uuid}"], check=True)
    task = open_live_migration(herd, uuid, source, dest)

    herd.env["COLUMNS"] = "300"  # the table's detail on one line
    text = herd.run("reconcile")
    assert text.code == 2, text.stderr
    assert f"held by open task {task} (live_migrate, step switch)" in text.stdout
    result, report = reconcile(herd)
    assert result.code == 2
    (held,) = [f for f in report["findings"] if f["uuid"] == uuid]
    assert (held["kind"], held["host"], held["policy"], held["outcome"], held["held_by"]) == (
        "deleted_running", dest, "held", "unfixed", task,
    )  # fmt: skip
    assert domain_state(lab, dest, uuid) == "running"
    assert domain_state(lab, source, uuid) == "running"

    herd.sql("UPDATE tasks SET state = 'done' WHERE id = :id", id=task)
    result, report = reconcile(herd)
    assert result.code == 1
    assert [(f["kind"], f["host"], f["outcome"]) for f in report["findings"]] == [
        ("deleted_running", dest, "fixed")
    ]
    assert domain_state(lab, dest, uuid) is None
    assert domain_state(lab, source, uuid) == "running"  # the server itself is untouched
