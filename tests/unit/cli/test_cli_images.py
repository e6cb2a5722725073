"""`herd image create` and `herd inventory apply` refuse an unsafe image file at once:
one line, exit 2, nothing stored (the hosts' agents refuse it too, finding 1 of #12)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.herdcli import HerdCli, assert_one_line_error
from tests.unit.cli.forkcli import ForkedHerd

needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")


@pytest.fixture
def herd(tmp_path: Path) -> HerdCli:
    return ForkedHerd(tmp_path)


def backed_by(tmp_path: Path, target: str) -> Path:
    """`qemu-img create -f qcow2 -F raw -b TARGET`: every disk made from it reads TARGET."""
    evil = tmp_path / "evil.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", target, str(evil), "1M"],
        check=True,
    )
    return evil


@needs_qemu_img
def test_image_create_refuses_a_qcow2_with_a_backing_file_before_storing_it(
    herd: HerdCli, tmp_path: Path
) -> None:
    evil = backed_by(tmp_path, "/etc/shadow")
    assert_one_line_error(
        herd.run("image", "create", "evil", "--file", str(evil)),
        code=2,
        contains=f"--file {evil} was refused: its qcow2 header names a backing file",
    )
    assert_one_line_error(
        herd.run("image", "create", "evil", "--file", str(evil), "--format", "raw"),
        code=2,
        contains="declared raw, but its content is a qcow2 image",
    )
    assert_one_line_error(
        herd.run("image", "create", "evil", "--file", str(evil), "--format", "aki"),
        code=2,
        contains="declared aki (a kernel), but its content is a qcow2 image",
    )
    assert herd.ok("image", "list", "--json").json() == []


@needs_qemu_img
def test_inventory_apply_refuses_an_unsafe_local_image_and_applies_nothing(
    herd: HerdCli, tmp_path: Path
) -> None:
    evil = backed_by(tmp_path, "/etc/shadow")
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(
        "flavors:\n  - {name: m1.small, vcpus: 1, ram_mb: 512, disk_gb: 1}\n"
        f"images:\n  - name: evil\n    source: {evil}\n"
    )
    assert_one_line_error(
        herd.run("inventory", "apply", str(inventory)),
        code=2,
        contains=f"images (evil).source: {evil} was refused: its qcow2 header names a backing",
    )
    assert herd.ok("image", "list", "--json").json() == []
    assert herd.ok("flavor", "list", "--json").json() == []


@pytest.mark.parametrize(
    ("host_path", "reason"),
    [
        ("/dev/zero", "must not be under /dev"),
        ("/proc/self/environ", "must not be under /dev"),
        ("/srv/images/../../etc/shadow", "must be a normalised path"),
        ("/srv//images/x.raw", "must be a normalised path"),
        ("srv/images/x.raw", "host:///absolute/path"),
    ],
)
def test_image_create_refuses_a_host_path_that_is_no_image_file(
    herd: HerdCli, host_path: str, reason: str
) -> None:
    assert_one_line_error(
        herd.run("image", "create", "x", "--host-path", host_path, "--format", "raw"),
        code=2,
        contains=reason,
    )
    assert herd.ok("image", "list", "--json").json() == []


def test_inventory_refuses_image_source_dirs_that_are_system_or_agent_directories(
    herd: HerdCli, tmp_path: Path
) -> None:
    for dirs, reason in (
        ("[/]", "not a system directory"),
        ("[/etc]", "not a system directory"),
        ("[/dev/shm]", "not a system directory"),
        ("[/var/lib/herd/images]", "must not be or contain the agent_dir"),
        ("[/srv/../etc]", "must be a normalised path"),
    ):
        inventory = tmp_path / "inventory.yaml"
        inventory.write_text(
            f"hosts:\n  - name: hv1\n    address: 192.0.2.1\n    image_source_dirs: {dirs}\n"
        )
        line = assert_one_line_error(
            herd.run("inventory", "validate", str(inventory)), code=2, contains=reason
        )
        assert "image_source_dirs" in line
