"""What differs when the agent runs as an ordinary user (in groups libvirt and kvm)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from agent import calls, fsutil, images, ops
from agent.errors import BadRequest


def test_a_root_agents_guest_files_are_0600_and_a_non_root_agents_0640(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert fsutil.guest_file_mode() == 0o600
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert fsutil.guest_file_mode() == 0o640  # group kvm reads what libvirt gave QEMU


def test_a_non_root_agent_that_cannot_create_its_dir_says_how_root_makes_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def denied(path: Path, mode: int = 0o755) -> Path:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(calls, "ensure_dir", denied)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(BadRequest) as as_root:
        calls._make_state_dir(tmp_path / "herd")
    assert "install -d" not in str(as_root.value)
    monkeypatch.setattr(os, "geteuid", lambda: 64999)  # no such user: named by its uid
    with pytest.raises(BadRequest) as as_user:
        calls._make_state_dir(tmp_path / "herd")
    assert f"as root: install -d -o 64999 -g {os.getegid()} -m 0755 {tmp_path / 'herd'}" in str(
        as_user.value
    )


def test_an_image_a_running_guest_holds_is_still_recorded_as_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """libvirt made QEMU's user the image's owner: a non-root agent may not set its
    times, and the build must not fail for that."""
    digest = "a" * 64
    inst_dir = tmp_path / "instances" / "u1"
    inst_dir.mkdir(parents=True)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / digest).write_bytes(b"base")

    def not_owner(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "utime", not_owner)
    images.record_use(inst_dir, [digest])
    assert (inst_dir / images.USES_FILE).read_text() == '{"images": ["' + digest + '"]}'


def test_the_console_log_is_made_by_the_agent_and_an_existing_one_is_kept(tmp_path: Path) -> None:
    path = ops.console_log_file(tmp_path)
    assert path == tmp_path / "console.log" and path.read_bytes() == b""
    assert path.stat().st_uid == os.geteuid()
    path.write_bytes(b"booted\n")
    ops.console_log_file(tmp_path)  # opened for appending, never truncated
    assert path.read_bytes() == b"booted\n"
