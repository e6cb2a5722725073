"""`herd host check`'s rules, applied to what its script prints."""

from __future__ import annotations

import subprocess

from orchestrator import host_check
from orchestrator.rpc.ssh import HostTarget

TARGET = HostTarget(name="hv1", address="127.0.0.1", user="herd", agent_dir="/var/lib/herd")

GOOD = """\
user=herd
groups=herd libvirt kvm
python=3.11
qemu_img=/usr/bin/qemu-img
virsh=yes
libvirt=ok
socket=770 libvirt /run/libvirt/libvirt-sock
qemu_user=libvirt-qemu
qemu_group=kvm
qemu_user_groups=kvm libvirt-qemu
dir=exists
dir_writable=yes
free_kb=83886080
path=755 herd herd /var/lib/herd
path=755 root root /var/lib
path=755 root root /var
path=755 root root /
"""


def problems(output: str, bridges: list[str] | None = None, **kw: int) -> dict[str, str]:
    findings = host_check.evaluate(host_check.parse(output), TARGET, bridges or [], **kw)
    return {f.check: f"{f.detail} | {f.fix}" for f in findings if not f.ok}


def without(output: str, *keys: str) -> str:
    return "".join(line + "\n" for line in output.splitlines() if line.split("=")[0] not in keys)


def test_a_prepared_host_has_no_problems() -> None:
    assert problems(GOOD) == {}


def test_a_user_outside_the_socket_group_is_told_to_join_it() -> None:
    output = (
        without(GOOD, "groups", "libvirt") + "groups=herd kvm\nlibvirt_error=Permission denied\n"
    )
    found = problems(output)
    assert list(found) == ["libvirt"]
    assert "herd is not in group libvirt" in found["libvirt"]
    assert "usermod -aG libvirt herd" in found["libvirt"]


def test_an_agent_dir_the_user_cannot_write_is_named_with_its_fix() -> None:
    found = problems(without(GOOD, "dir_writable"))
    assert list(found) == ["agent dir"]
    assert (
        "/var/lib/herd is not writable by herd | chown -R herd: /var/lib/herd" in found["agent dir"]
    )


def test_a_subdirectory_left_by_a_root_agent_is_named() -> None:
    found = problems(GOOD + "unwritable=/var/lib/herd/images\n")
    assert "/var/lib/herd/images is not writable" in found["agent dir"]


def test_a_missing_agent_dir_is_fine_if_the_user_may_create_it_and_a_problem_if_not() -> None:
    missing = without(GOOD, "dir", "dir_writable") + "dir=missing\nparent=/var/lib\n"
    assert "install -d -o herd -g herd -m 0755 /var/lib/herd" in problems(missing)["agent dir"]
    assert problems(missing + "parent_writable=yes\n") == {}


def test_missing_qemu_img_and_an_old_or_missing_python_are_problems() -> None:
    found = problems(without(GOOD, "qemu_img", "python") + "python=3.7\n")
    assert "apt-get install qemu-utils" in found["qemu-img"]
    assert "python3 is 3.7" in found["python3"]
    assert "no python3" in problems(without(GOOD, "python"))["python3"]


def test_free_disk_below_the_threshold_is_a_problem() -> None:
    found = problems(GOOD, min_free_gb=100)
    assert "80.0 GiB free on /var/lib/herd, below 100 GiB" in found["free disk"]


def test_a_directory_qemu_cannot_traverse_is_named() -> None:
    output = GOOD.replace("path=755 root root /var/lib\n", "path=750 root root /var/lib\n")
    found = problems(output)
    assert "libvirt-qemu cannot traverse /var/lib" in found["QEMU traversal"]
    assert "chmod o+x /var/lib" in found["QEMU traversal"]


def test_qemus_group_is_enough_to_traverse() -> None:
    output = GOOD.replace("path=755 herd herd /var/lib/herd", "path=750 herd kvm /var/lib/herd")
    assert problems(output) == {}


def test_a_non_root_user_outside_qemus_group_is_told_to_join_it() -> None:
    found = problems(without(GOOD, "groups") + "groups=herd libvirt\n")
    assert "usermod -aG kvm herd" in found["group kvm"]


def test_root_needs_neither_group() -> None:
    output = without(GOOD, "user", "groups") + "user=root\ngroups=root\n"
    assert problems(output) == {}


def test_a_missing_bridge_is_named_and_a_present_one_is_fine() -> None:
    found = problems(GOOD + "bridge=br-prov\nnobridge=br-lan\n", ["br-prov", "br-lan"])
    assert list(found) == ["bridge br-lan"]
    assert "no bridge br-lan" in found["bridge br-lan"]


def test_the_script_runs_in_a_posix_shell_and_reports_this_machine() -> None:
    done = subprocess.run(
        ["sh", "-c", host_check.command(TARGET, ["no-such-br0"])],
        capture_output=True,
        text=True,
        timeout=30,
    )
    facts = host_check.parse(done.stdout)
    assert facts["user"] and facts["nobridge"] == ["no-such-br0"]
    assert facts["path"][-1].endswith(" /")
