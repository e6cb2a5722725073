"""The inventory's ssh section: what it leaves out stays unset, so the OpenSSH client
config can decide it; `config` and `proxy_jump` are checked where they are written."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import InvalidInput
from orchestrator.inventory import load_inventory
from orchestrator.inventory.apply import host_values


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(text: str) -> Path:
    path = Path("inventory.yaml")
    path.write_text(text, encoding="utf-8")
    return path


def test_a_host_without_ssh_settings_leaves_every_one_to_the_ssh_config(in_tmp: Path) -> None:
    (host,) = load_inventory(write("hosts:\n  - {name: hv1, address: hv1.mgmt}\n")).hosts
    values = host_values(host)
    assert [values[k] for k in ("ssh_user", "ssh_port", "ssh_key", "ssh_proxy_jump")] == [None] * 4
    assert values["ssh_config"] is None


def test_config_is_a_path_beside_the_inventory_and_proxy_jump_is_kept_as_written(
    in_tmp: Path,
) -> None:
    (host,) = load_inventory(
        write(
            "defaults:\n  ssh: {config: ssh/fleet.conf, proxy_jump: 'ops@bastion:2222, inner'}\n"
            "hosts:\n  - {name: hv1, address: 10.20.0.11, ssh: {user: herd}}\n"
        )
    ).hosts
    values = host_values(host)
    assert values["ssh_config"] == str(in_tmp / "ssh" / "fleet.conf")
    assert values["ssh_proxy_jump"] == "ops@bastion:2222, inner"
    assert (values["ssh_user"], values["ssh_port"]) == ("herd", None)


def test_a_proxy_jump_openssh_would_not_read_is_refused_at_its_line(in_tmp: Path) -> None:
    with pytest.raises(InvalidInput) as caught:
        load_inventory(
            write("hosts:\n  - name: hv1\n    address: 10.0.0.1\n    ssh: {proxy_jump: 'a@@b'}\n")
        )
    assert str(caught.value).startswith(
        "inventory.yaml:4: hosts[0] (hv1).ssh.proxy_jump: 'a@@b' is not [user@]host[:port]"
    )
