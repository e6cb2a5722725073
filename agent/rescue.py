"""Rescue (Nova's rescue): the server booted from a rescue image with its own root disk
attached second, to be repaired from outside; unrescue gives it back its own boot.

The domain keeps its name and UUID; only its persistent definition is swapped. The one
it had is kept as ``domain.unrescued.xml`` in its directory, read from libvirt rather
than the build's domain.xml, since volumes attached since are in it. The rescue disk is
a fresh overlay ``disk.rescue`` on the cached rescue image (Nova's ``disk.rescue``).

In the rescue definition the rescue disk takes the root disk's place: its target
``vda`` and its PCI address, so the guest's kernel finds it first, and its boot; the
server's own disk moves to the first free ``vdX`` with the serial ``herd-rescued-root``
(``/dev/disk/by-id/virtio-herd-rescued-root`` in the guest, whatever name it gets).

Both calls may be repeated (recovery does): a rescue of a rescued server rescues it
again from the kept definition; an unrescue with nothing kept only starts the domain.
"""

from __future__ import annotations

import contextlib
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from agent import images
from agent.errors import BadRequest, NotFound
from agent.fsutil import atomic_write_bytes
from agent.ops import copy_file, create_overlay
from agent.specs import _boot, integer, obj, sha256
from agent.specs import uuid as uuid_arg
from agent.virt import Virsh, domain_name

KEPT = "domain.unrescued.xml"
KEPT_USES = "images.unrescued.json"
RESCUE_XML = "domain.rescue.xml"
RESCUE_DISK = "disk.rescue"
RESCUE_FILES = (RESCUE_DISK, "kernel.rescue", "ramdisk.rescue", RESCUE_XML)
ROOT_SERIAL = "herd-rescued-root"
_DEVICES = [f"vd{c}" for c in "bcdefghijklmnopqrstuvwxyz"]


def _instance_dir(state_dir: Path, instance: str) -> Path:
    inst_dir = state_dir / "instances" / instance
    if not (inst_dir / "disk").is_file():
        raise NotFound(f"instance {instance} has no disk on this host")
    return inst_dir


def rescue(state_dir: Path, virsh: Virsh, args: Mapping[str, Any]) -> Dict[str, Any]:
    instance = uuid_arg(args, "uuid")
    inst_dir = _instance_dir(state_dir, instance)
    name = domain_name(instance)
    info = virsh.dominfo(instance)
    if info is None:
        raise NotFound(f"instance {instance} has no domain on this host")
    image = obj(args, "image", "rescue: ")
    digest = sha256(image, "sha256", "rescue: image.")
    fmt = str(image.get("format") or "qcow2")
    boot = _boot(args)
    disk_gb = integer(args, "disk_gb", "rescue: ", 0, 1 << 20) if "disk_gb" in args else 0
    kept = inst_dir / KEPT
    if not kept.exists():  # the first rescue: the definition and uses to go back to
        original = virsh.run(["dumpxml", name, "--inactive"])
        uses = _uses(inst_dir)
        atomic_write_bytes(inst_dir / KEPT_USES, json.dumps({"images": uses}).encode())
        atomic_write_bytes(kept, original.encode("utf-8"))
    original = kept.read_text()
    uses = json.loads((inst_dir / KEPT_USES).read_text())["images"]
    wanted = (
        [digest]
        + ([boot.kernel] if boot else [])
        + ([boot.ramdisk] if boot and boot.ramdisk else [])
    )
    cached: Dict[str, Path] = {}
    with images.cache_lock(state_dir):
        for each in wanted:
            entry = images.status(state_dir, each)
            if not entry.present:
                raise NotFound(f"image {each} is not in this host's cache")
            cached[each] = entry.path
        images.record_use(inst_dir, list(dict.fromkeys(uses + wanted)))
    images.check_cached(cached[digest], fmt, f"image {digest}")
    for leftover in RESCUE_FILES:  # a fresh rescue disk each time, as Nova's
        with contextlib.suppress(FileNotFoundError):
            (inst_dir / leftover).unlink()
    disk = inst_dir / RESCUE_DISK
    create_overlay(cached[digest], fmt, disk, disk_gb)
    kernel = initrd = None
    if boot is not None:
        kernel = copy_file(cached[boot.kernel], inst_dir / "kernel.rescue")
        if boot.ramdisk:
            initrd = copy_file(cached[boot.ramdisk], inst_dir / "ramdisk.rescue")
    xml_text, moved_to = rescue_xml(original, disk, kernel, initrd, boot.cmdline if boot else None)
    path = inst_dir / RESCUE_XML
    atomic_write_bytes(path, xml_text.encode("utf-8"))
    if info.state != "shutoff":
        virsh.destroy(name)
    try:
        virsh.define(str(path))
        virsh.start(name)
    except BaseException:
        with contextlib.suppress(Exception):  # never leave it on a half-made rescue
            _restore(inst_dir, virsh, instance)
        raise
    now = virsh.dominfo(instance)
    return {"state": now.state if now else "unknown", "root_device": moved_to}


