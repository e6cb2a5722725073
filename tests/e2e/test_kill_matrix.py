"""The kill matrix: every journalled task SIGKILLed at every step, then `herd reconcile`.

``HERD_TEST_STOP_AT=kind:step`` makes herd kill itself once that step is committed and
before its side effect (conductor/journal.py). After one reconcile, each server must be
whole on exactly one side of its move: on one host, idle, in its state from before the
move (rolled back) or after it (finished forward) as its task's ``RECOVERY`` rule says;
one domain of it across the lab; claims equal to what the servers hold; no half-carried
disk or stale resize stash; and a ``recover`` event in its action log saying what
recovery did.

Servers are booted in batches and killed concurrently (one herd per server), and every
kill shares the one reconcile: the matrix costs a few boots, not one lab per step.
Moves go lab-1 -> lab-2 (shelves and unshelves stay on lab-2: lab-1 is full); evacuations
leave lab-3, whose daemons are stopped only around each evacuate (it builds nothing
before it is killed, so the rest go on meanwhile).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.conductor.recovery import task_classes
from tests.e2e.herdcli import HerdCli

pytestmark = pytest.mark.e2e

SOURCE, DEST, DOOMED = "lab-1", "lab-2", "lab-3"
HOSTS = ("lab-1", "lab-2", "lab-3")
VIRSH = ["virsh", "-c", "qemu:///system"]
TO_DEST = ("--host", "lab-2", "--timeout", "1")
KILLED = -9  # subprocess's code for a child ended by SIGKILL


@dataclass
class Case:
    """One (kind, step) of the matrix: the server it kills and where it must end up."""

    kind: str
    step: str
    server: str
    expect: str  # "forward" | "back"
    host_before: str = SOURCE
    host_after: str | None = None  # filled after reconcile
    outcome: str = ""
    ok: bool = False

    @property
    def rule(self) -> str:
        return task_classes()[self.kind].RECOVERY[self.step]


# (kind, step, forward|back): what the RECOVERY rule of that step says recovery does.
MIGRATE = [("schedule", "back"), ("stop_source", "back"), ("copy_disk", "back"),
           ("copy_volumes", "back"), ("spawn", "back"), ("switch", "forward"),
           ("cleanup_source", "forward")]  # fmt: skip
RESIZE = [("schedule", "back"), ("stop_source", "back"), ("stash_source", "back"),
          ("copy_disk", "back"), ("spawn", "back"), ("switch", "forward")]  # fmt: skip
RESIZE_UNDO = [("revert_source", "back"), ("drop_stash", "back"), ("restore", "back")]
CONFIRM = [("drop_source", "forward"), ("switch", "forward")]
REVERT = [("remove_dest", "forward"), ("revert_source", "forward"), ("drop_stash", "forward"),
          ("restore", "forward")]  # fmt: skip
LIVE = [("schedule", "back"), ("prepare_dest", "back"), ("live_migrate", "back"),
        ("switch", "forward")]  # fmt: skip
# An evacuation's host_before is set with a prepare or cast kill already moved in the DB;
# cast first: the other kills leave the server recorded on lab-3, where the next evacuate
# would pick it up again.
EVACUATE = [("cast", "forward"), ("prepare", "forward"), ("schedule", "forward")]
REBUILD = [("prepare", "forward"), ("cast", "forward")]
ATTACH = [("attach", "forward")]
DETACH = [("detach", "forward")]
VOLUME_KINDS = ("attach_volume", "detach_volume")
IMAGE = [("snapshot", "back"), ("register", "forward")]
SHELVE = [("stop", "back"), ("snapshot", "back"), ("register", "forward"),
          ("offload", "forward")]  # fmt: skip
UNSHELVE = [("schedule", "forward"), ("prepare", "forward"), ("cast", "forward")]
SHELVED = "shelved_offloaded"
RESCUE = [("stop", "back"), ("rescue", "forward")]
UNRESCUE = [("unrescue", "forward")]
ON_DEST = ("shv", "ushv", "rsc", "ursc")  # lab-1 is full: these stay on lab-2


def killed_run(herd: HerdCli, stop_at: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        herd.command(*args),
        env={**herd.env, "HERD_TEST_STOP_AT": stop_at},
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def expect_killed(done: subprocess.CompletedProcess[str], stop_at: str) -> None:
    assert done.returncode == KILLED, (
        f"{stop_at}: herd {' '.join(done.args[3:])} exited {done.returncode}, not by SIGKILL: "
        f"{done.stdout[-800:]} {done.stderr[-800:]}"
    )


def concurrently(jobs: list[Callable[[], None]], workers: int = 8) -> None:
    with ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(job) for job in jobs]:
            future.result()


def boot(
    herd: HerdCli, name: str, count: int, host: str, flavor: str = "m1.nano", image: str = "blank"
) -> list[str]:
    herd.ok(
        "server", "create", name, "--count", str(count), "--host", host,
        "--flavor", flavor, "--image", image,
    )  # fmt: skip
    return [f"{name}-{i}" for i in range(1, count + 1)] if count > 1 else [name]


def wait_for_console(herd: HerdCli, name: str, needle: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = herd.ok("server", "console-log", name, "--lines", "400", "--json").json()["lines"]
        if any(needle in line for line in lines):
            return
        time.sleep(1)
    raise AssertionError(f"{name} never printed {needle!r}")


def domains(lab) -> dict[str, dict[str, str]]:
    """host -> {uuid: state} from each host's own libvirtd."""
    found: dict[str, dict[str, str]] = {}
    for host in HOSTS:
        done = lab.exec_in(host, [*VIRSH, "list", "--all", "--name"], check=True)
        found[host] = {}
        for name in filter(None, (n.strip() for n in done.stdout.splitlines())):
            state = lab.exec_in(host, [*VIRSH, "domstate", name], check=True).stdout.strip()
            found[host][name.removeprefix("herd-")] = state
    return found


