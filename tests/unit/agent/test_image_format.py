"""The image inspector: an image is exactly what it is declared to be, or refused.

Headers are built byte by byte (qcow2 per docs/interop/qcow2.txt), so each case says
which field makes it unsafe; real files from qemu-img check the same on QEMU's own
output. The cases follow OpenStack's format_inspector tests (OSSA-2024-001).
"""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import pytest
from agent_testlib import needs_qemu_img

from agent import image_format
from agent.image_format import UnsafeImage, check_head, check_qemu_info, detect


def qcow2(
    version: int = 3,
    backing_offset: int = 0,
    backing_size: int = 0,
    crypt: int = 0,
    incompatible: int = 0,
) -> bytes:
    header = b"QFI\xfb" + struct.pack(
        ">IQIIQI", version, backing_offset, backing_size, 16, 1 << 30, crypt
    )
    header = header.ljust(72, b"\0") + struct.pack(">Q", incompatible)
    return header.ljust(4096, b"\0")


def at(offset: int, data: bytes, size: int = 40 * 1024) -> bytes:
    return (b"\0" * offset + data).ljust(size, b"\0")


MBR = at(510, b"\x55\xaa", 4096)
FAT = bytearray(MBR)
FAT[0x10], FAT[0x15] = 2, 0xF8

FOREIGN = [
    pytest.param(b"QFI\xfb\0\0\0\x01".ljust(512, b"\0"), "qcow", id="qcow-v1"),
    pytest.param(b"QED\0".ljust(512, b"\0"), "qed", id="qed"),
    pytest.param(b"KDMV".ljust(512, b"\0"), "vmdk", id="vmdk-sparse"),
    pytest.param(b"COWD".ljust(512, b"\0"), "vmdk", id="vmdk3"),
    pytest.param(
        b'# Disk DescriptorFile\n\nversion=1\nRW 2048 FLAT "/etc/shadow" 0\n',
        "vmdk",
        id="vmdk-text",
    ),
    pytest.param(b"conectix".ljust(512, b"\0"), "vpc", id="vhd"),
    pytest.param(b"vhdxfile".ljust(512, b"\0"), "vhdx", id="vhdx"),
    pytest.param(at(0x40, struct.pack("<I", 0xBEDA107F), 512), "vdi", id="vdi"),
    pytest.param(b"LUKS\xba\xbe\0\x01".ljust(592, b"\0"), "luks", id="luks"),
    pytest.param(b"Bochs Virtual HD Image".ljust(512, b"\0"), "bochs", id="bochs"),
    pytest.param(b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0\n", "cloop", id="cloop"),
    pytest.param(b"WithoutFreeSpace".ljust(512, b"\0"), "parallels", id="parallels"),
    pytest.param(at(32769, b"CD001"), "iso", id="iso9660"),
]


def test_a_clean_qcow2_passes_as_qcow2_and_only_as_qcow2() -> None:
    for version in (2, 3):
        check_head(qcow2(version), "qcow2")
    for declared in ("raw", "aki", "ari"):
        with pytest.raises(UnsafeImage, match=f"declared {declared}.*a qcow2 image"):
            check_head(qcow2(), declared)


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        pytest.param(
            qcow2(backing_offset=0x200, backing_size=11), "names a backing file", id="backing"
        ),
        pytest.param(qcow2(backing_size=11), "names a backing file", id="backing-size-only"),
        pytest.param(
            qcow2(version=2, backing_offset=0x200), "names a backing file", id="backing-v2"
        ),
        pytest.param(qcow2(incompatible=1 << 2), "external data file", id="data-file"),
        pytest.param(qcow2(incompatible=1 << 1), "marks it corrupt", id="corrupt"),
        pytest.param(qcow2(incompatible=1 << 4), "feature bit\\(s\\) 4", id="extended-l2"),
        pytest.param(qcow2(incompatible=1 << 63), "feature bit\\(s\\) 63", id="unknown-bit"),
        pytest.param(qcow2(crypt=1), "encrypted", id="encrypted"),
        pytest.param(qcow2(version=4), "version 4 is not supported", id="version-4"),
        pytest.param(qcow2()[:60], "truncated", id="truncated"),
        pytest.param(b"\0" * 4096, "raw data \\(no qcow2 header\\)", id="raw-as-qcow2"),
        pytest.param(
            qcow2()[:510] + b"\x55\xaa" + qcow2()[512:],
            "qcow2 image and a partition table",
            id="two-formats",
        ),
        pytest.param(b"KDMV".ljust(512, b"\0"), "a vmdk image", id="vmdk-as-qcow2"),
    ],
)
def test_an_unsafe_qcow2_is_refused_with_its_reason(head: bytes, reason: str) -> None:
    with pytest.raises(UnsafeImage, match=reason):
        check_head(head, "qcow2")


