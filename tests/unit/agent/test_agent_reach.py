"""The reachability probe a live migration runs first: listeners, knocks, verdicts."""

from __future__ import annotations

import contextlib
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import reach, virt
from agent.calls import Agent
from agent.errors import BadRequest, NotFound

LOOPBACK = "127.0.0.1"


@contextlib.contextmanager
def taken(port: int) -> Iterator[None]:
    """``port`` on the loopback address held by someone else for the block's length."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, port))
        sock.listen(1)
        yield


def free_range(width: int) -> tuple[int, int]:
    """``width`` consecutive ports nobody listens on, found by binding them."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        start = probe.getsockname()[1]
    low = max(1024, min(start, 65535 - width))
    return low, low + width - 1


@pytest.mark.parametrize(
    ("conf", "expected"),
    [
        (None, (49152, 49215)),
        ("", (49152, 49215)),
        ("migration_port_min = 50000\nmigration_port_max = 50063\n", (50000, 50063)),
        ("#migration_port_min = 50000\n", (49152, 49215)),
        ("migration_port_max = 49300  # more room\n", (49152, 49300)),
        ("migration_port_min = 60000\nmigration_port_max = 50000\n", (49152, 49215)),
    ],
    ids=["no-file", "empty", "both-set", "commented", "trailing-comment", "inverted"],
)
def test_the_port_range_is_qemu_confs_or_libvirts_default(
    conf: str | None, expected: tuple[int, int]
) -> None:
    assert reach.port_range(conf) == expected


def test_a_qemu_conf_the_agent_cannot_read_means_the_default_range(tmp_path: Path) -> None:
    assert reach.read_port_range(str(tmp_path / "missing.conf")) == reach.DEFAULT_PORTS


def test_the_destination_hears_the_token_the_source_knocks_with() -> None:
    probes = reach.Probes()
    low, high = free_range(8)
    probe = probes.listen(LOOPBACK, 2, 10, (low, high))
    assert len(probe.ports) == 2 and all(low <= p <= high for p in probe.ports)
    assert [reach.knock(LOOPBACK, p, probe.token, 2.0) for p in probe.ports] == [None, None]
    assert probes.close(probe.probe) == {p: True for p in probe.ports}


def test_a_knock_with_another_token_is_not_taken_for_the_destination() -> None:
    probes = reach.Probes()
    probe = probes.listen(LOOPBACK, 1, 10, free_range(4))
    (port,) = probe.ports
    said = reach.knock(LOOPBACK, port, b"x" * reach.TOKEN_BYTES, 2.0)
    assert said == "answered, but not by the destination's listener"
    assert probes.close(probe.probe) == {port: False}


def test_a_port_nobody_listens_on_is_refused() -> None:
    probes = reach.Probes()
    probe = probes.listen(LOOPBACK, 1, 10, free_range(4))
    probes.close(probe.probe)
    assert reach.knock(LOOPBACK, probe.ports[0], probe.token, 2.0) == "refused"


def test_an_address_this_host_lacks_is_listened_for_on_every_address() -> None:
    """Behind NAT the inventory address is not the host's own: QEMU listens on every
    address then, and so does the probe (binding sends nothing anywhere)."""
    probes = reach.Probes()
    probe = probes.listen("198.51.100.7", 1, 10, free_range(4))
    (port,) = probe.ports
    assert reach.knock(LOOPBACK, port, probe.token, 2.0) is None
    assert probes.close(probe.probe) == {port: True}


def test_ports_already_taken_are_passed_over_for_free_ones() -> None:
    low, high = free_range(3)
    with taken(low), taken(low + 1):
        probe = reach.Probes().listen(LOOPBACK, 1, 10, (low, high))
        assert probe.ports == [high]
        probe.close()


def test_a_range_without_enough_free_ports_is_refused_with_the_range() -> None:
    low, high = free_range(2)
    with taken(low), pytest.raises(BadRequest, match=rf"only 1 of the migration ports {low}-"):
        reach.Probes().listen(LOOPBACK, 2, 10, (low, high))


