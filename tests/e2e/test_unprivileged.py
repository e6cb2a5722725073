"""The lab's non-root host: lab-2, reached as `herd-lab` (groups libvirt and kvm, no root
login), does everything a root host does; and `herd host check` names what a host
whose user is not set up lacks, over plain SSH, where the agent itself cannot start."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from orchestrator.lab import users
from tests.e2e.herdcli import GuestConsole, HerdCli, domain_state
from tests.e2e.test_guest import guest_report

pytestmark = pytest.mark.e2e

HOST = "lab-2"
VIRSH = ["virsh", "-c", "qemu:///system"]


def ssh(lab, user: str, command: str) -> subprocess.CompletedProcess[str]:
    info = lab.info()
    argv = info.ssh_argv(info.host(HOST), command)
    argv[argv.index(f"herd-lab@{info.host(HOST).address}")] = f"{user}@{info.host(HOST).address}"
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def boot(herd: HerdCli, name: str) -> dict:
    herd.ok("server", "create", name, "--flavor", "m1.tiny", "--image", "herd-test", "--host", HOST)
    return herd.server(name)


def test_lab_2_is_reached_as_herd_lab_in_libvirt_and_kvm_and_refuses_root(lab) -> None:
    inventory = yaml.safe_load(lab.info().inventory.read_text())
    users_of = {h["name"]: h["ssh"]["user"] for h in inventory["hosts"]}
    assert users_of == {"lab-1": "root", "lab-2": "herd-lab", "lab-3": "root"}
    me = ssh(lab, "herd-lab", "id -un; id -Gn; test -w /var/lib/herd && echo writable")
    assert me.returncode == 0, me.stderr
    name, groups, writable = me.stdout.split("\n")[:3]
    assert name == "herd-lab" and {"libvirt", "kvm"} <= set(groups.split())
    assert "sudo" not in groups.split() and writable == "writable"
    refused = ssh(lab, "root", "true")
    assert refused.returncode == 255 and "Permission denied" in refused.stderr


def test_a_servers_whole_life_on_the_non_root_host_and_migrations_both_ways(
    herd: HerdCli, lab, tmp_path: Path
) -> None:
    first = boot(herd, "np-1")
    assert first["host"] == HOST and first["vm_state"] == "active"
    # The console log virtlogd writes is read back by the agent as herd-lab.
    assert guest_report(herd, "np-1")["instance-id"] == [first["uuid"]]
    # A second guest of the same image: the cached base a running guest holds (libvirt
    # gave it to libvirt-qemu:kvm) is still read, through group kvm.
    second = boot(herd, "np-2")
    assert second["vm_state"] == "active"
    inst = f"/var/lib/herd/instances/{first['uuid']}"
    owners = lab.exec_in(
        HOST, ["stat", "-c", "%U %a", inst, f"{inst}/disk", f"{inst}/console.log"], check=True
    ).stdout.split("\n")  # fmt: skip
    assert owners[:3] == ["herd-lab 755", "libvirt-qemu 640", "herd-lab 600"]

    herd.ok("server", "stop", "np-1")
    assert domain_state(lab, HOST, first["uuid"]) == "shut off"
    herd.ok("server", "start", "np-1")
    assert domain_state(lab, HOST, first["uuid"]) == "running"

    console = GuestConsole(herd, "np-1")  # virsh console as herd-lab, over the rw socket
    console.ask("echo answer-$((6 * 7))", b"answer-42")
    assert console.detach()[0] == 0

    # Cold migration away from the non-root host and back to it: the disk leaves as
    # herd-lab's file again (libvirt restored its owner at stop) and arrives as one.
    herd.ok("server", "migrate", "np-1", "--host", "lab-1")
    assert herd.server("np-1")["host"] == "lab-1"
    assert domain_state(lab, HOST, first["uuid"]) is None
    herd.ok("server", "migrate", "np-1", "--host", HOST)
    assert herd.server("np-1")["host"] == HOST
    assert guest_report(herd, "np-1")["instance-id"] == [first["uuid"]]

    # Live migration to the root host and back: libvirt's tunnel runs as herd-lab.
    herd.ok("server", "live-migrate", "np-2", "--host", "lab-1")
    assert herd.server("np-2")["host"] == "lab-1"
    assert domain_state(lab, "lab-1", second["uuid"]) == "running"
    herd.ok("host", "refresh")
    herd.ok("server", "live-migrate", "np-2", "--host", HOST)
    assert herd.server("np-2")["host"] == HOST
    assert domain_state(lab, HOST, second["uuid"]) == "running"
    assert domain_state(lab, "lab-1", second["uuid"]) is None

    # Reconcile repairs on it: a domain stopped behind herd's back is started again.
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump({"reconcile": {"unknown_domains": "noop", "power_state": "restore"}})
    )
    herd.env["HERD_CONFIG"] = str(config)
    lab.exec_in(HOST, [*VIRSH, "destroy", f"herd-{second['uuid']}"], check=True)
    result = herd.run("reconcile", "--json")
    assert result.code == 1, result.stderr
    assert [(f["kind"], f["server"], f["outcome"]) for f in result.json()["findings"]] == [
        ("power_state", "np-2", "fixed")
    ]
    assert domain_state(lab, HOST, second["uuid"]) == "running"

    herd.ok("server", "delete", "np-1", "np-2")
    for server in (first, second):
        assert domain_state(lab, HOST, server["uuid"]) is None
        gone = lab.exec_in(HOST, ["test", "-e", f"/var/lib/herd/instances/{server['uuid']}"])
        assert gone.returncode == 1


def test_host_check_names_a_user_outside_libvirt_and_an_unwritable_agent_dir(
    herd: HerdCli, lab
) -> None:
    clean = herd.run("host", "check", HOST)
    assert clean.code == 0, clean.stdout + clean.stderr
    assert "qemu:///system answers herd-lab" in clean.stdout

    host = lab.info().host(HOST)
    agent_dir = host.path("herd")  # /var/lib/herd inside lab-2
    users.set_libvirt_member(host, False)
    agent_dir.chmod(0o555)
    try:
        broken = herd.run("host", "check", HOST)
        # The agent cannot start there now; the check still reports, over plain SSH.
        down = herd.run("host", "refresh", HOST)
        as_json = herd.run("host", "check", HOST, "--json")
    finally:
        agent_dir.chmod(0o755)
        users.set_libvirt_member(host, True)
    assert broken.code == 1, broken.stderr
    lines = broken.stdout.splitlines()
    assert len(lines) == 2, broken.stdout
    assert lines[0].startswith("lab-2: herd-lab is not in group libvirt, which the libvirt socket")
    assert lines[0].endswith(
        "fix: usermod -aG libvirt herd-lab (as root; herd's next login picks it up)"
    )
    assert lines[1] == (
        "lab-2: agent dir /var/lib/herd is not writable by herd-lab; "
        "fix: chown -R herd-lab: /var/lib/herd (as root)"
    )
    assert broken.stderr.strip() == "herd: error: 2 problem(s) on lab-2"
    assert down.code == 6
    (report,) = as_json.json()
    assert report["ok"] is False
    assert sorted(c["check"] for c in report["checks"] if not c["ok"]) == ["agent dir", "libvirt"]

    mended = herd.run("host", "check", HOST)
    assert mended.code == 0, mended.stdout
    herd.ok("host", "refresh", HOST)
