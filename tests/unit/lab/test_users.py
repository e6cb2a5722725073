"""The lab's account files for its hosts' namespaces, checked as data."""

from __future__ import annotations

from orchestrator.lab import users

PASSWD = "root:x:0:0:root:/root:/bin/bash\nlibvirt-qemu:x:999:107::/var/lib/libvirt:/bin/false\n"
GROUP = "root:x:0:\nkvm:x:107:\nlibvirt-qemu:x:995:\n"
IDS = users.Ids(uid=2000, gid=2000, libvirt_gid=2001)


def test_ids_are_ones_no_account_of_the_machine_uses() -> None:
    ids = users.choose_ids(PASSWD + "alice:x:2000:2000::/home/alice:/bin/sh\n", GROUP)
    assert ids.uid == 2001
    assert ids.gid == 2000 and ids.libvirt_gid == 2001


def test_a_machine_libvirt_group_keeps_its_gid() -> None:
    assert users.choose_ids(PASSWD, GROUP + "libvirt:x:120:bob\n").libvirt_gid == 120


def test_passwd_keeps_the_machines_accounts_and_adds_herd_lab_with_a_home_in_home() -> None:
    text = users.passwd_text(PASSWD + "herd-lab:x:5:5::/nowhere:/bin/false\n", IDS)
    assert text.startswith(PASSWD)
    assert [line.split(":")[0] for line in text.splitlines()].count("herd-lab") == 1
    assert "herd-lab:x:2000:2000:herd lab unprivileged user:/home/herd-lab:/bin/sh\n" in text


def test_herd_lab_is_in_libvirt_and_kvm_and_the_machines_libvirt_members_stay() -> None:
    text = users.group_text(GROUP + "libvirt:x:120:bob\n", IDS)
    lines = text.splitlines()
    assert "kvm:x:107:herd-lab" in lines
    assert "libvirt:x:2001:bob,herd-lab" in lines
    assert "herd-lab:x:2000:" in lines
    assert "root:x:0:" in lines


def test_a_host_can_be_broken_by_taking_herd_lab_out_of_libvirt_only() -> None:
    lines = users.group_text(GROUP, IDS, member=False).splitlines()
    assert "libvirt:x:2001:" in lines
    assert "kvm:x:107:herd-lab" in lines


def test_only_lab_2_logs_in_as_herd_lab() -> None:
    assert [users.ssh_user(f"lab-{i}") for i in (1, 2, 3)] == ["root", "herd-lab", "root"]
