"""The agent's state directory: which paths it accepts, and whose modes it may set."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent.calls import Agent
from agent.errors import BadRequest
from agent.fsutil import ensure_dir
from agent.specs import MAX_STATE_DIR, LiveMigrateSpec, check_state_dir

REFUSED = [
    pytest.param("/", "system directory", id="root"),
    pytest.param("/tmp", "system directory", id="tmp"),
    pytest.param("/var", "system directory", id="var"),
    pytest.param("/herd", "system directory", id="one-component"),
    pytest.param("/var/lib", "system directory", id="var-lib"),
    pytest.param("/var/tmp", "system directory", id="var-tmp"),
    pytest.param("/usr/local", "system directory", id="usr-local"),
    pytest.param("/var/lib/libvirt", "system directory", id="libvirt-state"),
    pytest.param("/run/herd", "not kept across reboots", id="under-run"),
    pytest.param("/var/run/herd", "not kept across reboots", id="under-var-run"),
    pytest.param("/proc/self/cwd", "not kept across reboots", id="under-proc"),
    pytest.param("/dev/shm/herd", "not kept across reboots", id="under-dev"),
    pytest.param("var/lib/herd", "absolute path", id="relative"),
    pytest.param("", "absolute path", id="empty"),
    pytest.param("/srv/herd/../../etc", "normal form", id="dot-dot"),
    pytest.param("/srv/./herd", "normal form", id="dot"),
    pytest.param("//srv/herd", "normal form", id="leading-double-slash"),
    pytest.param("/srv//herd", "normal form", id="double-slash"),
    pytest.param("/srv/herd/", "normal form", id="trailing-slash"),
    pytest.param("/srv/herd\n", "only letters", id="trailing-newline"),
    pytest.param("/srv/herd\nx", "only letters", id="embedded-newline"),
    pytest.param("/srv/her\x00d", "only letters", id="nul"),
    pytest.param("/srv/my herd", "only letters", id="space"),
    pytest.param("/srv/herd?socket=x", "only letters", id="uri-metacharacter"),
    pytest.param("/srv/" + "h" * MAX_STATE_DIR, f"at most {MAX_STATE_DIR}", id="too-long"),
]


@pytest.mark.parametrize(("value", "reason"), REFUSED)
def test_a_state_dir_that_is_not_herds_own_is_refused(value: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        check_state_dir(value)


@pytest.mark.parametrize(
    "value", ["/var/lib/herd", "/srv/herd", "/data/herd-state_2", "/opt/herd/state"]
)
def test_ordinary_state_dirs_are_accepted_as_written(value: str) -> None:
    assert check_state_dir(value) == value


def test_the_longest_state_dir_still_holds_a_live_migration_socket() -> None:
    """The orchestrator opens ``<agent_dir>/migrate-<12 hex>.sock``; the agent must take it."""
    state_dir = "/" + "/".join(["d" * 9] * (MAX_STATE_DIR // 10))
    state_dir += "x" * (MAX_STATE_DIR - len(state_dir))
    assert check_state_dir(state_dir) == state_dir
    socket = f"{state_dir}/migrate-{'0' * 12}.sock"
    args = {"uuid": "0" * 8 + "-0000-0000-0000-" + "0" * 12, "socket": socket}
    args.update(address="192.0.2.1", timeout=60, port=49152, disks_port=49153)
    spec = LiveMigrateSpec.from_args(args)
    assert spec.socket == socket


@pytest.mark.parametrize(("value", "reason"), REFUSED[:14])
def test_hello_refuses_the_same_state_dirs(
    value: str, reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def untouchable(path: Path, mode: int) -> Path:
        raise AssertionError(f"hello touched {path} before refusing it")

    # A regression must fail here, not chmod the test machine's /tmp.
    monkeypatch.setattr("agent.calls.ensure_dir", untouchable)
    with pytest.raises(BadRequest, match=f"state_dir .*{reason}"):
        Agent().dispatch("hello", {"state_dir": value, "domain_type": "qemu"})


def test_ensure_dir_leaves_the_mode_of_an_existing_directory_alone(tmp_path: Path) -> None:
    """``agent_dir: /tmp`` used to strip /tmp's sticky bit: a dir herd did not make is not herd's."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    ensure_dir(shared, 0o755)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777


def test_ensure_dir_gives_every_directory_it_makes_the_mode(tmp_path: Path) -> None:
    """Parents too: under umask 077 a parent QEMU cannot traverse hides everything below."""
    old = os.umask(0o077)
    try:
        ensure_dir(tmp_path / "a" / "b" / "c", 0o755)
    finally:
        os.umask(old)
    for path in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o755, path


def test_hello_keeps_an_existing_state_dirs_mode(state_dir: Path) -> None:
    os.chmod(state_dir, 0o711)
    Agent().dispatch("hello", {"state_dir": str(state_dir), "domain_type": "qemu"})
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o711
    assert stat.S_IMODE((state_dir / "jobs").stat().st_mode) == 0o755  # made by hello


def test_hello_refuses_a_state_dir_anyone_may_write_to(state_dir: Path) -> None:
    """Anyone could plant job records or images there; herd neither uses it nor chmods it."""
    os.chmod(state_dir, 0o1777)
    with pytest.raises(BadRequest, match="writable by everyone"):
        Agent().dispatch("hello", {"state_dir": str(state_dir), "domain_type": "qemu"})
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o1777
    assert list(state_dir.iterdir()) == []


def test_hello_on_a_state_dir_that_is_a_file_is_a_bad_request(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.write_text("not a directory")
    with pytest.raises(BadRequest, match="cannot create state_dir"):
        Agent().dispatch("hello", {"state_dir": str(path), "domain_type": "qemu"})