def leftovers(lab) -> dict[str, list[str]]:
    """host -> half-carried disks and resize stashes found there."""
    script = (
        "ls -d /var/lib/herd/images/incoming/*.migrating /var/lib/herd/instances/*.resize "
        "/var/lib/herd/images/incoming/*.volume 2>/dev/null; true"
    )
    return {h: lab.exec_in(h, ["sh", "-c", script], check=True).stdout.split() for h in HOSTS}


def claims_problems(db_path: Path) -> list[str]:
    """Claims that differ from what the servers hold: each live server its flavor on its
    host; a resize awaiting confirm also its old flavor on its source under the
    migration's UUID; nothing else."""
    with sqlite3.connect(db_path) as db:
        hosts = dict(db.execute("SELECT id, name FROM hosts"))
        want: dict[str, tuple] = {}
        for uuid, host_id, vcpus, ram, disk in db.execute(
            "SELECT uuid, host_id, vcpus, ram_mb, disk_gb FROM instances "
            "WHERE vm_state NOT IN ('deleted', 'shelved_offloaded')"
        ):
            want[uuid] = (hosts.get(host_id), vcpus, ram, disk)
        for uuid, host_id, size in db.execute("SELECT uuid, host_id, size_gb FROM volumes"):
            want[uuid] = (hosts.get(host_id), 0, 0, size)  # a volume claims its disk only
        for uuid, source_id, old in db.execute(
            "SELECT uuid, source_host_id, old_flavor FROM migrations WHERE status = 'finished'"
        ):
            flavor = json.loads(old)
            want[uuid] = (
                hosts.get(source_id),
                flavor["vcpus"],
                flavor["ram_mb"],
                flavor["disk_gb"],
            )
        have = {
            uuid: (hosts.get(host_id), vcpus, ram, disk)
            for uuid, host_id, vcpus, ram, disk in db.execute(
                "SELECT instance_uuid, host_id, vcpus, ram_mb, disk_gb FROM allocations"
            )
        }
    return [
        f"{uuid}: claims {have.get(uuid)}, holds {want.get(uuid)}"
        for uuid in sorted(set(want) | set(have))
        if want.get(uuid) != have.get(uuid)
    ]


