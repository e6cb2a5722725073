"""The test guest's initramfs: modules in dependency order, a valid newc archive."""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

import pytest

from orchestrator.errors import LabError
from orchestrator.lab import guest_image

MODULES_DEP = """\
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/cdrom/cdrom.ko:
kernel/fs/isofs/isofs.ko.xz: kernel/drivers/cdrom/cdrom.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
"""


def test_every_module_comes_after_what_it_depends_on() -> None:
    order = guest_image.module_load_order(
        MODULES_DEP, ["virtio_pci", "virtio_blk", "isofs", "virtio-net-builtin"]
    )
    names = [guest_image._module_name(p) for p in order]
    assert names == [
        "virtio_pci_modern_dev",
        "virtio_ring",
        "virtio",
        "virtio_pci",
        "virtio_blk",
        "cdrom",
        "isofs",
    ]
    # Each appears once, and never before one of its dependencies.
    for line in MODULES_DEP.splitlines():
        module, _, deps = line.partition(":")
        if module in order:
            assert all(order.index(dep) < order.index(module) for dep in deps.split())


def test_a_module_built_into_the_kernel_is_simply_absent() -> None:
    assert guest_image.module_load_order(MODULES_DEP, ["e1000"]) == []


def test_the_newest_kernel_with_modules_is_chosen(tmp_path: Path) -> None:
    boot, modules = tmp_path / "boot", tmp_path / "modules"
    for version, with_modules in (("6.1.0-9", True), ("6.1.0-10", True), ("6.2.0-1", False)):
        boot.mkdir(exist_ok=True)
        (boot / f"vmlinuz-{version}").write_bytes(b"k")
        if with_modules:
            (modules / version).mkdir(parents=True)
            (modules / version / "modules.dep").write_text("")
    assert guest_image.find_kernel(boot, modules) == "6.1.0-10"  # not 6.1.0-9, by number


def test_no_kernel_is_a_lab_error_naming_the_package(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="linux-image-cloud-amd64"):
        guest_image.find_kernel(tmp_path, tmp_path)


def test_the_cpio_archive_is_read_back_by_gnu_cpio(tmp_path: Path) -> None:
    archive = guest_image.Cpio()
    archive.directory("bin")
    archive.file("bin/hello", b"#!/bin/sh\necho hi\n", 0o755)
    archive.symlink("bin/sh", "hello")
    archive.file("odd-length", b"x" * 7)
    data = archive.finish()
    assert len(data) % 4 == 0
    listing = subprocess.run(
        ["cpio", "-itv", "--quiet"], input=data, capture_output=True, check=True
    ).stdout.decode()
    assert "bin/hello" in listing and "bin/sh -> hello" in listing and "odd-length" in listing
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["cpio", "-id", "--quiet"], input=data, cwd=out, check=True)
    assert (out / "bin/hello").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (out / "bin/hello").stat().st_mode & 0o777 == 0o755
    assert (out / "odd-length").read_bytes() == b"x" * 7


@pytest.mark.skipif(
    not Path("/bin/busybox").exists() or not list(Path("/boot").glob("vmlinuz-*")),
    reason="needs busybox-static and a kernel (make install)",
)
def test_the_initramfs_is_reproducible_and_holds_init_busybox_and_modules() -> None:
    version = guest_image.find_kernel()
    first, second = guest_image.initramfs(version), guest_image.initramfs(version)
    assert first == second  # same bytes, same sha256: the hosts' caches stay warm
    listing = (
        subprocess.run(
            ["cpio", "-it", "--quiet"],
            input=gzip.decompress(first),
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split()
    )
    assert {"init", "bin/busybox", "etc/herd-modules"} <= set(listing)
    assert any(name.endswith("virtio_blk.ko") for name in listing)
