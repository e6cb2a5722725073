"""A lab's root, addresses and prerequisites: what is accepted, what is refused and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import LabError
from orchestrator.lab import Lab, checks
from orchestrator.lab.lab import LabState, lab_hosts, resolve_settings

ROOT = Path("/var/lib/herd-lab")


def test_a_new_lab_uses_the_defaults() -> None:
    assert resolve_settings(ROOT, None, None, None) == ("198.18.100.1", 2222, False)


def test_a_new_lab_takes_explicit_settings() -> None:
    assert resolve_settings(ROOT, None, "198.18.101.1", 2022, True) == (
        "198.18.101.1",
        2022,
        True,
    )


def test_an_existing_lab_keeps_what_it_was_made_with() -> None:
    recorded = LabState("198.18.101.1", 2200, 3, bastion=True)
    assert resolve_settings(ROOT, recorded, None, None) == ("198.18.101.1", 2200, True)
    same = resolve_settings(ROOT, recorded, "198.18.101.1", 2200, True)
    assert same == ("198.18.101.1", 2200, True)


@pytest.mark.parametrize(
    ("made_with", "asked", "says"),
    [
        pytest.param(False, True, "made without a bastion; .* make it with one", id="add"),
        pytest.param(True, False, "made behind a bastion; .* make it without one", id="drop"),
    ],
)
def test_a_lab_keeps_its_bastion_or_its_lack_of_one(
    made_with: bool, asked: bool, says: str
) -> None:
    with pytest.raises(LabError, match=says):
        resolve_settings(ROOT, LabState("198.18.101.1", 2200, 3, made_with), None, None, asked)


@pytest.mark.parametrize(
    ("base", "port", "says"),
    [
        pytest.param("198.18.100.1", None, "uses base address 198.18.101.1", id="base"),
        pytest.param(None, 2222, "uses ssh port 2200", id="port"),
    ],
)
def test_an_existing_lab_is_not_moved_silently(
    base: str | None, port: int | None, says: str
) -> None:
    with pytest.raises(LabError, match=says):
        resolve_settings(ROOT, LabState("198.18.101.1", 2200, 3), base, port)


def test_a_lab_an_older_herd_made_on_loopback_must_be_taken_down_first() -> None:
    with pytest.raises(
        LabError, match=r"older herd on loopback address 127\.0\.100\.1; `herd lab down"
    ):
        resolve_settings(ROOT, LabState("127.0.100.1", 2222, 3), None, None)


@pytest.mark.parametrize("bastion", [False, True])
def test_lab_state_survives_its_json(bastion: bool) -> None:
    state = LabState("198.18.101.1", 2222, 4, bastion)
    assert LabState.from_json(state.to_json()) == state


def test_a_lab_recorded_before_bastions_existed_has_none() -> None:
    old = '{"format": 1, "base_address": "198.18.101.1", "ssh_port": 2222, "hosts": 3}'
    assert LabState.from_json(old) == LabState("198.18.101.1", 2222, 3, False)


def test_hosts_behind_a_bastion_are_reached_from_its_namespace() -> None:
    hosts = lab_hosts(ROOT, "198.18.104.1", 2222, 2, bastion=True)
    assert {h.reached_from for h in hosts} == {"herd104-bastion"}
    assert {h.reached_from for h in lab_hosts(ROOT, "198.18.104.1", 2222, 2)} == {None}


def test_hosts_are_named_from_one_with_a_directory_each() -> None:
    hosts = lab_hosts(ROOT, "198.18.100.1", 2222, 2)
    assert [(h.name, h.address, h.port, h.dir) for h in hosts] == [
        ("lab-1", "198.18.100.1", 2222, ROOT / "lab-1"),
        ("lab-2", "198.18.100.2", 2222, ROOT / "lab-2"),
    ]


@pytest.mark.parametrize(
    "root",
    ["/", "/run/lab", "/root/lab", "/var/lib/libvirt/lab", "/etc/libvirt", "/var/lib/herd/x"],
)
def test_a_root_that_the_namespaces_would_hide_is_refused(root: str) -> None:
    with pytest.raises(LabError, match="lab root"):
        checks.lab_root(root)


@pytest.mark.parametrize("root", ["/tmp/my lab", '/tmp/la"b', "/tmp/lab#1"])
def test_a_root_that_config_files_would_need_to_quote_is_refused(root: str) -> None:
    with pytest.raises(LabError, match="not usable"):
        checks.lab_root(root)


def test_a_relative_root_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert checks.lab_root("lab") == tmp_path.resolve() / "lab"


def test_missing_accounts_are_named_with_the_commands_that_create_them_in_order() -> None:
    message = checks.accounts_error([("group", "kvm"), ("user", "libvirt-qemu")])
    assert "missing group kvm, user libvirt-qemu" in message
    assert message.endswith(
        "groupadd --system kvm && useradd --system --gid kvm --home-dir /var/lib/libvirt "
        "--no-create-home --shell /usr/sbin/nologin libvirt-qemu"
    )
    assert "\n" not in message


def test_missing_tools_are_named_with_their_packages() -> None:
    message = checks.tools_error(["virsh", "sshd"])
    assert message == (
        "the lab needs virsh, sshd; install them with: "
        "apt-get install libvirt-clients openssh-server"
    )


def test_lab_actions_need_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    lab = Lab(tmp_path / "lab")
    for action in (lambda: lab.up(1), lab.status, lab.down, lambda: lab.exec_in("lab-1", ["true"])):
        with pytest.raises(LabError, match="needs root"):
            action()
