"""The durable operations, run by a job runner: build and delete an instance.

Each reads what libvirt already has before changing anything, so repeating one is
harmless (Nova's build and delete paths, keyed by instance UUID). build records an
undo step after each thing it creates and, on failure, runs them newest first, so
a reschedule elsewhere starts from a clean host.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Tuple

from agent import confine, domain, image_format, images, proc, reach, volumes
from agent.errors import BadRequest, NotFound
from agent.fsutil import DIR_MODE, atomic_write_bytes, ensure_dir, guest_file_mode
from agent.specs import BuildSpec, DeleteSpec, LiveMigrateSpec, PowerSpec
from agent.virt import DomainInfo, Virsh, domain_name

log = logging.getLogger(__name__)

QEMU_IMG_TIMEOUT = 120.0
# A guest's files (disk, kernel and initramfs copies, seed) are the agent user's alone
# (fsutil.guest_file_mode): the seed carries user data, the disk the guest's own.
# libvirt's DAC driver hands them to the QEMU user when the guest starts (and back when
# it stops), as it does the base image.
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
    if spec.root_volume is not None:
        disk = volumes.volume_path(ctx.state_dir, spec.root_volume.args())
        if not disk.is_file():
            raise NotFound(f"the root volume's file {disk} is missing")
    disk_from = _disk_source(ctx, spec) if spec.disk_from is not None else None
    existing = virsh.dominfo(uuid)
    if existing is not None and spec.rebuild:
        if existing.name != name:
            raise BadRequest(f"the domain with UUID {uuid} is not herd's: {existing.name}")
        log.info("rebuild of %s: removing its domain and disk first", name)
        remove_domain(virsh, name)
        existing = None
    if existing is not None:
        return _adopt(virsh, existing, disk)

    undo: List[Callable[[], None]] = []
    try:
        if inst_dir.exists():
            # No domain, yet a directory: leftovers of a build that died half-way.
            log.info("removing stale %s", inst_dir)
            shutil.rmtree(inst_dir)
        ensure_dir(inst_dir.parent, DIR_MODE)
        ensure_dir(inst_dir, DIR_MODE)
        undo.append(lambda: shutil.rmtree(inst_dir, ignore_errors=True))
        cached = {}
        with images.cache_lock(ctx.state_dir):
            for digest in spec.image_digests:
                entry = images.status(ctx.state_dir, digest)
                if not entry.present:
                    raise NotFound(f"image {digest} is not in this host's cache")
                cached[digest] = entry.path
            images.record_use(inst_dir, spec.image_digests)
        for digest, declared in _declared_formats(spec):
            images.check_cached(cached[digest], declared, f"image {digest}")
        if spec.root_volume is not None:
            pass  # its disk is the volume, made already
        elif disk_from is not None:
            adopt_disk(
                disk_from,
                cached[spec.image.sha256],
                spec.image.format,
                disk,
                keep=spec.keep_disk_from,
                disk_gb=spec.flavor.disk_gb,
            )
        else:
            create_overlay(cached[spec.image.sha256], spec.image.format, disk, spec.flavor.disk_gb)
        files = domain.InstanceFiles(
            disk=disk, console_log=console_log_file(inst_dir), volumes=_volume_files(ctx, spec)
        )
        if spec.boot is not None:
            # Copies, as Nova keeps them: libvirt relabels a guest's kernel and initrd
            # while it runs, which must not touch the shared cache.
            kernel = copy_file(cached[spec.boot.kernel], inst_dir / "kernel")
            initrd = None
            if spec.boot.ramdisk:
                initrd = copy_file(cached[spec.boot.ramdisk], inst_dir / "ramdisk")
            files = dataclasses.replace(files, kernel=kernel, initrd=initrd)
        if spec.seed is not None:
            seed = inst_dir / "seed.iso"
            atomic_write_bytes(seed, spec.seed, mode=guest_file_mode())
            files = dataclasses.replace(files, seed=seed)
        xml_text = domain.render(spec, platform.machine(), files)
        xml_path = inst_dir / "domain.xml"
        atomic_write_bytes(xml_path, xml_text.encode("utf-8"))
        if not spec.define:
            log.info("prepared %s (%s) for an incoming migration", name, spec.instance.name)
            return {"domain": name, "state": "prepared", "disk_path": str(disk)}
        virsh.define(str(xml_path))
        undo.append(lambda: remove_domain(virsh, name))
        if spec.start:
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


def _volume_files(ctx: Context, spec: BuildSpec) -> Tuple[Path, ...]:
    """The files of the volumes the domain keeps: each must be here already (a move
    carries them before it builds)."""
    found = []
    for disk in spec.volumes:
        path = volumes.volume_path(ctx.state_dir, disk.args())
        if not path.is_file():
            raise NotFound(f"volume file {path} is not on this host")
        found.append(path)
    return tuple(found)


def _declared_formats(spec: BuildSpec) -> List[Tuple[str, str]]:
    """Each cached image the build uses, with the format it must be."""
    pairs = [] if spec.root_volume is not None else [(spec.image.sha256, spec.image.format)]
    if spec.boot is not None:
        pairs.append((spec.boot.kernel, "aki"))
        if spec.boot.ramdisk:
            pairs.append((spec.boot.ramdisk, "ari"))
    return pairs


def _disk_source(ctx: Context, spec: BuildSpec) -> Path:
    """``disk_from`` may only name a disk herd put here for this instance: one carried
    into the incoming directory (a migration), or the instance's resize stash."""
    assert spec.disk_from is not None
    roots = [images.incoming_dir(ctx.state_dir), stash_dir(ctx, spec.instance.uuid)]
    source = confine.entry_in(spec.disk_from, roots, "disk_from")
    confine.regular_file(source, "disk_from")
    return source


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
        os.chmod(tmp, guest_file_mode())
        os.replace(tmp, disk)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def adopt_disk(
    upload: Path, base: Path, base_format: str, disk: Path, *, keep: bool = False, disk_gb: int = 0
) -> None:
    """A moved server's disk: put in place (moved, or copied when ``keep``), pointed at
    this host's copy of its base image (the cache path may differ from the source
    host's), and grown to the flavor's size (a resize; disks never shrink).

    The disk must be a qcow2 overlay like the ones herd makes: its backing file is
    replaced without being opened (``rebase -u``), but anything else a header can
    point at (an external data file) is refused, before and after the rebase.
    """
    st = confine.regular_file(upload, "disk_from")
    images.check_cached(upload, "qcow2", f"disk_from {upload}", backing_allowed=True)
    tmp = disk.with_name(f".{disk.name}.tmp")
    try:
        if keep:
            _copy_regular(upload, tmp, st.st_size)
        else:
            shutil.move(str(upload), tmp)
        argv = [
            "qemu-img", "rebase", "-q", "-u", "-f", "qcow2",
            "-F", base_format, "-b", str(base), str(tmp),
        ]  # fmt: skip
        proc.run(argv, QEMU_IMG_TIMEOUT, what="qemu-img rebase")
        info = images.qemu_img_info(tmp, "qcow2")
        try:
            image_format.check_qemu_info(info, "qcow2", backing_allowed=True)
        except image_format.UnsafeImage as exc:
            raise images.FetchError(f"disk_from {upload} was refused: {exc}") from None
        if info.get("backing-filename") != str(base):
            raise images.FetchError(f"disk_from {upload}: rebase left another backing file")
        if disk_gb and int(info["virtual-size"]) < disk_gb << 30:
            proc.run(
                ["qemu-img", "resize", "-q", "-f", "qcow2", str(tmp), f"{disk_gb}G"],
                QEMU_IMG_TIMEOUT,
                what="qemu-img resize",
            )
        os.chmod(tmp, guest_file_mode())
        os.replace(tmp, disk)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _copy_regular(source: Path, target: Path, size: int) -> None:
    """Copy a regular file of ``size`` bytes, and not a byte more if it grows."""
    with open(source, "rb") as reader, open(target, "xb") as out:
        left = size
        while left > 0:
            chunk = reader.read(min(left, 1 << 20))
            if not chunk:
                break
            out.write(chunk)
            left -= len(chunk)
        if reader.read(1):
            raise BadRequest(f"{source} grew while it was copied")


