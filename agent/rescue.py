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
from typing import Any, Dict, Iterator, List, Mapping, Optional

from agent import images
from agent.errors import BadRequest, NotFound
from agent.fsutil import DIR_MODE, atomic_write_bytes, ensure_dir, flocked
from agent.ops import copy_file, create_overlay
from agent.specs import BootFiles, _boot, obj, sha256
from agent.specs import uuid as uuid_arg
from agent.virt import Virsh, domain_name

KEPT = "domain.unrescued.xml"
KEPT_USES = "images.unrescued.json"
RESCUE_XML = "domain.rescue.xml"
RESCUE_DISK = "disk.rescue"
RESCUE_FILES = (RESCUE_DISK, "kernel.rescue", "ramdisk.rescue", RESCUE_XML)
ROOT_SERIAL = "herd-rescued-root"
LOCK_TIMEOUT = 120.0
_DEVICES = [f"vd{c}" for c in "bcdefghijklmnopqrstuvwxyz"]


def _instance_dir(state_dir: Path, instance: str) -> Path:
    inst_dir = state_dir / "instances" / instance
    if not (inst_dir / "disk").is_file():
        raise NotFound(f"instance {instance} has no disk on this host")
    return inst_dir


def rescue(state_dir: Path, virsh: Virsh, args: Mapping[str, Any]) -> Dict[str, Any]:
    instance = uuid_arg(args, "uuid")
    with _instance_lock(state_dir, instance):
        return _rescue(state_dir, virsh, instance, args)


def _rescue(
    state_dir: Path, virsh: Virsh, instance: str, args: Mapping[str, Any]
) -> Dict[str, Any]:
    inst_dir = _instance_dir(state_dir, instance)
    name = domain_name(instance)
    info = virsh.dominfo(instance)
    if info is None:
        raise NotFound(f"instance {instance} has no domain on this host")
    image = obj(args, "image", "rescue: ")
    digest = sha256(image, "sha256", "rescue: image.")
    fmt = str(image.get("format") or "qcow2")
    boot = _boot(args)
    kept = inst_dir / KEPT
    if not kept.exists():  # the first rescue: the definition and uses to go back to
        original = virsh.run(["dumpxml", name, "--inactive"])
        if RESCUE_DISK in original or ROOT_SERIAL in original:
            raise BadRequest(
                f"the domain of {instance} is a rescue definition, but none of its own is "
                "kept here: refused rather than keep the rescue as its own"
            )
        atomic_write_bytes(inst_dir / KEPT_USES, json.dumps({"images": _uses(inst_dir)}).encode())
        atomic_write_bytes(kept, original.encode("utf-8"))
    try:
        return _boot_rescue(inst_dir, virsh, instance, info.state, digest, fmt, boot)
    except BaseException:
        with contextlib.suppress(Exception):  # never left on a half-made rescue
            if ROOT_SERIAL in virsh.run(["dumpxml", name, "--inactive"]):
                _restore(inst_dir, virsh, instance)
            else:  # it never got the rescue definition: only the files go
                _forget(inst_dir)
        raise


def _boot_rescue(
    inst_dir: Path,
    virsh: Virsh,
    instance: str,
    state: str,
    digest: str,
    fmt: str,
    boot: Optional[BootFiles],
) -> Dict[str, Any]:
    state_dir = inst_dir.parent.parent
    kept = inst_dir / KEPT
    uses = _kept_uses(inst_dir)
    wanted = [digest] + ([boot.kernel] if boot else [])
    if boot is not None and boot.ramdisk:
        wanted.append(boot.ramdisk)
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
    create_overlay(cached[digest], fmt, disk, 0)
    kernel = initrd = None
    if boot is not None:
        kernel = copy_file(cached[boot.kernel], inst_dir / "kernel.rescue")
        if boot.ramdisk:
            initrd = copy_file(cached[boot.ramdisk], inst_dir / "ramdisk.rescue")
    xml_text, moved_to = rescue_xml(
        kept.read_text(), disk, kernel, initrd, boot.cmdline if boot else None
    )
    path = inst_dir / RESCUE_XML
    atomic_write_bytes(path, xml_text.encode("utf-8"))
    name = domain_name(instance)
    if state != "shutoff":
        virsh.destroy(name)
    virsh.define(str(path))
    virsh.start(name)
    now = virsh.dominfo(instance)
    return {"state": now.state if now else "unknown", "root_device": moved_to}


@contextlib.contextmanager
def _instance_lock(state_dir: Path, instance: str) -> Iterator[None]:
    """The instance's job lock: a rescue or unrescue never interleaves with another, or
    with a job (build, delete, power) of the same server."""
    locks = ensure_dir(state_dir / "locks", DIR_MODE)
    with flocked(locks / f"{instance}.lock", LOCK_TIMEOUT, f"instance {instance}"):
        yield


def _kept_uses(inst_dir: Path) -> List[str]:
    try:
        return list(json.loads((inst_dir / KEPT_USES).read_text())["images"])
    except (OSError, ValueError, KeyError):
        return _uses(inst_dir)


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
    for tag in ("serial", "alias"):
        for element in own.findall(tag):
            own.remove(element)
    for device in devices:  # the rescue disk alone boots (libvirt refuses mixed orders)
        for element in device.findall("boot"):
            device.remove(element)
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
    else:  # the firmware boots the rescue disk, whatever the order of the PCI slots
        ET.SubElement(new, "boot", {"order": "1"})
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
    _forget(inst_dir)


def _forget(inst_dir: Path) -> None:
    """The rescue's files and the kept definition go, the image uses as they were."""
    images.record_use(inst_dir, _kept_uses(inst_dir))
    for leftover in RESCUE_FILES:
        with contextlib.suppress(FileNotFoundError):
            (inst_dir / leftover).unlink()
    with contextlib.suppress(FileNotFoundError):
        (inst_dir / KEPT_USES).unlink()
    with contextlib.suppress(FileNotFoundError):
        (inst_dir / KEPT).unlink()


def unrescue(state_dir: Path, virsh: Virsh, args: Mapping[str, Any]) -> Dict[str, Any]:
    """The server's own definition back; started unless ``start`` is false (a failed
    rescue of a stopped server puts it back stopped)."""
    instance = uuid_arg(args, "uuid")
    start = args.get("start", True)
    if not isinstance(start, bool):
        raise BadRequest("unrescue: start must be true or false")
    with _instance_lock(state_dir, instance):
        inst_dir = _instance_dir(state_dir, instance)
        if (inst_dir / KEPT).exists():
            _restore(inst_dir, virsh, instance)
        info = virsh.dominfo(instance)
        if info is None:
            raise NotFound(f"instance {instance} has no domain on this host")
        if (inst_dir / RESCUE_DISK).exists() or ROOT_SERIAL in virsh.run(
            ["dumpxml", domain_name(instance), "--inactive"]
        ):
            raise BadRequest(
                f"the domain of {instance} is still a rescue definition and none of its own "
                "is kept here: it needs an operator (`virsh edit`)"
            )
        if start and info.state == "shutoff":
            virsh.start(domain_name(instance))
        now = virsh.dominfo(instance)
    return {"state": now.state if now else "unknown", "unrescued": True}
