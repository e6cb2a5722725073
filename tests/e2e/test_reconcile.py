"""`herd reconcile` against real drift on the lab: each kind made for real behind herd's
back, found by one run, repaired under the fixing policy, and a second run clean."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.e2e.herdcli import HerdCli, Result, assert_one_line_error, domain_state

pytestmark = [pytest.mark.e2e, pytest.mark.engine_postgresql]

VIRSH = ["virsh", "-c", "qemu:///system"]


def configure(herd: HerdCli, tmp_path: Path, **reconcile: object) -> None:
    """Policies for this test; other tests' leftover domains and volume files are not
    ours to judge."""
    settings = {"unknown_domains": "noop", "orphan_volumes": "noop", **reconcile}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"reconcile": settings}))
    herd.env["HERD_CONFIG"] = str(path)


def reconcile(herd: HerdCli, *args: str) -> tuple[Result, dict]:
    result = herd.run("reconcile", "--json", *args)
    assert result.code in (0, 1, 2), result.stderr
    return result, result.json()


def kinds(report: dict) -> list[tuple[str, str, str]]:
    """(kind, server or host, outcome) of every finding, sorted."""
    return sorted((f["kind"], f["server"] or f["host"], f["outcome"]) for f in report["findings"])


def boot(herd: HerdCli, name: str, *args: str) -> dict:
    herd.ok("server", "create", name, "--flavor", "m1.nano", "--image", "blank", *args)
    return herd.server(name)


def sql(herd: HerdCli, statement: str) -> None:
    herd.sql(statement)


def test_quiet_when_all_is_well_and_a_summary_with_v(herd: HerdCli, tmp_path: Path) -> None:
    configure(herd, tmp_path)
    boot(herd, "calm")
    result = herd.run("reconcile")
    assert (result.code, result.stdout, result.stderr) == (0, "", "")  # cron mails nothing
    verbose = herd.run("reconcile", "-v")
    assert verbose.code == 0 and "3/3 hosts answered, 0 finding(s)" in verbose.stderr


def test_power_drift_is_recorded_or_restored_by_policy(herd: HerdCli, lab, tmp_path: Path) -> None:
    configure(herd, tmp_path)
    server = boot(herd, "pw")
    lab.exec_in(server["host"], [*VIRSH, "destroy", f"herd-{server['uuid']}"], check=True)
    dry, report = reconcile(herd, "--dry-run")
    assert dry.code == 2 and kinds(report) == [("power_state", "pw", "would fix")]
    assert herd.server("pw")["vm_state"] == "active"  # a dry run changes nothing

    result, report = reconcile(herd)
    assert result.code == 1 and kinds(report) == [("power_state", "pw", "fixed")]
    after = herd.server("pw")
    assert (after["vm_state"], after["power_state"]) == ("stopped", "shutdown")
    assert "power_sync" in [
        a["action"] for a in herd.ok("server", "actions", "pw", "--json").json()
    ]
    assert reconcile(herd)[0].code == 0

    # restore: the host is put back to what the DB says.
    configure(herd, tmp_path, power_state="restore")
    sql(herd, "UPDATE instances SET vm_state='active', power_state='running' WHERE name='pw'")
    result, report = reconcile(herd)
    assert result.code == 1 and kinds(report) == [("power_state", "pw", "fixed")]
    assert domain_state(lab, server["host"], server["uuid"]) == "running"
    assert herd.server("pw")["vm_state"] == "active"
    assert reconcile(herd)[0].code == 0


def orphan_xml(instance_uuid: str) -> str:
    return f"""<domain type='qemu'>
  <name>herd-{instance_uuid}</name>
  <uuid>{instance_uuid}</uuid>
  <metadata>
    <herd:instance xmlns:herd="http://herd.local/xmlns/instance/1">
      <herd:uuid>{instance_uuid}</herd:uuid>
      <herd:name>made-by-hand</herd:name>
    </herd:instance>
  </metadata>
  <memory unit='MiB'>32</memory>
  <os><type arch='x86_64'>hvm</type></os>