def test_a_task_killed_at_any_step_is_finished_or_undone_by_reconcile(
    herd: HerdCli, lab, tmp_path: Path
) -> None:
    started = time.monotonic()
    # Every caster here is killed: reconcile need not give a just-finished job the
    # moments a live command would take to collect it (collect_grace).
    config = tmp_path / "config.yaml"
    config.write_text("reconcile:\n  collect_grace: 0\n")
    herd.env["HERD_CONFIG"] = str(config)
    # lab-2 takes every move's destination and the shelves and rescues: more than its
    # 2 cores at the lab's 16:1.
    with sqlite3.connect(herd.db_path) as db:
        db.execute("UPDATE hosts SET cpu_ratio = 24 WHERE name = ?", (DEST,))
    cases: list[Case] = []

    def add(kind: str, steps: list[tuple[str, str]], names: list[str]) -> None:
        cases.extend(Case(kind, s, n, e) for (s, e), n in zip(steps, names, strict=True))

    # Everything that moves lab-1 -> lab-2, booted at once (servers of a kind in one create).
    groups = {
        "mig": len(MIGRATE), "rsz": len(RESIZE), "rsu": len(RESIZE_UNDO), "conf": len(CONFIRM),
        "rev": len(REVERT), "live": len(LIVE), "rb": len(REBUILD), "att": len(ATTACH),
        "det": len(DETACH), "img": len(IMAGE), "shv": len(SHELVE), "ushv": len(UNSHELVE),
        "rsc": len(RESCUE), "ursc": len(UNRESCUE),
    }  # fmt: skip
    names: dict[str, list[str]] = {}

    def boot_group(prefix: str) -> None:
        if prefix == "det":  # a detach needs a guest that grants the PCI hot-unplug
            names[prefix] = boot(herd, prefix, groups[prefix], SOURCE, "m1.tiny", "herd-test")
        elif prefix in ON_DEST:
            names[prefix] = boot(herd, prefix, groups[prefix], DEST)
        else:
            names[prefix] = boot(herd, prefix, groups[prefix], SOURCE)

    for prefix in groups:  # one create at a time: a host takes 8 builds at once
        boot_group(prefix)
    add("migrate", MIGRATE, names["mig"])
    add("resize", RESIZE, names["rsz"])
    add("resize", RESIZE_UNDO, names["rsu"])
    add("confirm", CONFIRM, names["conf"])
    add("revert", REVERT, names["rev"])
    add("live_migrate", LIVE, names["live"])
    add("rebuild", REBUILD, names["rb"])
    add("attach_volume", ATTACH, names["att"])
    add("detach_volume", DETACH, names["det"])
    add("image_create", IMAGE, names["img"])
    add("shelve", SHELVE, names["shv"])
    add("unshelve", UNSHELVE, names["ushv"])
    add("rescue", RESCUE, names["rsc"])
    add("unrescue", UNRESCUE, names["ursc"])
    # A volume each on lab-1: attached by the killed attach; attached first, normally,
    # for the killed detach.
    carrier = names["mig"][[s for s, _ in MIGRATE].index("copy_volumes")]  # has one to carry
    volume_of = {name: f"kv-{name}" for name in names["att"] + names["det"] + [carrier]}
    for volume in volume_of.values():
        herd.ok("volume", "create", volume, "--size", "1", "--host", SOURCE)
    for name in names["det"] + [carrier]:
        herd.ok("server", "add", "volume", name, volume_of[name])
    for name in names["det"]:
        wait_for_console(herd, name, "HERD-TEST ready")
    boot_seconds = time.monotonic() - started

    # Evacuations, one server at a time (evacuate takes every server of the down host),
    # alongside the rest: each is killed before it builds anything.
    evacuations: list[Case] = []
    evac_errors: list[BaseException] = []

    def evacuate_all() -> None:
        try:
            for i, (step, expect) in enumerate(EVACUATE, 1):
                (name,) = boot(herd, f"ev{i}", 1, DOOMED)
                case = Case("evacuate", step, name, expect, host_before=DOOMED)
                lab.stop_service(DOOMED, "libvirtd")
                lab.stop_service(DOOMED, "sshd")
                try:
                    done = killed_run(herd, f"evacuate:{step}", "host", "evacuate", DOOMED)
                finally:
                    lab.start_service(DOOMED, "libvirtd")
                    lab.start_service(DOOMED, "sshd")
                expect_killed(done, f"evacuate:{step}")
                evacuations.append(case)
        except BaseException as exc:  # said in the main thread
            evac_errors.append(exc)

    evacuating = threading.Thread(target=evacuate_all)
    evacuating.start()

    # Confirm and revert need resizes waiting: done normally first, lab-1 -> lab-2.
    def resize(name: str) -> None:
        herd.ok("server", "resize", name, "--flavor", "m1.tiny", "--host", DEST, "--timeout", "1")

    concurrently([lambda n=n: resize(n) for n in names["conf"] + names["rev"]])
    # Unshelve needs servers shelved, unrescue servers rescued: done normally first.
    concurrently(
        [lambda n=n: herd.ok("server", "shelve", n, "--timeout", "1") for n in names["ushv"]]
        + [lambda n=n: herd.ok("server", "rescue", n, "--timeout", "1") for n in names["ursc"]]
    )
    for case in cases:
        if case.kind in ("confirm", "revert", "shelve", "rescue", "unrescue"):
            case.host_before = DEST
        elif case.kind == "unshelve":
            case.host_before = "none"

    commands = {
        "migrate": lambda n: ("server", "migrate", n, "--host", DEST, "--timeout", "1"),
        "resize": lambda n: ("server", "resize", n, "--flavor", "m1.tiny", *TO_DEST),
        "confirm": lambda n: ("server", "resize", n, "--confirm"),
        "revert": lambda n: ("server", "resize", n, "--revert"),
        "live_migrate": lambda n: ("server", "live-migrate", n, "--host", DEST),
        "rebuild": lambda n: ("server", "rebuild", n),
        "attach_volume": lambda n: ("server", "add", "volume", n, volume_of[n]),
        "detach_volume": lambda n: ("server", "remove", "volume", n, volume_of[n]),
        "image_create": lambda n: ("server", "image", "create", n, "--name", f"ki-{n}"),
        "shelve": lambda n: ("server", "shelve", n, "--timeout", "1"),
        "unshelve": lambda n: ("server", "unshelve", n, "--host", DEST),
        "rescue": lambda n: ("server", "rescue", n, "--timeout", "1"),
        "unrescue": lambda n: ("server", "unrescue", n),
    }

    def kill(case: Case) -> None:
        stop_at = f"{case.kind}:{case.step}"
        expect_killed(killed_run(herd, stop_at, *commands[case.kind](case.server)), stop_at)

    undo = {s for s, _ in RESIZE_UNDO}
    plain = [c for c in cases if not (c.kind == "resize" and c.step in undo)]
    concurrently([lambda c=c: kill(c) for c in plain])
    # The resize's undo steps: its spawn on lab-2 fails (libvirtd down there), and the
    # kill comes while it puts the server back on lab-1.
    lab.stop_service(DEST, "libvirtd")
    try:
        concurrently([lambda c=c: kill(c) for c in cases if c.kind == "resize" and c.step in undo])
    finally:
        lab.start_service(DEST, "libvirtd")
    evacuating.join()
    assert not evac_errors, evac_errors
    cases.extend(evacuations)
    killed_seconds = time.monotonic() - started

    report = herd.run("reconcile", "--json", timeout=900)
    reconcile_seconds = time.monotonic() - started - killed_seconds
    findings = json.loads(report.stdout)["findings"]
    recovered = {f["uuid"]: f for f in findings if f["kind"] == "orphaned_task"}

    seen = domains(lab)
    left = leftovers(lab)
    claims = claims_problems(herd.db_path)
    servers = {s["name"]: s for s in herd.servers()}
    notes = recover_events(herd.db_path)
    volumes = {v["name"]: v for v in herd.ok("volume", "list", "--json").json()}
    images = {i["name"] for i in herd.ok("image", "list", "--json").json()}
    problems: list[str] = []
    for case in cases:
        if case.kind in VOLUME_KINDS:
            problems += check_volume(
                lab, case, servers[case.server], volumes[volume_of[case.server]]
            )
        elif case.kind == "image_create":
            case.outcome = "forward" if f"ki-{case.server}" in images else "back"
        elif case.server == carrier:
            problems += check_carried(lab, case, volumes[volume_of[carrier]])
        problems += check(case, servers[case.server], seen, left, recovered, notes)
    wall = time.monotonic() - started
    matrix = render(cases, boot_seconds, killed_seconds, reconcile_seconds, wall)
    print("\n" + matrix)
    (tmp_path / "kill-matrix.txt").write_text(matrix + "\n")
    # The stale copies evacuations left on lab-3 are reaped in the same run, after recovery.
    assert not [f for f in findings if f["outcome"] == "failed"], report.stdout
    assert not claims, claims
    assert not problems, "\n".join(problems)
    ours = {servers[c.server]["uuid"] for c in cases}
    strays = [f for files in left.values() for f in files if not any(u in f for u in ours)]
    assert not strays, strays
    # The acceptance case: libvirt had moved the guest, the DB not yet; it stays there.
    (switched,) = [c for c in cases if (c.kind, c.step) == ("live_migrate", "switch")]
    assert (switched.host_after, seen[DEST].get(servers[switched.server]["uuid"])) == (
        DEST, "running",
    )  # fmt: skip