def console_log_file(inst_dir: Path) -> Path:
    """The guest's console log, made by the agent before virtlogd first opens it.

    virtlogd (root) appends to a file that exists and creates a missing one 0600 root,
    which a non-root agent could then never read back (`server console-log`); made
    here it stays the agent user's, as libvirt does not relabel a virtlogd log.
    """
    path = inst_dir / "console.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    os.close(fd)
    return path


def copy_file(source: Path, target: Path) -> Path:
    """A copy of a cached file (kernel, initramfs) for one guest, 0600 like its disk."""
    tmp = target.with_name(f".{target.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    _copy_regular(source, tmp, os.stat(source).st_size)
    os.chmod(tmp, guest_file_mode())
    os.replace(tmp, target)
    return target


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


POLL = 0.5


def _wait_for(virsh: Virsh, uuid: str, states: tuple, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        info = virsh.dominfo(uuid)
        if info is None or info.state in states:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL)


def herd_domain(virsh: Virsh, uuid: str) -> DomainInfo:
    """The domain of instance ``uuid`` here; never one with that UUID that is not herd's."""
    info = virsh.dominfo(uuid)
    if info is None:
        raise NotFound(f"no domain for instance {uuid} on this host")
    if info.name != domain_name(uuid):
        raise BadRequest(f"the domain with UUID {uuid} is not herd's: {info.name}")
    return info


def power(ctx: Context, spec: PowerSpec) -> Dict[str, Any]:
    """One power action, idempotent: an action whose end state already holds is done.

    stop and soft reboot ask the guest first (ACPI) and force it after ``timeout``, as
    Nova's libvirt driver does; the result says whether it had to.
    """
    virsh = ctx.virsh
    info = herd_domain(virsh, spec.uuid)
    name = info.name
    state, forced = info.state, False
    action = spec.action
    if action == "start" and state in _STARTABLE:
        virsh.start(name)  # restores a managed save, if any
    elif action in ("stop", "reboot"):
        if state == "paused":
            virsh.resume(name)  # a paused guest cannot hear ACPI
        if state not in _STARTABLE:
            virsh.shutdown(name)
            if not _wait_for(virsh, spec.uuid, _STARTABLE, spec.timeout):
                forced = virsh.destroy(name)
        if action == "reboot":
            virsh.start(name)
    elif action == "hard_reboot":
        virsh.destroy(name)
        virsh.start(name)
    elif action == "pause" and state == "running":
        virsh.suspend(name)
    elif action == "unpause" and state == "paused":
        virsh.resume(name)
    elif action == "suspend" and state in ("running", "paused"):
        virsh.managed_save(name)
    elif action == "resume" and state in _STARTABLE:
        virsh.start(name)
    after = virsh.dominfo(spec.uuid)
    result = {"state": after.state if after else "unknown", "forced": forced}
    if action == "suspend":
        result["managed_save"] = virsh.has_managed_save(name)
    log.info(
        "%s %s: %s -> %s%s", action, name, state, result["state"], " (forced)" if forced else ""
    )
    return result


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
    for path in (inst_dir, stash_dir(ctx, spec.uuid)):  # and a resize's kept disk
        if path.exists():
            shutil.rmtree(path)
    carried = incoming_disk(ctx, spec.uuid)  # a disk a migration was carrying here
    if carried.exists():
        carried.unlink()
    log.info("deleted %s (existed: %s)", spec.uuid, existed)
    return {"existed": existed}


def incoming_disk(ctx: Context, uuid: str) -> Path:
    """Where a cold migration or resize carries the server's disk to (herd's
    ``carry_disk``), until the build on this host takes it."""
    return images.incoming_dir(ctx.state_dir) / f"{uuid}.migrating"


def stash_dir(ctx: Context, uuid: str) -> Path:
    return ctx.state_dir / "instances" / f"{uuid}.resize"


def resize_stash(ctx: Context, spec: DeleteSpec) -> Dict[str, Any]:
    """The source half of a resize: the domain goes, its directory is kept aside whole
    (disk, and the images.json that keeps its base image from being pruned) until the
    resize is confirmed (drop) or reverted (built again from it). Nova's ``_resize``
    directory. The caller has shut the guest down first; a domain still running here
    is forced off."""
    virsh = ctx.virsh
    name = domain_name(spec.uuid)
    inst_dir, stash = ctx.instance_dir(spec.uuid), stash_dir(ctx, spec.uuid)
    info = virsh.dominfo(spec.uuid)
    if info is not None:
        if info.name != name:
            raise BadRequest(f"the domain with UUID {spec.uuid} is not herd's: {info.name}")
        remove_domain(virsh, name)
    if inst_dir.exists():
        if stash.exists():
            # Left by a resize whose end could not remove it (herd's DB says none is
            # open, or it would not have started this one): stale.
            log.warning("replacing the stale %s", stash)
            shutil.rmtree(stash)
        os.rename(inst_dir, stash)
    elif not stash.exists():
        raise NotFound(f"instance {spec.uuid} has no directory on this host")
    log.info("stashed %s for a resize", name)
    return {"disk": str(stash / "disk")}


def resize_drop(ctx: Context, spec: DeleteSpec) -> Dict[str, Any]:
    """A resize is over (confirmed, or reverted from the stash): the stash goes."""
    stash = stash_dir(ctx, spec.uuid)
    existed = stash.exists()
    if existed:
        shutil.rmtree(stash)
    return {"existed": existed}


def live_migrate(ctx: Context, spec: LiveMigrateSpec) -> Dict[str, Any]:
    """The source half of a live migration; the destination was prepared by a build
    with define=false. libvirt keeps the guest running here until the destination has
    it, so a failure leaves it where it was; on success the domain is gone from here
    (--undefinesource) and so goes its directory."""
    virsh = ctx.virsh
    # The tunnel's socket is herd's, in state_dir: the only file this job may unlink.
    socket = confine.entry_in(spec.socket, [ctx.state_dir], "socket")
    info = herd_domain(virsh, spec.uuid)
    name = info.name
    if info.state != "running":
        raise BadRequest(f"{name} is {info.state}: only a running guest migrates live")
    ports = (spec.port, spec.disks_port)
    try:
        virsh.migrate_live(
            name, f"qemu+unix:///system?socket={socket}", spec.address, ports, spec.timeout
        )
    finally:
        reach.unlink_socket(socket)
    inst_dir = ctx.instance_dir(spec.uuid)
    if inst_dir.exists():
        shutil.rmtree(inst_dir)
    log.info("%s migrated live to %s", name, spec.address)
    return {"state": "migrated"}


@dataclass(frozen=True)
class JobKind:
    """How to check a job's args and run it."""

    parse: Callable[[Mapping[str, Any]], Any]
    run: Callable[[Context, Any], Dict[str, Any]]


JOBS: Dict[str, JobKind] = {
    "build": JobKind(parse=BuildSpec.from_args, run=build),
    "delete": JobKind(parse=DeleteSpec.from_args, run=delete),
    "power": JobKind(parse=PowerSpec.from_args, run=power),
    "resize_stash": JobKind(parse=DeleteSpec.from_args, run=resize_stash),
    "resize_drop": JobKind(parse=DeleteSpec.from_args, run=resize_drop),
    "live_migrate": JobKind(parse=LiveMigrateSpec.from_args, run=live_migrate),
}
