"""Volumes on a host's own storage: files in one directory, attached to domains as disks.

A volume is ``<dir>/<uuid>.<format>`` (qcow2 or raw), made by ``qemu-img`` and named
by its UUID, so every call is keyed by it and repeating one is harmless: a create that
finds its file returns it, a delete that finds none says so, an attach finds the disk
already in the domain's definition. A create writes under a temporary name and renames
it into place, so a file with the final name is always whole.

Attach and detach change the domain's persistent definition (``--config``) and, when it
runs, the live guest too (``--live``): Nova's and virsh's hot plug. A live detach is a
request the guest must grant (PCI hot-unplug), so it is followed until the disk is gone
from the running domain or the time is up.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Dict, List, Mapping

from agent import images, proc
from agent.errors import BadRequest, CommandError, LibvirtError, NotFound
from agent.fsutil import DIR_MODE, ensure_dir, guest_file_mode, tmp_name
from agent.specs import check_state_dir, integer, sha256
from agent.specs import uuid as uuid_arg
from agent.virt import Virsh

FORMATS = ("qcow2", "raw")
MAX_VOLUME_GB = 64 * 1024
QEMU_IMG_TIMEOUT = 600.0
DETACH_TIMEOUT = 60.0
# Disks herd may attach as: vdc onwards (vda is the root disk, vdb the NoCloud seed).
_DEVICE_RE = re.compile(r"vd[c-z]")
_POLL = 0.2


def volumes_dir(state_dir: Path, args: Mapping[str, Any]) -> Path:
    """The host's volume directory: ``dir`` when the inventory names one, else
    ``<state_dir>/volumes``. It must be a directory of herd's own (the state directory's
    rule: no system tree, no volatile file system)."""
    value = args.get("dir")
    if value is None:
        return state_dir / "volumes"
    try:
        return Path(check_state_dir(value))
    except ValueError as exc:
        raise BadRequest(f"dir {value!r} {exc}") from None


def volume_format(args: Mapping[str, Any]) -> str:
    value = args.get("format", "qcow2")
    if value not in FORMATS:
        raise BadRequest(f"format must be one of {', '.join(FORMATS)}")
    return str(value)


def device_name(args: Mapping[str, Any]) -> str:
    value = args.get("device")
    if not isinstance(value, str) or not _DEVICE_RE.fullmatch(value):
        raise BadRequest("device must be vdc to vdz (vda is the root disk, vdb the seed)")
    return value


def volume_path(state_dir: Path, args: Mapping[str, Any]) -> Path:
    return volumes_dir(state_dir, args) / f"{uuid_arg(args, 'volume')}.{volume_format(args)}"


def _info(path: Path, fmt: str) -> Dict[str, Any]:
    """qemu-img's view of a volume file; ``-U`` (share): a running guest holds the file
    locked, and reading its header must not need that lock."""
    out = proc.run(
        ["qemu-img", "info", "-U", "--output=json", "-f", fmt, str(path)],
        QEMU_IMG_TIMEOUT,
        what="qemu-img info",
    )
    return dict(json.loads(out))


def _described(path: Path, fmt: str, existed: bool) -> Dict[str, Any]:
    info = _info(path, fmt)
    return {
        "path": str(path),
        "size_bytes": int(info["virtual-size"]),
        "allocated_bytes": int(info.get("actual-size", 0)),
        "existed": existed,
    }


def create(state_dir: Path, args: Mapping[str, Any]) -> Dict[str, Any]:
    """A blank volume of ``size_gb``, or one holding the cached image ``image_sha256``
    (converted to the volume's format and grown to its size)."""
    path = volume_path(state_dir, args)
    fmt = volume_format(args)
    size_gb = integer(args, "size_gb", "", 1, MAX_VOLUME_GB)
    if path.exists():
        return _described(path, fmt, existed=True)
    ensure_dir(path.parent, DIR_MODE)
    part = tmp_name(path)
    digest = sha256(args, "image_sha256") if "image_sha256" in args else None
    try:
        if digest is None:
            proc.run(
                ["qemu-img", "create", "-q", "-f", fmt, str(part), f"{size_gb}G"],
                QEMU_IMG_TIMEOUT,
                what="qemu-img create",
            )
        else:
            cached = images.status(state_dir, digest)
            if not cached.present:
                raise NotFound(f"image {digest[:12]} is not in this host's cache")
            image = cached.path
            image_fmt = str(args.get("image_format", "qcow2"))
            if image_fmt not in FORMATS:
                raise BadRequest(f"image_format must be one of {', '.join(FORMATS)}")
            virtual = int(_info(image, image_fmt)["virtual-size"])
            if virtual > size_gb << 30:
                raise BadRequest(
                    f"the image is {virtual / (1 << 30):.1f} GiB, larger than the volume"
                    f" ({size_gb} GiB)"
                )
            proc.run(
                ["qemu-img", "convert", "-q", "-f", image_fmt, "-O", fmt, str(image), str(part)],
                QEMU_IMG_TIMEOUT,
                what="qemu-img convert",
            )
            proc.run(
                ["qemu-img", "resize", "-q", "-f", fmt, str(part), f"{size_gb}G"],
                QEMU_IMG_TIMEOUT,
                what="qemu-img resize",
            )
        os.chmod(part, guest_file_mode())
        os.replace(part, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
    return _described(path, fmt, existed=False)


def carried_path(state_dir: Path, args: Mapping[str, Any]) -> Path:
    """Where a move uploads a volume's file before ``adopt``: the incoming directory,
    named by the volume's UUID (never a path the request gives)."""
    return images.incoming_dir(state_dir) / f"{uuid_arg(args, 'volume')}.volume"


def adopt(state_dir: Path, args: Mapping[str, Any]) -> Dict[str, Any]:
    """Take a volume file a move carried here (``carried_path``) into the volume
    directory. It must be a plain image of the volume's format (a qcow2 with a backing
    file would let it read another file of this host). Done already (the file in place,
    nothing carried) is success, so a repeated call after a lost answer is harmless."""
    path = volume_path(state_dir, args)
    fmt = volume_format(args)
    carried = carried_path(state_dir, args)
    if not carried.is_file():
        if path.exists():
            return _described(path, fmt, existed=True)
        raise NotFound(f"no carried file for volume {uuid_arg(args, 'volume')} in {carried.parent}")
    info = _info(carried, fmt)
    if info.get("backing-filename") or info.get("format") != fmt:
        raise BadRequest(f"the carried file is not a plain {fmt} image")
    ensure_dir(path.parent, DIR_MODE)
    os.chmod(carried, guest_file_mode())
    if os.stat(carried).st_dev == os.stat(path.parent).st_dev:
        os.replace(carried, path)
    else:  # the volume directory is another filesystem: copy, then rename in place
        part = tmp_name(path)
        try:
            shutil.copyfile(carried, part)
            os.chmod(part, guest_file_mode())
            os.replace(part, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
        carried.unlink()
    return _described(path, fmt, existed=False)


def delete(state_dir: Path, virsh: Virsh, args: Mapping[str, Any]) -> Dict[str, Any]:
    """Remove the volume's file; refused while a domain on this host still has it."""
    path = volume_path(state_dir, args)
    users = domains_using(virsh, path)
    if users:
        raise BadRequest(f"the volume is still a disk of domain {', '.join(users)}")
    with contextlib.suppress(FileNotFoundError):  # a move's upload that was never taken in
        carried_path(state_dir, args).unlink()
    # Its snapshots' directory (herd deletes a volume's snapshots first): with what a
    # killed snapshot call may have left in it, a partial copy or a merged overlay.
    snapshots = path.parent / f"{uuid_arg(args, 'volume')}.snapshots"
    if snapshots.is_dir() and not list(snapshots.glob("*.qcow2")):
        shutil.rmtree(snapshots, ignore_errors=True)
    try:
        path.unlink()
    except FileNotFoundError:
        return {"removed": False}
    return {"removed": True}


def extend(state_dir: Path, virsh: Virsh, args: Mapping[str, Any]) -> Dict[str, Any]:
    """Grow the volume to ``size_gb``. A running guest it is attached to sees the new
    size at once (``virsh blockresize``, which QEMU applies to the open file)."""
    path = volume_path(state_dir, args)
    fmt = volume_format(args)
    size_gb = integer(args, "size_gb", "", 1, MAX_VOLUME_GB)
    if not path.exists():
        raise NotFound(f"volume file {path} is missing")
    current = int(_info(path, fmt)["virtual-size"])
    if current > size_gb << 30:
        raise BadRequest(f"the volume is already {current >> 30} GiB: volumes only grow")
    running = [
        name for name in domains_using(virsh, path) if _state(virsh, name) in ("running", "paused")
    ]
    if current < size_gb << 30 and running:
        virsh.run(["blockresize", running[0], str(path), f"{size_gb}G"])
    elif current < size_gb << 30:
        proc.run(
            ["qemu-img", "resize", "-q", "-f", fmt, str(path), f"{size_gb}G"],
            QEMU_IMG_TIMEOUT,
            what="qemu-img resize",
        )
    return _described(path, fmt, existed=True)


def list_volumes(state_dir: Path, args: Mapping[str, Any]) -> Dict[str, Any]:
    """The volume files in the directory, by UUID: what reconcile compares with the DB
    (which domain has which as a disk, the ``list`` call says)."""
    directory = volumes_dir(state_dir, args)
    found: List[Dict[str, Any]] = []
    if directory.is_dir():
        for entry in sorted(directory.iterdir()):
            stem = _volume_uuid(entry)
            if stem is None:
                continue
            try:
                size = entry.stat().st_size
            except FileNotFoundError:
                continue  # deleted since the listing
            found.append({"uuid": stem, "format": entry.suffix[1:], "bytes": size})
    return {"dir": str(directory), "volumes": found}


def _volume_uuid(path: Path) -> "str | None":
    """The UUID of a volume file's name (``<uuid>.qcow2`` or ``.raw``), else None."""
    stem, _, suffix = path.name.partition(".")
    if suffix in FORMATS and re.fullmatch(r"[0-9a-f-]{36}", stem):
        return stem
    return None


# -- attach and detach --------------------------------------------------------------


def disk_xml(path: Path, fmt: str, device: str, serial: str) -> str:
    """The <disk> element for a volume (templates/disk.xml.j2), checked before use."""
    from agent.domain import environment

    xml_text = (
        environment()
        .get_template("disk.xml.j2")
        .render(path=str(path), format=fmt, device=device, serial=serial)
    )
    root = ET.fromstring(xml_text)
    if root.tag != "disk" or root.find("source").get("file") != str(path):  # type: ignore[union-attr]
        raise BadRequest("rendered disk XML does not name the volume's file")
    return xml_text


def _xml(virsh: Virsh, domain: str, inactive: bool) -> ET.Element:
    argv = ["dumpxml", domain] + (["--inactive"] if inactive else [])
    return ET.fromstring(virsh.run(argv))


def disks_of(root: ET.Element) -> Dict[str, str]:
    """{file: target dev} of a domain's file-backed disks."""
    found = {}
    for disk in root.iterfind("devices/disk"):
        source, target = disk.find("source"), disk.find("target")
        if source is not None and target is not None and source.get("file"):
            found[str(source.get("file"))] = str(target.get("dev"))
    return found


def live_disks(virsh: Virsh, domain: str) -> Dict[str, str]:
    """{file: target dev} of the running guest's file-backed disks."""
    return disks_of(_xml(virsh, domain, inactive=False))


def defined_disks(virsh: Virsh, domain: str) -> Dict[str, str]:
    """{file: target dev} of the domain's persistent definition."""
    return disks_of(_xml(virsh, domain, inactive=True))


def _state(virsh: Virsh, domain: str) -> str:
    from agent.virt import normalise_state

    return normalise_state(virsh.run(["domstate", domain]))


def domains_using(virsh: Virsh, path: Path) -> List[str]:
    """The domains on this host whose definition or live state has ``path`` as a disk."""
    return [d.name for d in virsh.disk_files().values() if str(path) in d.files]


def attach(state_dir: Path, virsh: Virsh, args: Mapping[str, Any]) -> Dict[str, Any]:
    """Add the volume to the domain as ``device``: to its definition, and to the running
    guest when it runs. Already there (a repeated call) is success."""
    instance = uuid_arg(args, "uuid")
    path = volume_path(state_dir, args)
    device = device_name(args)
    if not path.exists():
        raise NotFound(f"volume file {path} is missing")
    if virsh.dominfo(instance) is None:
        raise NotFound(f"no domain with UUID {instance}")
    live = _state(virsh, instance) in ("running", "paused")
    config_disks = disks_of(_xml(virsh, instance, inactive=True))
    live_disks = disks_of(_xml(virsh, instance, inactive=False)) if live else {}
    for disks in (config_disks, live_disks):
        taken = {dev: file for file, dev in disks.items()}
        if device in taken and taken[device] != str(path):
            raise BadRequest(f"device {device} already holds {taken[device]}")
    xml_text = disk_xml(path, volume_format(args), device, uuid_arg(args, "volume"))
    xml_file = path.parent / f".attach-{instance}-{device}.xml"
    xml_file.write_text(xml_text)
    try:
        if str(path) not in config_disks:
            virsh.run(["attach-device", instance, str(xml_file), "--config"])
        if live and str(path) not in live_disks:
            try:
                virsh.run(["attach-device", instance, str(xml_file), "--live"])
            except LibvirtError:
                # Not half attached: the definition must not keep a disk the caller
                # will record as free.
                if str(path) not in config_disks:
                    virsh.run(["detach-disk", instance, device, "--config"])
                raise
    finally:
        xml_file.unlink()
    return {"device": device, "live": live}


def detach(state_dir: Path, virsh: Virsh, args: Mapping[str, Any]) -> Dict[str, Any]:
    """Remove the volume from the domain's definition and from the running guest, and
    wait until the guest let it go. Not attached (a repeated call) is success."""
    instance = uuid_arg(args, "uuid")
    path = volume_path(state_dir, args)
    timeout = float(integer(args, "timeout", "", 1, 600)) if "timeout" in args else DETACH_TIMEOUT
    if virsh.dominfo(instance) is None:
        return {"detached": False, "live": False}
    live = _state(virsh, instance) in ("running", "paused")
    config_disks = disks_of(_xml(virsh, instance, inactive=True))
    live_disks = disks_of(_xml(virsh, instance, inactive=False)) if live else {}
    if str(path) in config_disks:
        virsh.run(["detach-disk", instance, config_disks[str(path)], "--config"])
    if live and str(path) in live_disks:
        virsh.run(["detach-disk", instance, live_disks[str(path)], "--live"])
        deadline = time.monotonic() + timeout
        while str(path) in disks_of(_xml(virsh, instance, inactive=False)):
            if time.monotonic() > deadline:
                raise CommandError(
                    f"the guest did not release {live_disks[str(path)]} within {timeout:g} s"
                    " (it must allow PCI hot-unplug); it stays attached until it does or"
                    " is stopped"
                )
            time.sleep(_POLL)
    return {"detached": str(path) in config_disks or str(path) in live_disks, "live": live}
