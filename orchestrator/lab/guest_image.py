"""`herd lab image`: a tiny guest that boots in seconds and reports what it received.

Built from what this machine already has (Debian's cloud kernel and busybox-static), so
the lab needs no download: a direct-kernel-boot image in three files, as Nova's
kernel_id/ramdisk_id images are: the kernel, an initramfs whose ``/init`` reads the
NoCloud seed and prints it on the serial console, and a small blank root disk.

The cloud kernel has virtio, iso9660 and friends only as modules; their load order is
read from the kernel's own ``modules.dep`` rather than written down here, so a kernel
update that adds a dependency still boots.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import io
import lzma
import os
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import LabError

BUSYBOX = Path("/bin/busybox")
# What the guest needs: disks (root and seed), the seed's filesystem, a NIC.
GUEST_MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "isofs")
KERNEL_CMDLINE = "console=ttyS0 panic=-1 quiet"
ROOT_DISK_SIZE = "64M"
IMAGE_NAME = "herd-test"
GUEST_MIN_RAM_MB = 128


@dataclass(frozen=True)
class GuestImage:
    """The three files, and the inventory entries that name them."""

    kernel: Path
    initrd: Path
    root_disk: Path
    kernel_version: str

    def inventory_images(self) -> list[dict[str, object]]:
        return [
            {"name": f"{IMAGE_NAME}-kernel", "source": str(self.kernel), "format": "aki"},
            {"name": f"{IMAGE_NAME}-ramdisk", "source": str(self.initrd), "format": "ari"},
            {
                "name": IMAGE_NAME,
                "source": str(self.root_disk),
                "format": "qcow2",
                # The cloud kernel and initramfs need more than 64 MiB to unpack.
                "min_ram_mb": GUEST_MIN_RAM_MB,
                "properties": {
                    "architecture": "x86_64",
                    "kernel_id": f"{IMAGE_NAME}-kernel",
                    "ramdisk_id": f"{IMAGE_NAME}-ramdisk",
                    "os_command_line": KERNEL_CMDLINE,
                },
            },
        ]


def find_kernel(boot: Path = Path("/boot"), modules: Path = Path("/lib/modules")) -> str:
    """The newest kernel with both an image in /boot and its modules installed."""
    found = [
        p.name.removeprefix("vmlinuz-")
        for p in boot.glob("vmlinuz-*")
        if (modules / p.name.removeprefix("vmlinuz-") / "modules.dep").is_file()
    ]
    if not found:
        raise LabError(
            f"no kernel in {boot} with modules in {modules}: "
            "install linux-image-cloud-amd64 (make install does)"
        )
    return max(found, key=_version_key)


def _version_key(version: str) -> tuple[int | str, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"[.-]", version))


def module_load_order(modules_dep: str, wanted: Iterable[str]) -> list[str]:
    """Paths (relative to the modules dir) of ``wanted`` and their dependencies, each
    after everything it depends on. Modules built into the kernel are simply absent
    from modules.dep and skipped."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in modules_dep.splitlines():
        path, sep, rest = line.partition(":")
        if not sep:
            continue
        deps[path] = rest.split()
        by_name[_module_name(path)] = path
    order: list[str] = []
    seen: set[str] = set()

    def visit(path: str) -> None:
        if path in seen:
            return
        seen.add(path)
        for dep in deps.get(path, []):
            visit(dep)
        order.append(path)

    for name in wanted:
        path = by_name.get(name.replace("-", "_"))
        if path is not None:
            visit(path)
    return order


def _module_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    return base.split(".ko", 1)[0].replace("-", "_")


def _module_bytes(path: Path) -> bytes:
    """busybox insmod loads plain .ko files only: decompress what the distribution
    compressed."""
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if path.name.endswith(".ko.zst"):
        return subprocess.run(["zstd", "-dc", str(path)], check=True, capture_output=True).stdout
    return data


class Cpio:
    """A newc ("SVR4 no CRC") archive, the initramfs format the kernel unpacks.

    Written here because the format is forty bytes of hex per entry and Python's
    standard library has no writer; the fixed mtimes and inode numbers make the
    archive, and so the image's sha256, the same on every build.
    """

    def __init__(self) -> None:
        self._buffer = io.BytesIO()
        self._inode = 1

    def _entry(self, name: str, mode: int, data: bytes = b"") -> None:
        encoded = name.encode() + b"\0"
        fields = (self._inode, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        self._inode += 1
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._buffer.write(header + encoded)
        self._pad()
        self._buffer.write(data)
        self._pad()

    def _pad(self) -> None:
        self._buffer.write(b"\0" * (-self._buffer.tell() % 4))

    def directory(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self._buffer.getvalue()


def initramfs(kernel_version: str, modules_root: Path = Path("/lib/modules")) -> bytes:
    """The gzip-compressed initramfs: busybox, the modules, ``/init``."""
    if not BUSYBOX.is_file():
        raise LabError(f"{BUSYBOX} is missing: install busybox-static (make install does)")
    mod_dir = modules_root / kernel_version
    order = module_load_order((mod_dir / "modules.dep").read_text(), GUEST_MODULES)
    archive = Cpio()
    for directory in ("bin", "dev", "etc", "lib", "lib/modules", "proc", "sys", "tmp", "seed"):
        archive.directory(directory)
    archive.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    archive.symlink("bin/sh", "busybox")
    names = []
    for path in order:
        name = _module_name(path)
        archive.file(f"lib/modules/{name}.ko", _module_bytes(mod_dir / path))
        names.append(name)
    archive.file("etc/herd-modules", "".join(f"{n}\n" for n in names).encode())
    init = importlib.resources.files("herd_templates").joinpath("guest/init.sh").read_bytes()
    archive.file("init", init, 0o755)
    # mtime=0: the same inputs give the same bytes, so the image keeps its checksum
    # (and the hosts' caches stay warm) across `herd lab up`s.
    return gzip.compress(archive.finish(), compresslevel=6, mtime=0)


def paths(output: Path, kernel_version: str = "") -> GuestImage:
    """Where ``build`` puts the files in ``output`` (for the lab's inventory)."""
    return GuestImage(
        kernel=output / f"{IMAGE_NAME}-vmlinuz",
        initrd=output / f"{IMAGE_NAME}-initrd.img",
        root_disk=output / f"{IMAGE_NAME}-root.qcow2",
        kernel_version=kernel_version,
    )


def build(output: Path, kernel_version: str | None = None) -> GuestImage:
    """Write the kernel, initramfs and root disk to ``output``; cheap to repeat."""
    version = kernel_version or find_kernel()
    output.mkdir(parents=True, exist_ok=True)
    image = paths(output, version)
    kernel, initrd, root = image.kernel, image.initrd, image.root_disk
    _write_if_changed(kernel, Path("/boot", f"vmlinuz-{version}").read_bytes())
    _write_if_changed(initrd, initramfs(version))
    if not root.exists():
        tmp = root.with_name(f".{root.name}.tmp")
        try:
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", str(tmp), ROOT_DISK_SIZE],
                check=True,
                capture_output=True,
                text=True,
            )
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", "") or exc
            raise LabError(f"cannot create {root}: {detail}".strip()) from exc
        os.replace(tmp, root)
    return image


def _write_if_changed(path: Path, data: bytes) -> None:
    if path.exists() and _digest(path.read_bytes()) == _digest(data):
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    os.replace(tmp, path)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
