"""The durable operations, run by a job runner: build and delete an instance.

Each reads what libvirt already has before changing anything, so repeating one is
harmless (Nova's build and delete paths, keyed by instance UUID). build records an
undo step after each thing it creates and, on failure, runs them newest first, so
a reschedule elsewhere starts from a clean host.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping

from agent import domain, images, proc
from agent.errors import BadRequest, NotFound
from agent.fsutil import DIR_MODE, FILE_MODE, atomic_write_bytes, ensure_dir
from agent.specs import BuildSpec, DeleteSpec
from agent.virt import DomainInfo, Virsh, domain_name

log = logging.getLogger(__name__)

QEMU_IMG_TIMEOUT = 120.0
# A domain in one of these states is ours to start; any other state (running,
# paused, shutting down...) means someone is using it: leave it alone.
_STARTABLE = ("shutoff", "crashed")


@dataclass(frozen=True)
class Context:
    """What a job needs from the session that started it."""

    state_dir: Path
    virsh: Virsh

    def instance_dir(self, uuid: str) -> Path:
        return self.state_dir / "instances" / uuid


def build(ctx: Context, spec: BuildSpec) -> Dict[str, Any]:
    uuid = spec.instance.uuid
    name = domain_name(uuid)
    virsh = ctx.virsh
    inst_dir = ctx.instance_dir(uuid)
    disk = inst_dir / "disk"
    existing = virsh.dominfo(uuid)
    if existing is not None:
        return _adopt(virsh, existing, disk)

    base = images.status(ctx.state_dir, spec.image.sha256)
    if not base.present:
        raise NotFound(f"image {spec.image.sha256} is not in this host's cache")

    undo: List[Callable[[], None]] = []
    try:
        if inst_dir.exists():
            # No domain, yet a directory: leftovers of a build that died half-way.
            log.info("removing stale %s", inst_dir)
            shutil.rmtree(inst_dir)
        ensure_dir(inst_dir.parent, DIR_MODE)
        ensure_dir(inst_dir, DIR_MODE)
        undo.append(lambda: shutil.rmtree(inst_dir, ignore_errors=True))
        create_overlay(base.path, spec.image.format, disk, spec.flavor.disk_gb)
        xml_text = domain.render(spec, platform.machine(), disk, inst_dir / "console.log")
        xml_path = inst_dir / "domain.xml"
        atomic_write_bytes(xml_path, xml_text.encode("utf-8"))
        virsh.define(str(xml_path))
        undo.append(lambda: remove_domain(virsh, name))
        virsh.start(name)
    except BaseException:
        _rollback(undo)
        raise
    info = virsh.dominfo(uuid)
    log.info("built %s (%s)", name, spec.instance.name)
    return {"domain": name, "state": info.state if info else "unknown", "disk_path": str(disk)}


def _adopt(virsh: Virsh, existing: DomainInfo, disk: Path) -> Dict[str, Any]:
    """A repeated build: the domain is there already; start it if it is shut off."""
    name = domain_name(existing.uuid)
    if existing.name != name:
        raise BadRequest(
            f"a domain with UUID {existing.uuid} exists and is not herd's: {existing.name}"
        )
    state = existing.state
    if state in _STARTABLE:
        log.info("%s exists and is %s: starting it", name, state)
        virsh.start(name)
        info = virsh.dominfo(existing.uuid)
        state = info.state if info else "unknown"
    else:
        log.info("%s exists and is %s: nothing to do", name, state)
    return {"domain": name, "state": state, "disk_path": str(disk)}


def create_overlay(base: Path, base_format: str, disk: Path, disk_gb: int) -> None:
    """A qcow2 overlay on the cached base image, created under a temporary name.

    The rename makes the disk appear whole or not at all. ``-F`` records the base's
    format in the overlay: libvirt refuses to guess a backing format.
    """
    tmp = disk.with_name(f".{disk.name}.tmp")
    argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", base_format, "-b", str(base), str(tmp)]
    if disk_gb:
        argv.append(f"{disk_gb}G")
    try:
        proc.run(argv, QEMU_IMG_TIMEOUT, what="qemu-img create")
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, disk)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def remove_domain(virsh: Virsh, name: str) -> None:
    virsh.destroy(name)
    virsh.undefine(name)


def _rollback(undo: List[Callable[[], None]]) -> None:
    """Undo newest first; a failing step is logged, never allowed to hide the cause."""
    for step in reversed(undo):
        try:
            step()
        except Exception:
            log.exception("cleanup step failed")


def delete(ctx: Context, spec: DeleteSpec) -> Dict[str, Any]:
    virsh = ctx.virsh
    inst_dir = ctx.instance_dir(spec.uuid)
    info = virsh.dominfo(spec.uuid)
    existed = info is not None or inst_dir.exists()
    if info is not None:
        name = domain_name(spec.uuid)
        if info.name != name:
            raise BadRequest(f"the domain with UUID {spec.uuid} is not herd's: {info.name}")
        if info.state != "shutoff":
            virsh.destroy(name)
        virsh.undefine(name)
    if inst_dir.exists():
        shutil.rmtree(inst_dir)
    log.info("deleted %s (existed: %s)", spec.uuid, existed)
    return {"existed": existed}


@dataclass(frozen=True)
class JobKind:
    """How to check a job's args and run it."""

    parse: Callable[[Mapping[str, Any]], Any]
    run: Callable[[Context, Any], Dict[str, Any]]


JOBS: Dict[str, JobKind] = {
    "build": JobKind(parse=BuildSpec.from_args, run=build),
    "delete": JobKind(parse=DeleteSpec.from_args, run=delete),
}