def test_listeners_close_by_themselves_when_nobody_closes_them() -> None:
    probes = reach.Probes()
    probe = probes.listen(LOOPBACK, 1, 1, free_range(4))
    probe.deadline = 0.0  # as if its hold had passed
    assert probe._thread is not None
    probe._thread.join(5.0)
    assert reach.knock(LOOPBACK, probe.ports[0], probe.token, 2.0) == "refused"
    probes.listen(LOOPBACK, 1, 10, free_range(4)).close()  # the next listen reaps it
    with pytest.raises(NotFound, match="closed, or expired"):
        probes.close(probe.probe)


@pytest.fixture
def agent(state_dir: Path) -> Iterator[Agent]:
    served = Agent()
    served.dispatch("hello", {"state_dir": str(state_dir), "domain_type": "qemu"})
    yield served
    served.close()


def test_the_agent_ops_listen_knock_and_close_in_turn(
    agent: Agent, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reach, "read_port_range", lambda: free_range(16))
    monkeypatch.setattr(reach, "libvirt_answers", lambda uri: None)
    listening = agent.dispatch("reach_listen", {"address": LOOPBACK, "count": 2, "hold": 10})
    tunnel = state_dir / "migrate-0a1b.sock"
    with socket.socket(socket.AF_UNIX) as end:  # the tunnel's end sshd would leave behind
        end.bind(str(tunnel))
        check = agent.dispatch(
            "reach_check",
            {
                "socket": str(tunnel),
                "address": LOOPBACK,
                "ports": listening["ports"],
                "token": listening["token"],
                "timeout": 2,
            },
        )
    assert check == {
        "libvirt": None,
        "ports": [{"port": p, "error": None} for p in listening["ports"]],
    }
    assert not tunnel.exists()
    heard = agent.dispatch("reach_close", {"probe": listening["probe"]})
    assert heard == {"heard": sorted(listening["ports"])}


@pytest.mark.skipif(shutil.which("virsh") is None, reason="needs virsh")
def test_a_tunnel_with_no_libvirtd_behind_it_is_said_before_any_knock(
    agent: Agent, state_dir: Path
) -> None:
    args = {
        "socket": str(state_dir / "migrate-0a1b.sock"),
        "address": LOOPBACK,
        "ports": [free_range(1)[0]],
        "token": "0" * 32,
        "timeout": 1,
    }
    check = agent.dispatch("reach_check", args)
    assert check["libvirt"] is not None and check["libvirt"].startswith("virsh version:")


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"socket": "/run/libvirt/libvirt-sock"}, "migrate-<hex>.sock"),
        ({"address": "10.0.0.2; reboot"}, "address must be a host name"),
        ({"ports": []}, "ports must be a list of 1 to 4"),
        ({"ports": [0]}, r"ports\[0\]: port must be an integer from 1 to 65535"),
        ({"ports": [True]}, r"ports\[0\]: port must be an integer"),
        ({"token": "zz"}, "token must be the hex token"),
        ({"timeout": 600}, "timeout must be a number of seconds"),
    ],
    ids=["socket", "address", "no-ports", "port-zero", "port-bool", "token", "timeout"],
)
def test_a_reach_check_is_refused_before_it_knocks(
    agent: Agent, state_dir: Path, bad: dict, match: str
) -> None:
    good = {
        "socket": str(state_dir / "migrate-0a1b.sock"),
        "address": LOOPBACK,
        "ports": [49152],
        "token": "0" * 32,
        "timeout": 1,
    }
    with pytest.raises(BadRequest, match=match):
        agent.dispatch("reach_check", {**good, **bad})


def test_the_migration_streams_go_to_the_ports_that_were_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    argvs: list[list[str]] = []
    monkeypatch.setattr(virt.Virsh, "run", lambda self, argv, timeout=0: argvs.append(argv))
    vm = virt.Virsh("qemu:///system")
    vm.migrate_live("herd-x", "qemu+unix:///system?socket=/s", "10.0.0.2", (49160, 49161), 30)
    vm.migrate_live("herd-x", "qemu+unix:///system?socket=/s", "fd00::2", (49160, 49161), 30)
    for argv, host in zip(argvs, ("10.0.0.2", "[fd00::2]"), strict=True):
        assert argv[argv.index("--migrateuri") + 1] == f"tcp://{host}:49160"
        assert argv[argv.index("--disks-uri") + 1] == f"tcp://{host}:49161"