def test_the_dirty_and_compression_feature_bits_are_harmless() -> None:
    check_head(qcow2(incompatible=(1 << 0) | (1 << 3)), "qcow2")
    check_head(qcow2(version=2, incompatible=1 << 2), "qcow2")  # v2 has no feature bits


def test_a_backing_file_is_allowed_only_when_herd_replaces_it() -> None:
    check_head(qcow2(backing_offset=0x200, backing_size=11), "qcow2", backing_allowed=True)
    with pytest.raises(UnsafeImage, match="external data file"):
        check_head(qcow2(incompatible=1 << 2), "qcow2", backing_allowed=True)


@pytest.mark.parametrize(("head", "name"), FOREIGN)
@pytest.mark.parametrize("declared", ["raw", "aki", "ari"])
def test_content_in_any_format_qemu_would_probe_is_refused_as_raw(
    head: bytes, name: str, declared: str
) -> None:
    assert name in detect(head)
    with pytest.raises(UnsafeImage, match=f"declared {declared}.*a {name} image"):
        check_head(head, declared)


@pytest.mark.parametrize("declared", ["raw", "aki", "ari"])
def test_plain_data_a_partition_table_or_a_fat_boot_sector_is_raw(declared: str) -> None:
    for head in (b"", b"hello\n" * 100, MBR, bytes(FAT)):
        check_head(head, declared)
    assert detect(MBR) == ["mbr"] and detect(bytes(FAT)) == []


def test_a_linux_kernel_passes_as_a_kernel(tmp_path: Path) -> None:
    """A bzImage's boot sector carries the MBR signature: still a kernel, not a disk."""
    kernels = sorted(Path("/boot").glob("vmlinuz-*"))
    if not kernels:
        pytest.skip("no kernel in /boot")
    with open(kernels[-1], "rb") as reader:
        head = image_format.read_head(reader)
    check_head(head, "aki")
    with pytest.raises(UnsafeImage):
        check_head(head, "qcow2")


def test_an_unknown_declared_format_is_refused() -> None:
    with pytest.raises(UnsafeImage, match="unknown image format 'vmdk'"):
        check_head(b"", "vmdk")


@pytest.mark.parametrize(
    ("info", "declared", "reason"),
    [
        pytest.param({"format": "raw"}, "qcow2", "reads it as 'raw', not qcow2", id="format"),
        pytest.param({"format": "qcow2"}, "aki", "not raw", id="kernel-is-raw"),
        pytest.param(
            {"format": "qcow2", "backing-filename": "/etc/shadow"},
            "qcow2",
            "backing file \\(/etc/shadow\\)",
            id="backing",
        ),
        pytest.param(
            {"format": "qcow2", "full-backing-filename": "/x"},
            "qcow2",
            "backing file",
            id="full-backing",
        ),
        pytest.param(
            {
                "format": "qcow2",
                "format-specific": {"type": "qcow2", "data": {"data-file": "/dev/sda"}},
            },
            "qcow2",
            "external data file \\(/dev/sda\\)",
            id="data-file",
        ),
    ],
)
def test_qemu_img_info_must_agree(info: dict, declared: str, reason: str) -> None:
    with pytest.raises(UnsafeImage, match=reason):
        check_qemu_info(info, declared)


@needs_qemu_img
def test_files_qemu_img_makes_are_judged_the_same_way(tmp_path: Path) -> None:
    secret = tmp_path / "shadow"
    secret.write_text("root:$y$...\n")
    made = {
        "clean": ["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "clean"), "1M"],
        "backing": ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(secret), str(tmp_path / "backing"), "1M"],
        "data-file": ["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file={tmp_path / 'data'}", str(tmp_path / "data-file"), "1M"],
    }  # fmt: skip
    for argv in made.values():
        subprocess.run(argv, check=True)

    def verdicts(name: str) -> tuple[str | None, str | None]:
        path = tmp_path / name
        with open(path, "rb") as reader:
            head = image_format.read_head(reader)
        info = json.loads(
            subprocess.run(
                ["qemu-img", "info", "--output=json", "-f", "qcow2", str(path)],
                check=True, capture_output=True, text=True,
            ).stdout
        )  # fmt: skip
        out = []
        for check, data in ((check_head, head), (check_qemu_info, info)):
            try:
                check(data, "qcow2")
                out.append(None)
            except UnsafeImage as exc:
                out.append(str(exc))
        return out[0], out[1]

    assert verdicts("clean") == (None, None)
    head, info = verdicts("backing")
    assert "backing file" in head and str(secret) in info
    head, info = verdicts("data-file")
    assert "external data file" in head and "external data file" in info
