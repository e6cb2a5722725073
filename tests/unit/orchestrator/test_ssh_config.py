"""The route to a host as ~/.ssh/config (or the inventory's ssh.config) describes it:
what the inventory sets wins, the config decides the rest, herd's defaults come last;
ProxyJump becomes jump hosts reached in order; a bad config is one line per host."""

from __future__ import annotations

import getpass
from pathlib import Path

import pytest

from orchestrator.errors import HostUnreachable, SshConfigError
from orchestrator.rpc.ssh import HostTarget
from orchestrator.rpc.ssh_config import Jump, parse_proxy_jump, route

CONFIG = """\
Host hv1 hv1.example
    HostName 198.51.100.11
    User ops
    Port 2200
    IdentityFile ~/.ssh/fleet
    ProxyJump bastion
    ServerAliveInterval 5
    ServerAliveCountMax 7

Host bastion
    HostName 203.0.113.7
    User jumper
    Port 2022
    IdentityFile %d/.ssh/bastion_key

Host outer
    HostName 203.0.113.1

Host inner
    ProxyJump outer
"""


@pytest.fixture
def ssh_config(home: Path) -> Path:
    path = home / ".ssh" / "config"
    path.write_text(CONFIG)
    return path


def hops(**fields: object) -> list[tuple[str | None, str, int | None, str | None]]:
    target = HostTarget(**{"name": "hv1", "address": "hv1", **fields})  # type: ignore[arg-type]
    return [(hop.jump, hop.address, hop.port, hop.user) for hop in route(target)]


def test_the_config_decides_what_the_inventory_leaves_out(ssh_config: Path, home: Path) -> None:
    *_, host = route(HostTarget(name="hv1", address="hv1"))
    assert (host.address, host.port, host.user) == ("198.51.100.11", 2200, "ops")
    assert host.identity_files == ("~/.ssh/fleet",)
    assert (host.keepalive_interval, host.keepalive_count_max) == (5, 7)
    assert host.jump is None and host.name == "hv1"


def test_what_the_inventory_sets_wins_over_the_config(ssh_config: Path, tmp_path: Path) -> None:
    *_, host = route(
        HostTarget(name="hv1", address="hv1", port=22, user="root", key=str(tmp_path / "k"))
    )
    assert (host.address, host.port, host.user) == ("198.51.100.11", 22, "root")
    assert host.identity_files == ()  # the inventory's key is the only one


def test_without_config_herds_defaults_apply() -> None:
    assert hops() == [(None, "hv1", 22, "root")]


def test_proxy_jump_from_the_config_is_a_jump_host_with_its_own_settings(
    ssh_config: Path, home: Path
) -> None:
    jump, host = route(HostTarget(name="hv1", address="hv1"))
    assert (jump.jump, jump.address, jump.port, jump.user) == (
        "bastion",
        "203.0.113.7",
        2022,
        "jumper",
    )
    assert jump.identity_files == (f"{home}/.ssh/bastion_key",)  # %d expanded
    assert jump.hop == "jump host bastion (203.0.113.7:2022)"
    assert host.address == "198.51.100.11"


def test_a_jump_host_without_a_user_is_reached_as_the_local_user(home: Path) -> None:
    assert hops(proxy_jump="203.0.113.9")[0] == (
        "203.0.113.9",
        "203.0.113.9",
        22,
        getpass.getuser(),
    )


def test_a_jump_host_without_an_identity_file_is_offered_the_hosts_key(
    ssh_config: Path, tmp_path: Path
) -> None:
    jump, _ = route(HostTarget(name="hv1", address="x", key="/k", proxy_jump="outer"))
    assert jump.key == "/k" and jump.identity_files == ()


def test_the_inventorys_proxy_jump_wins_and_none_turns_the_configs_off(
    ssh_config: Path,
) -> None:
    assert [h[0] for h in hops(proxy_jump="ops@203.0.113.9:2222")] == [
        "ops@203.0.113.9:2222",
        None,
    ]
    assert hops(proxy_jump="ops@203.0.113.9:2222")[0][1:] == ("203.0.113.9", 2222, "ops")
    assert hops(proxy_jump="none") == [(None, "198.51.100.11", 2200, "ops")]