</domain>
"""


def test_orphans_are_reported_then_reaped_and_deleted_servers_domains_are_reaped(
    herd: HerdCli, lab, tmp_path: Path
) -> None:
    orphan = str(uuid.uuid4())
    xml = tmp_path / "orphan.xml"
    xml.write_text(orphan_xml(orphan))
    lab.exec_in("lab-2", [*VIRSH, "define", str(xml)], check=True)
    lab.exec_in("lab-2", [*VIRSH, "start", f"herd-{orphan}"], check=True)
    configure(herd, tmp_path, unknown_domains="log")
    result, report = reconcile(herd)
    mine = [f for f in report["findings"] if f["uuid"] == orphan]
    assert result.code == 2 and [(f["kind"], f["outcome"]) for f in mine] == [
        ("unknown_domain", "unfixed")
    ]
    assert domain_state(lab, "lab-2", orphan) == "running"  # only reported

    configure(herd, tmp_path, unknown_domains="reap")
    result, report = reconcile(herd)
    mine = [f for f in report["findings"] if f["uuid"] == orphan]
    assert [(f["kind"], f["outcome"]) for f in mine] == [("unknown_domain", "fixed")]
    assert domain_state(lab, "lab-2", orphan) is None

    # A server the DB says is deleted, whose domain still runs: reaped (Nova's default).
    configure(herd, tmp_path)
    server = boot(herd, "ghost")
    sql(herd, "UPDATE instances SET vm_state='deleted' WHERE name='ghost'")
    result, report = reconcile(herd)
    assert ("deleted_running", "ghost", "fixed") in kinds(report)
    assert domain_state(lab, server["host"], server["uuid"]) is None
    assert reconcile(herd)[0].code == 0


def test_a_create_killed_after_the_cast_is_completed_by_reconcile(
    herd: HerdCli, lab, tmp_path: Path
) -> None:
    configure(herd, tmp_path, collect_grace=0)  # the caster is dead: no need to wait
    herd.ok("host", "refresh")
    process = herd.popen("server", "create", "cut", "--flavor", "m1.nano", "--image", "blank")
    deadline = time.monotonic() + 60
    state = None
    while time.monotonic() < deadline and state != "running":
        rows = herd.sql("SELECT state FROM agent_jobs WHERE op = 'build'")
        state = rows[0][0] if rows else None
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert state == "running" and herd.server("cut")["vm_state"] == "building"
    time.sleep(3)  # the build finishes on the host, with nobody listening
    result, report = reconcile(herd)
    assert result.code == 1 and kinds(report) == [("finished_job", "cut", "fixed")]
    server = herd.server("cut")
    assert (server["vm_state"], server["task_state"]) == ("active", None)
    assert domain_state(lab, server["host"], server["uuid"]) == "running"
    assert reconcile(herd)[0].code == 0


def test_missing_domains_stuck_builds_and_wrong_claims_are_repaired(
    herd: HerdCli, lab, tmp_path: Path
) -> None:
    configure(herd, tmp_path, build_timeout=60)
    gone = boot(herd, "vanished")
    lab.exec_in(gone["host"], [*VIRSH, "destroy", f"herd-{gone['uuid']}"], check=True)
    lab.exec_in(gone["host"], [*VIRSH, "undefine", f"herd-{gone['uuid']}"], check=True)
    boot(herd, "stuck")
    sql(
        herd,
        "UPDATE instances SET vm_state='building', task_state='spawning', "
        f"updated_at={herd.hours_ago(2)} WHERE name='stuck'",
    )
    boot(herd, "unclaimed")
    sql(
        herd,
        "DELETE FROM allocations WHERE instance_uuid="
        "(SELECT uuid FROM instances WHERE name='unclaimed')",
    )
    result, report = reconcile(herd)
    assert result.code == 1
    assert kinds(report) == [
        ("claim", "unclaimed", "fixed"),
        ("missing_domain", "vanished", "fixed"),
        ("stuck_build", "stuck", "fixed"),
    ]
    vanished = herd.server("vanished")
    assert vanished["vm_state"] == "error"
    assert "has no domain for it (found by reconcile)" in vanished["faults"][0]["message"]
    assert herd.server("stuck")["vm_state"] == "error"
    hosts = {h["name"]: h for h in herd.ok("host", "list", "--json").json()}
    assert sum(h["instances"] for h in hosts.values()) == 1  # only "unclaimed" holds a claim
    assert reconcile(herd)[0].code == 0


def test_an_unreachable_host_fails_only_itself_goes_down_after_n_and_comes_back(
    herd: HerdCli, lab, tmp_path: Path
) -> None:
    configure(herd, tmp_path, down_after=2, host_timeout=10)
    elsewhere = boot(herd, "elsewhere", "--host", "lab-1")
    lab.stop_service("lab-3", "sshd")
    try:
        lab.exec_in("lab-1", [*VIRSH, "destroy", f"herd-{elsewhere['uuid']}"], check=True)
        result, report = reconcile(herd)
        assert result.code == 2
        assert kinds(report) == [
            ("host_unreachable", "lab-3", "unfixed"),
            ("power_state", "elsewhere", "fixed"),  # the other hosts were still looked after
        ]
        assert report["hosts"]["lab-3"] != "ok" and report["hosts"]["lab-1"] == "ok"
        result, report = reconcile(herd)
        assert result.code == 2 and kinds(report) == [("host_down", "lab-3", "fixed")]
        lab3 = next(h for h in herd.ok("host", "list", "--json").json() if h["name"] == "lab-3")
        assert lab3["status"] == "down"
    finally:
        lab.start_service("lab-3", "sshd")
    result, report = reconcile(herd)
    assert result.code == 1 and kinds(report) == [("host_up", "lab-3", "fixed")]
    assert reconcile(herd)[0].code == 0


@pytest.fixture
def tarpit() -> Iterator[int]:
    """A port that accepts connections and never says a word: a host that hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