def _uses(inst_dir: Path) -> List[str]:
    try:
        return list(json.loads((inst_dir / images.USES_FILE).read_text())["images"])
    except (OSError, ValueError, KeyError):
        return []


def rescue_xml(
    original: str,
    disk: Path,
    kernel: Optional[Path],
    initrd: Optional[Path],
    cmdline: Optional[str],
) -> "tuple[str, str]":
    """The rescue definition made from the server's own: the rescue disk in vda's
    place (target, PCI address, boot), vda moved to the first free name; and that name."""
    root = ET.fromstring(original)
    devices = root.find("devices")
    if devices is None:
        raise BadRequest("the domain has no devices")
    disks = devices.findall("disk")
    own = next((d for d in disks if _target(d) == "vda"), None)
    if own is None:
        raise BadRequest("the domain has no root disk (vda)")
    used = {_target(d) for d in disks}
    free = next((dev for dev in _DEVICES if dev not in used), None)
    if free is None:
        raise BadRequest("the domain has no free disk name for its root disk")
    target = own.find("target")
    assert target is not None
    target.set("dev", free)
    for tag in ("serial", "boot", "alias"):
        for element in own.findall(tag):
            own.remove(element)
    serial = ET.SubElement(own, "serial")
    serial.text = ROOT_SERIAL
    address = own.find("address")
    new = ET.Element("disk", {"type": "file", "device": "disk"})
    ET.SubElement(new, "driver", {"name": "qemu", "type": "qcow2"})
    ET.SubElement(new, "source", {"file": str(disk)})
    ET.SubElement(new, "target", {"dev": "vda", "bus": "virtio"})
    if address is not None:  # the first PCI slot stays the boot disk's
        own.remove(address)
        new.append(address)
    devices.insert(list(devices).index(own), new)
    os_el = root.find("os")
    if os_el is None:
        raise BadRequest("the domain has no <os>")
    for tag in ("kernel", "initrd", "cmdline", "boot"):
        for element in os_el.findall(tag):
            os_el.remove(element)
    if kernel is not None:
        ET.SubElement(os_el, "kernel").text = str(kernel)
        if initrd is not None:
            ET.SubElement(os_el, "initrd").text = str(initrd)
        ET.SubElement(os_el, "cmdline").text = cmdline or ""
    else:
        ET.SubElement(os_el, "boot", {"dev": "hd"})
    return ET.tostring(root, encoding="unicode"), free


def _target(disk: ET.Element) -> Optional[str]:
    target = disk.find("target")
    return target.get("dev") if target is not None else None


def _restore(inst_dir: Path, virsh: Virsh, instance: str) -> None:
    """The server's own definition and image uses back, the rescue's files gone; the
    kept definition last, since while it is there the server counts as rescued."""
    kept = inst_dir / KEPT
    info = virsh.dominfo(instance)
    if info is not None and info.state != "shutoff":
        virsh.destroy(domain_name(instance))
    virsh.define(str(kept))
    uses = inst_dir / KEPT_USES
    if uses.exists():
        images.record_use(inst_dir, json.loads(uses.read_text())["images"])
    for leftover in RESCUE_FILES:
        with contextlib.suppress(FileNotFoundError):
            (inst_dir / leftover).unlink()
    with contextlib.suppress(FileNotFoundError):
        uses.unlink()
    kept.unlink()


def unrescue(state_dir: Path, virsh: Virsh, args: Mapping[str, Any]) -> Dict[str, Any]:
    instance = uuid_arg(args, "uuid")
    inst_dir = _instance_dir(state_dir, instance)
    name = domain_name(instance)
    kept = inst_dir / KEPT
    info = virsh.dominfo(instance)
    if kept.exists():
        _restore(inst_dir, virsh, instance)
        info = virsh.dominfo(instance)
    if info is None:
        raise NotFound(f"instance {instance} has no domain on this host")
    if info.state == "shutoff":
        virsh.start(name)
    now = virsh.dominfo(instance)
    return {"state": now.state if now else "unknown", "unrescued": True}
