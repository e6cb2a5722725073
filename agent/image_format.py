"""What an image file really is, from its first bytes, before QEMU ever opens it.

An image is declared ``qcow2`` or ``raw`` (a disk), ``aki`` or ``ari`` (a kernel or an
initramfs, raw blobs). A qcow2 header can name a backing file or an external data file:
any path on the host, which then becomes part of every guest disk made from the image
(OpenStack's OSSA-2024-001, Launchpad bug 2059809). A file declared raw but whose bytes
are a qcow2 (or vmdk, vhd, ...) header is the same attack one step removed: anything
that probes the format would follow it. So, as Nova's and Glance's ``format_inspector``
do, every image is inspected here before it is cached, and refused unless its content
is exactly what was declared:

- qcow2: magic and version 2 or 3, no backing file, not encrypted, and no incompatible
  feature bit but "dirty" and "compression type" (so no external data file, no
  "corrupt" mark, nothing this code does not know);
- raw: no known image header at all (an MBR/GPT partition table is fine: a whole disk);
- aki, ari: no disk image header either (a kernel's boot sector looks like an MBR).

Pure standard library and Python 3.9, because both sides use it: the agent on every
image that reaches a host's cache, the orchestrator on a local file before it is
registered. The agent also asks ``qemu-img info -f <declared>`` for a second opinion
(``check_qemu_info``), never letting QEMU probe the format itself.
"""

from __future__ import annotations

import struct
from typing import Any, BinaryIO, Dict, List, Mapping

DISK_FORMATS = ("qcow2", "raw")
BLOB_FORMATS = ("aki", "ari")  # kernel, initramfs: booted directly, never disks
FORMATS = DISK_FORMATS + BLOB_FORMATS

# The ISO 9660 / UDF volume descriptor is the furthest header: 32 KiB + 2 KiB in.
HEAD_BYTES = 36 * 1024

MBR = "mbr"  # a partition table (MBR or GPT's protective MBR): raw data to QEMU

_QCOW_MAGIC = b"QFI\xfb"
# qcow2 incompatible feature bits (docs/interop/qcow2.txt), by what they mean here.
_QCOW2_DIRTY = 0
_QCOW2_CORRUPT = 1
_QCOW2_DATA_FILE = 2
_QCOW2_COMPRESSION = 3
_QCOW2_SAFE_FEATURES = (1 << _QCOW2_DIRTY) | (1 << _QCOW2_COMPRESSION)

_BLOB_NAMES = {"aki": "aki (a kernel)", "ari": "ari (an initramfs)"}


class UnsafeImage(ValueError):
    """The file is not what it was declared to be, or could reach other files."""


def read_head(reader: BinaryIO) -> bytes:
    """The first ``HEAD_BYTES`` of a file (fewer if it is shorter)."""
    chunks: List[bytes] = []
    wanted = HEAD_BYTES
    while wanted > 0:
        chunk = reader.read(wanted)
        if not chunk:
            break
        chunks.append(chunk)
        wanted -= len(chunk)
    return b"".join(chunks)


def detect(head: bytes) -> List[str]:
    """Every image format whose header ``head`` carries, by QEMU's names ([] = none).

    All of QEMU's own probes that look at content, so that nothing QEMU would take
    for a format passes as raw; plus ``mbr`` (Nova's ``gpt``), which is not a format
    to QEMU but tells a whole-disk raw image (or a kernel) apart.
    """
    found = []
    if head[:4] == _QCOW_MAGIC:
        found.append("qcow" if head[4:8] == b"\x00\x00\x00\x01" else "qcow2")
    if head[:4] == b"QED\x00":
        found.append("qed")
    if head[:4] in (b"KDMV", b"COWD") or _vmdk_descriptor(head):
        found.append("vmdk")
    if head[:8] == b"conectix":
        found.append("vpc")
    if head[:8] == b"vhdxfile":
        found.append("vhdx")
    if head[0x40:0x44] == struct.pack("<I", 0xBEDA107F):
        found.append("vdi")
    if head[:6] == b"LUKS\xba\xbe":
        found.append("luks")
    if head[:22] == b"Bochs Virtual HD Image":
        found.append("bochs")
    if head[:23] == b"#!/bin/sh\n#V2.0 Format\n":
        found.append("cloop")
    if head[:16] in (b"WithoutFreeSpace", b"WithouFreSpacExt"):
        found.append("parallels")
    if head[32769:32774] in (b"CD001", b"NSR02", b"NSR03"):
        found.append("iso")
    if head[510:512] == b"\x55\xaa" and not _fat_boot_sector(head):
        found.append(MBR)
    return found