def test_a_chain_is_reached_in_order_and_the_first_jumps_own_proxy_jump_is_followed(
    ssh_config: Path,
) -> None:
    assert [h[0] for h in hops(proxy_jump="inner,bastion")] == ["outer", "inner", "bastion", None]


def test_a_proxy_jump_loop_is_one_line_naming_the_chain(home: Path) -> None:
    (home / ".ssh" / "config").write_text("Host a\n ProxyJump b\nHost b\n ProxyJump a\n")
    with pytest.raises(SshConfigError) as caught:
        route(HostTarget(name="hv1", address="a"))
    assert str(caught.value) == "host hv1: ProxyJump goes round in a loop or too deep (b -> a -> b)"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        pytest.param("Port\n", "line 1: Missing Port value", id="missing-value"),
        pytest.param("Host *\n  Port twenty\n", "line 2: Invalid Port integer value", id="not-int"),
        pytest.param('User "ops\n', "line 1: No closing quotation", id="bad-quote"),
        pytest.param("Host *\n ProxyJump a@@b\n", "ProxyJump 'a@@b' is not", id="bad-jump"),
    ],
)
def test_a_bad_config_line_fails_the_host_with_one_line_naming_the_file(
    home: Path, text: str, reason: str
) -> None:
    config = home / ".ssh" / "config"
    config.write_text(text)
    with pytest.raises(SshConfigError) as caught:
        route(HostTarget(name="hv1", address="hv1"))
    message = str(caught.value)
    assert isinstance(caught.value, HostUnreachable)  # fails that host's work only
    assert message.startswith("host hv1: ") and "\n" not in message
    assert reason in message
    if "ProxyJump" not in reason:
        assert f"ssh config {config} {reason}" in message


def test_an_unreadable_config_is_named(home: Path) -> None:
    (home / ".ssh" / "config").mkdir()
    with pytest.raises(SshConfigError, match=r"^host hv1: ssh config .*/\.ssh/config"):
        route(HostTarget(name="hv1", address="hv1"))


def test_the_inventorys_config_file_replaces_the_users(ssh_config: Path, tmp_path: Path) -> None:
    own = tmp_path / "fleet.conf"
    own.write_text("Host hv1\n  User fleet\n")
    assert hops(ssh_config=str(own)) == [(None, "hv1", 22, "fleet")]
    with pytest.raises(SshConfigError, match=r"ssh config .*/missing.conf: no such file"):
        route(HostTarget(name="hv1", address="hv1", ssh_config=str(tmp_path / "missing.conf")))


def test_proxy_command_is_refused_rather_than_bypassed(home: Path) -> None:
    (home / ".ssh" / "config").write_text("Host hv1\n  ProxyCommand nc %h %p\n")
    with pytest.raises(SshConfigError, match="sets ProxyCommand, which herd does not run"):
        route(HostTarget(name="hv1", address="hv1"))


@pytest.mark.parametrize(
    ("value", "jumps"),
    [
        ("bastion", (Jump("bastion"),)),
        ("ops@bastion:2222", (Jump("bastion", "ops", 2222),)),
        ("a, b@c", (Jump("a"), Jump("c", "b"))),
        ("[2001:db8::1]:22", (Jump("2001:db8::1", None, 22),)),
        ("ssh://ops@bastion:2022", (Jump("bastion", "ops", 2022),)),
        ("none", ()),
    ],
)
def test_proxy_jump_is_read_as_openssh_reads_it(value: str, jumps: tuple[Jump, ...]) -> None:
    assert parse_proxy_jump(value) == jumps


@pytest.mark.parametrize("value", ["", "a,", "a@@b", "host:0", "host:99999", "a b"])
def test_a_proxy_jump_openssh_would_not_read_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="is not \\[user@\\]host\\[:port\\]"):
        parse_proxy_jump(value)