def test_two_runs_at_once_one_works_the_other_exits_3_and_a_killed_runs_lock_is_recovered(
    herd: HerdCli, lab_inventory: Path, tmp_path: Path, tarpit: int
) -> None:
    ssh = yaml.safe_load(lab_inventory.read_text())["hosts"][0]["ssh"]
    slow = tmp_path / "slow.yaml"
    slow.write_text(
        yaml.safe_dump(
            {"hosts": [{"name": "hangs", "address": "127.0.0.1", "ssh": {**ssh, "port": tarpit}}]}
        )
    )
    herd.ok("inventory", "apply", str(lab_inventory), str(slow))
    configure(herd, tmp_path, host_timeout=4)
    runs = [
        subprocess.Popen(
            herd.command("reconcile"),
            env=herd.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outcomes = sorted((p.wait(timeout=120), p.stderr.read()) for p in runs)
    assert [code for code, _ in outcomes] == [2, 3]  # one ran (and met the hung host)
    locked = Result(3, "", outcomes[1][1])
    assert_one_line_error(locked, code=3, contains="another herd reconcile is running (pid ")

    killed = herd.popen("reconcile")
    time.sleep(2.5)  # it holds the lock, waiting on the hung host
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    after = herd.run("reconcile", "--json")
    assert after.code == 2 and after.json()["hosts"]["hangs"].endswith("no answer within 4s")


def test_a_damaged_journal_or_images_json_is_a_warning_and_the_host_stays_up(
    herd: HerdCli, lab, tmp_path: Path
) -> None:
    """One unreadable file on a host (finding 19 of #12) is reported; the host still
    answers every survey, so it never goes down for it."""
    configure(herd, tmp_path, down_after=1)
    journal = "/var/lib/herd/jobs/damaged-e2e.json"
    uses_dir = f"/var/lib/herd/instances/{uuid.uuid4()}"
    lab.exec_in(
        "lab-1",
        ["sh", "-c", f"mkdir -p /var/lib/herd/jobs {uses_dir}; printf '{{\"job_id\": ' > {journal}; "
         f"printf '[' > {uses_dir}/images.json"],
        check=True,
    )  # fmt: skip
    try:
        for _ in range(2):
            result, report = reconcile(herd)
            assert result.code == 2, result.stderr
            assert report["hosts"] == {"lab-1": "ok", "lab-2": "ok", "lab-3": "ok"}
            assert any(journal in w for w in report["warnings"]), report["warnings"]
        hosts = {h["name"]: h["status"] for h in herd.ok("host", "list", "--json").json()}
        assert hosts == {"lab-1": "up", "lab-2": "up", "lab-3": "up"}
        plain = herd.run("reconcile")
        assert f"warning: host lab-1: skipped the unreadable {journal}" in plain.stderr
        cache = herd.run("image", "cache", "list", "--host", "lab-1", "--json")
        assert cache.code == 0, cache.stderr
        assert any(f"{uses_dir}/images.json" in w for w in cache.json()["warnings"])
    finally:
        lab.exec_in("lab-1", ["rm", "-rf", journal, uses_dir], check=True)
    result, report = reconcile(herd)
    assert report["warnings"] == [] and result.code == 0, report