def _vmdk_descriptor(head: bytes) -> bool:
    """QEMU's vmdk_probe for a text descriptor: comments and blank lines, then
    ``version=1|2|3`` (such a file names its extents: other files)."""
    for line in head.split(b"\n"):
        text = line.rstrip(b"\r")
        if text.startswith(b"#") or not text.strip(b" "):
            continue
        return text in (b"version=1", b"version=2", b"version=3")
    return False


def _fat_boot_sector(head: bytes) -> bool:
    """A FAT filesystem's boot sector carries the MBR signature too (Nova's check)."""
    return len(head) > 0x15 and head[0x10] == 2 and head[0x15] == 0xF8


def check_head(head: bytes, declared: str, *, backing_allowed: bool = False) -> None:
    """Raise ``UnsafeImage`` unless ``head`` (see ``read_head``) is safe as ``declared``.

    ``backing_allowed`` is for a disk herd itself made on another host (a migration):
    its backing file is replaced by this host's base before anything opens it.
    """
    if declared not in FORMATS:
        raise UnsafeImage(f"unknown image format {declared!r}")
    found = detect(head)
    if declared == "qcow2":
        if found != ["qcow2"]:
            what = _describe(found) if found else "raw data (no qcow2 header)"
            raise UnsafeImage(f"declared qcow2, but its content is {what}")
        _check_qcow2(head, backing_allowed)
        return
    headers = [f for f in found if f != MBR]
    if headers:
        name = _BLOB_NAMES.get(declared, declared)
        raise UnsafeImage(f"declared {name}, but its content is {_describe(headers)}")


def _describe(found: List[str]) -> str:
    return " and ".join("a partition table (MBR)" if f == MBR else f"a {f} image" for f in found)


def _check_qcow2(head: bytes, backing_allowed: bool) -> None:
    if len(head) < 72:
        raise UnsafeImage("its qcow2 header is truncated")
    version, backing_offset, backing_size, _cluster_bits, _size, crypt = struct.unpack(
        ">IQIIQI", head[4:36]
    )
    if version not in (2, 3):
        raise UnsafeImage(f"qcow2 version {version} is not supported (only 2 and 3)")
    if (backing_offset or backing_size) and not backing_allowed:
        raise UnsafeImage("its qcow2 header names a backing file")
    if crypt:
        raise UnsafeImage("it is an encrypted qcow2 image")
    if version == 2:
        return  # version 2 has no feature bits
    if len(head) < 80:
        raise UnsafeImage("its qcow2 header is truncated")
    (incompatible,) = struct.unpack(">Q", head[72:80])
    if incompatible & (1 << _QCOW2_DATA_FILE):
        raise UnsafeImage("its qcow2 header names an external data file")
    if incompatible & (1 << _QCOW2_CORRUPT):
        raise UnsafeImage("its qcow2 header marks it corrupt")
    unknown = incompatible & ~_QCOW2_SAFE_FEATURES
    if unknown:
        bits = ", ".join(str(bit) for bit in range(64) if unknown >> bit & 1)
        raise UnsafeImage(f"its qcow2 header sets incompatible feature bit(s) {bits}")


def qemu_format(declared: str) -> str:
    """The format QEMU is told: kernels and initramfs are raw bytes to it."""
    return "raw" if declared in BLOB_FORMATS else declared


def check_qemu_info(
    info: Mapping[str, Any], declared: str, *, backing_allowed: bool = False
) -> None:
    """Raise ``UnsafeImage`` unless ``qemu-img info --output=json -f <declared>`` agrees:
    the declared format, no backing file, no external data file."""
    wanted = qemu_format(declared)
    if info.get("format") != wanted:
        raise UnsafeImage(f"qemu-img reads it as {info.get('format')!r}, not {wanted}")
    backing = info.get("full-backing-filename") or info.get("backing-filename")
    if backing and not backing_allowed:
        raise UnsafeImage(f"it has a backing file ({backing})")
    specific: Dict[str, Any] = info.get("format-specific") or {}
    data = specific.get("data") if isinstance(specific, dict) else None
    if isinstance(data, dict) and data.get("data-file"):
        raise UnsafeImage(f"it has an external data file ({data['data-file']})")