def recover_events(db_path: Path) -> dict[str, list[str]]:
    """Server uuid -> the details of its `recover` events (its action log)."""
    found: dict[str, list[str]] = {}
    with sqlite3.connect(db_path) as db:
        for uuid, details in db.execute(
            "SELECT a.instance_uuid, e.details FROM instance_action_events e "
            "JOIN instance_actions a ON a.id = e.action_id WHERE e.event = 'recover'"
        ):
            found.setdefault(uuid, []).append(details or "")
    return found


def check(
    case: Case,
    server: dict,
    seen: dict[str, dict[str, str]],
    left: dict[str, list[str]],
    recovered: dict[str, dict],
    notes: dict[str, list[str]],
) -> list[str]:
    """What is wrong with the case's server after reconcile (nothing: ``case.ok``)."""
    what = f"{case.kind}:{case.step} ({case.server})"
    uuid, host = server["uuid"], server["host"]
    case.host_after = host
    resized = server["vm_state"] == "resized"
    moved = host != case.host_before
    if case.kind == "evacuate":
        moved = host != DOOMED
    elif case.kind == "revert":
        moved = host == SOURCE and server["flavor"] == "m1.nano"
    elif case.kind == "confirm":
        moved = server["vm_state"] == "active" and server["flavor"] == "m1.tiny"
    elif case.kind == "rebuild":
        moved = server["vm_state"] == "active"
    elif case.kind in (*VOLUME_KINDS, "image_create"):
        moved = case.outcome == "forward"  # judged from the volume or the image
    elif case.kind == "shelve":
        moved = server["vm_state"] == SHELVED
    elif case.kind in ("unshelve", "unrescue"):
        moved = server["vm_state"] == "active"
    elif case.kind == "rescue":
        moved = server["vm_state"] == "rescued"
    case.outcome = "forward" if moved else "back"
    problems = []
    if case.outcome != case.expect:
        problems.append(f"{what}: went {case.outcome}, its rule says {case.rule!r}")
    if server["task_state"] is not None:
        problems.append(f"{what}: task_state {server['task_state']}")
    expected_vm = {
        ("resize", "forward"): "resized", ("shelve", "forward"): SHELVED,
        ("rescue", "forward"): "rescued",
    }.get((case.kind, case.outcome), "active")  # fmt: skip
    expected_host = {
        "back": case.host_before,
        "forward": {
            "revert": SOURCE, "rebuild": SOURCE, "attach_volume": SOURCE,
            "detach_volume": SOURCE, "image_create": SOURCE, "shelve": None,
        }.get(case.kind, DEST),
    }[case.outcome]  # fmt: skip
    if case.kind != "evacuate" and host != expected_host:
        # live_migrate:switch is the acceptance case: libvirt had moved it, the DB not yet
        problems.append(f"{what}: on {host}, expected {expected_host}")
    if case.kind == "resize":
        flavor = "m1.tiny" if case.outcome == "forward" else "m1.nano"
        if server["flavor"] != flavor:
            problems.append(f"{what}: flavor {server['flavor']}, expected {flavor}")
    if server["vm_state"] != expected_vm:
        problems.append(f"{what}: vm_state {server['vm_state']}, expected {expected_vm}")
    holders = {h: d[uuid] for h, d in seen.items() if uuid in d}
    if holders != ({} if server["vm_state"] == SHELVED else {host: "running"}):
        problems.append(f"{what}: recorded on {host}, domains {holders}")
    stash = f"/var/lib/herd/instances/{uuid}.resize"
    mine = [f for files in left.values() for f in files if uuid in f]
    allowed = [stash] if resized and stash in left.get(SOURCE, []) else []
    if resized and not allowed:
        problems.append(f"{what}: resized but no stash kept on {SOURCE}")
    if sorted(mine) != allowed:
        problems.append(f"{what}: left behind {mine}")
    finding = recovered.get(uuid)
    if finding is None or finding["outcome"] != "fixed":
        problems.append(f"{what}: reconcile's finding for it: {finding}")
    events = notes.get(uuid, [])
    if not any(f"{case.kind} found at step {case.step}" in e for e in events):
        problems.append(f"{what}: no recover event names its step: {events}")
    case.ok = not problems
    return problems


