"""What the lab writes for sshd, libvirt and the inventory, checked as data."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from orchestrator.lab import render
from orchestrator.lab.lab import lab_hosts
from orchestrator.lab.model import LabInfo
from orchestrator.rpc.ssh_config import parse_proxy_jump

ROOT = Path("/var/lib/herd-lab")


def lab_info(count: int = 2) -> LabInfo:
    return LabInfo(ROOT, "198.18.100.1", 2222, lab_hosts(ROOT, "198.18.100.1", 2222, count))


def sshd_settings(text: str) -> dict[str, str]:
    settings = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            key, value = line.split(None, 1)
            assert key not in settings, f"{key} set twice"
            settings[key] = value
    return settings


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("ListenAddress", "198.18.100.2"),
        ("Port", "2222"),
        ("HostKey", "/var/lib/herd-lab/lab-2/ssh/ssh_host_ed25519_key"),
        ("AuthorizedKeysFile", "/var/lib/herd-lab/id_ed25519.pub"),
        ("PidFile", "/var/lib/herd-lab/lab-2/run/sshd.pid"),
        ("PermitRootLogin", "prohibit-password"),
        ("PasswordAuthentication", "no"),
        ("KbdInteractiveAuthentication", "no"),
        ("UsePAM", "no"),
        ("Subsystem", "sftp internal-sftp"),
    ],
)
def test_sshd_config_of_a_root_host_sets(key: str, value: str) -> None:
    host = dataclasses.replace(lab_info().hosts[1], user="root")
    settings = sshd_settings(render.sshd_config(host, ROOT / "id_ed25519.pub"))
    assert settings[key] == value


def test_the_non_root_lab_host_lets_only_its_user_in_with_its_own_authorized_keys() -> None:
    host = lab_info().hosts[1]
    assert (host.name, host.user) == ("lab-2", "herd-lab")
    settings = sshd_settings(render.sshd_config(host, ROOT / "id_ed25519.pub"))
    assert settings["PermitRootLogin"] == "no"
    assert settings["AllowUsers"] == "herd-lab"
    assert settings["AuthorizedKeysFile"] == ".ssh/authorized_keys"  # in herd-lab's home


def test_libvirtds_socket_is_debians_group_libvirt_0770_without_polkit() -> None:
    conf = render.libvirtd_conf()
    for line in (
        'unix_sock_group = "libvirt"',
        'unix_sock_rw_perms = "0770"',
        'auth_unix_rw = "none"',
    ):
        assert line in conf


def test_sshd_listens_only_on_its_own_loopback_address() -> None:
    text = render.sshd_config(lab_info().hosts[0], ROOT / "id_ed25519.pub")
    assert [line for line in text.splitlines() if line.startswith("ListenAddress")] == [
        "ListenAddress 198.18.100.1"
    ]


def test_libvirt_daemons_log_into_the_hosts_log_dir() -> None:
    assert 'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"' in render.libvirtd_conf()
    assert 'log_outputs = "3:file:/var/log/libvirt/virtlogd.log"' in render.virtlogd_conf()


def test_qemu_runs_as_debians_user_without_cgroups() -> None:
    conf = render.qemu_conf()
    assert 'user = "libvirt-qemu"' in conf
    assert 'group = "kvm"' in conf
    assert "cgroup_controllers = [ ]" in conf


def test_known_hosts_line_names_the_address_and_port_and_drops_the_key_comment() -> None:
    line = render.known_hosts_line("198.18.100.1", 2222, "ssh-ed25519 AAAAC3Nza root@b\n", "lab-1")
    assert line == "[198.18.100.1]:2222 ssh-ed25519 AAAAC3Nza lab-1"


def test_known_hosts_line_on_port_22_is_the_bare_address_as_openssh_looks_it_up() -> None:
    line = render.known_hosts_line("198.18.100.253", 22, "ssh-ed25519 AAAAC3Nza x", "bastion")
    assert line == "198.18.100.253 ssh-ed25519 AAAAC3Nza bastion"


def test_known_hosts_file_has_one_line_per_host() -> None:
    assert render.known_hosts(["a", "b"]) == "a\nb\n"


def test_inventory_is_exactly_the_agreed_schema() -> None:
    loaded = yaml.safe_load(render.inventory(lab_info(1)))
    assert loaded == {
        "hosts": [
            {
                "name": "lab-1",
                "address": "198.18.100.1",
                "ssh": {
                    "user": "root",
                    "port": 2222,
                    "key": "/var/lib/herd-lab/id_ed25519",
                    "known_hosts": "/var/lib/herd-lab/known_hosts",
                },
                "libvirt_uri": "qemu:///system",
                "agent_dir": "/var/lib/herd",
                "labels": {"lab": "true"},
                "availability_zone": "lab",
                "image_source_dirs": ["/var/lib/herd-lab/host-images"],
            }
        ],
        "flavors": [
            {"name": "m1.nano", "vcpus": 1, "ram_mb": 64, "disk_gb": 1},
            {"name": "m1.tiny", "vcpus": 1, "ram_mb": 128, "disk_gb": 1},
            {"name": "m1.small", "vcpus": 1, "ram_mb": 256, "disk_gb": 2},
        ],
        "images": [
            {
                "name": "blank",
                "source": "/var/lib/herd-lab/images/blank.qcow2",
                "format": "qcow2",
                "properties": {"architecture": "x86_64"},
            },
            {
                "name": "herd-test-kernel",
                "source": "/var/lib/herd-lab/images/herd-test-vmlinuz",
                "format": "aki",
            },
            {
                "name": "herd-test-ramdisk",
                "source": "/var/lib/herd-lab/images/herd-test-initrd.img",
                "format": "ari",
            },
            {
                "name": "herd-test",
                "source": "/var/lib/herd-lab/images/herd-test-root.qcow2",
                "format": "qcow2",
                "min_ram_mb": 128,
                "properties": {
                    "architecture": "x86_64",
                    "kernel_id": "herd-test-kernel",
                    "ramdisk_id": "herd-test-ramdisk",
                    "os_command_line": "console=ttyS0 panic=-1 quiet",
                },
            },
        ],
        "networks": [
            {
                # The default: bridged on every host's br-provider, no gateway (nothing
                # routes off the lab), the root namespace's .254 outside the pool.
                "name": "provider",
                "type": "bridge",
                "bridge": "br-provider",
                "subnet": "198.19.100.0/24",
                "allocation_pool": {"start": "198.19.100.10", "end": "198.19.100.200"},
                "default": True,
            },
            {
                "name": "lab-net",
                "type": "user",
                "subnet": "10.0.2.0/24",
                "gateway": "10.0.2.2",
                "allocation_pool": {"start": "10.0.2.100", "end": "10.0.2.250"},
                "dns": ["10.0.2.3"],
            },
        ],
    }


def test_inventory_lists_every_host_in_order() -> None:
    loaded = yaml.safe_load(render.inventory(lab_info(3)))
    assert [(h["name"], h["address"]) for h in loaded["hosts"]] == [
        ("lab-1", "198.18.100.1"),
        ("lab-2", "198.18.100.2"),
        ("lab-3", "198.18.100.3"),
    ]


def test_inventory_starts_with_a_comment_header_and_keeps_the_lab_label_a_string() -> None:
    text = render.inventory(lab_info(1))
    assert text.startswith("# herd lab inventory")
    assert "herd inventory apply /var/lib/herd-lab/inventory.yaml" in text.splitlines()[1]
    assert "labels: {lab: 'true'}" in text
    assert "ssh: {user: root, port: 2222," in text


def test_the_inventory_logs_in_to_lab_2_as_herd_lab_and_to_the_others_as_root() -> None:
    loaded = yaml.safe_load(render.inventory(lab_info(3)))
    assert [h["ssh"]["user"] for h in loaded["hosts"]] == ["root", "herd-lab", "root"]
    assert {h["agent_dir"] for h in loaded["hosts"]} == {"/var/lib/herd"}  # live migration


def test_behind_a_bastion_every_host_is_reached_with_proxy_jump_and_the_lab_key() -> None:
    hosts = lab_hosts(ROOT, "198.18.104.1", 2222, 2, bastion=True)
    info = LabInfo(ROOT, "198.18.104.1", 2222, hosts, bastion=True)
    document = render.inventory_document(info)
    jumps = {host["ssh"]["proxy_jump"] for host in document["hosts"]}
    assert jumps == {"nobody@198.18.104.253:2222"}
    assert "proxy_jump" not in render.inventory_document(lab_info(2))["hosts"][0]["ssh"]
    # What the inventory reads it back as: one jump host, checked like any value.
    assert [str(j) for j in parse_proxy_jump(jumps.pop())] == ["nobody@198.18.104.253:2222"]