def check_volume(lab, case: Case, server: dict, volume: dict) -> list[str]:
    """An attach finished forward has the volume in-use by the server and its disk in
    the domain's definition; a detach, the volume available and the disk gone. Sets
    ``case.outcome`` for check()."""
    what = f"{case.kind}:{case.step} ({case.server})"
    domblk = [*VIRSH, "domblklist", f"herd-{server['uuid']}", "--inactive"]
    listed = lab.exec_in(SOURCE, domblk, check=True).stdout
    has_disk = str(volume["path"]) in listed
    if case.kind == "attach_volume":
        forward = (volume["status"], volume["server"], has_disk) == ("in-use", case.server, True)
    else:
        forward = (volume["status"], volume["server"], has_disk) == ("available", None, False)
    case.outcome = "forward" if forward else "back"
    if forward or case.expect != "forward":
        return []
    return [f"{what}: volume {volume['name']} is {volume['status']} on {volume['server']}, "
            f"disk in the definition: {has_disk}"]  # fmt: skip


def check_carried(lab, case: Case, volume: dict) -> list[str]:
    """A migration killed while it carried a volume, rolled back: the volume is still
    the source's, its file there, no copy of it on the destination."""
    what = f"{case.kind}:{case.step} ({case.server})"
    problems = []
    if (volume["host"], volume["status"]) != (SOURCE, "in-use"):
        problems.append(
            f"{what}: volume {volume['name']} is {volume['status']} on {volume['host']}"
        )
    if lab.exec_in(SOURCE, ["test", "-f", str(volume["path"])]).returncode != 0:
        problems.append(f"{what}: the volume's file {volume['path']} is gone from {SOURCE}")
    copy = f"/var/lib/herd/volumes/{volume['uuid']}.qcow2"
    if lab.exec_in(DEST, ["test", "-e", copy]).returncode == 0:
        problems.append(f"{what}: a copy of the volume was left on {DEST}")
    return problems


def render(cases: list[Case], boot: float, killed: float, recon: float, wall: float) -> str:
    rows = [("kind", "step", "expect", "outcome", "before", "after", "ok", "rule")]
    rows += [
        (c.kind, c.step, c.expect, c.outcome, c.host_before, str(c.host_after),
         "ok" if c.ok else "FAIL", c.rule)
        for c in cases
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)) + "  " + r[-1]
             for r in rows]  # fmt: skip
    lines.append(
        f"{len(cases)} kills; booted in {boot:.0f} s, all killed by {killed:.0f} s, "
        f"one reconcile {recon:.0f} s, checked by {wall:.0f} s"
    )
    return "\n".join(lines)
