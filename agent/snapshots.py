"""A server's root disk flattened into a new cached image (Nova's createImage).

A stopped server's disk is converted as it is. A running one's is first frozen by an
external disk-only snapshot (``virsh snapshot-create-as --disk-only``): QEMU writes to
a new overlay from that instant, so the disk underneath is a crash-consistent, read-only
picture to convert while the guest runs on; then the overlay is merged back into the
disk (``virsh blockcommit --active --pivot``) and removed. Only the root disk is
frozen: the seed and any volumes are left out of the snapshot (``snapshot=no``).

The domain must never be left running on an overlay (a later move carries ``disk``
only), so a snapshot that finds one from a call that died merges it back first, and
``settle`` does that alone for recovery.
"""

from __future__ import annotations

import contextlib
import secrets
from pathlib import Path
from typing import Any, Dict, Mapping

from agent import images, proc, volumes
from agent.errors import CommandError, NotFound
from agent.specs import uuid as uuid_arg
from agent.virt import Virsh

CONVERT_TIMEOUT = 1800.0
COMMIT_TIMEOUT = 600.0
OVERLAY_PREFIX = "disk.snapshot-"


def _disk(state_dir: Path, instance: str) -> Path:
    disk = state_dir / "instances" / instance / "disk"
    if not disk.is_file():
        raise NotFound(f"instance {instance} has no disk on this host")
    return disk


def _running(virsh: Virsh, instance: str) -> bool:
    info = virsh.dominfo(instance)
    return info is not None and info.state in ("running", "paused")


def settle(state_dir: Path, virsh: Virsh, args: Mapping[str, Any]) -> Dict[str, Any]:
    """Merge a leftover snapshot overlay back into the root disk and remove it: what a
    snapshot call that died mid-way leaves. Nothing to do is success."""
    instance = uuid_arg(args, "uuid")
    disk = _disk(state_dir, instance)
    merged = False
    if _running(virsh, instance):
        live = volumes.live_disks(virsh, instance)
        source = next((file for file, dev in live.items() if dev == "vda"), None)
        if source is not None and Path(source).name.startswith(OVERLAY_PREFIX):
            _commit(virsh, instance)
            merged = True
    referenced = set(volumes.defined_disks(virsh, instance))
    if _running(virsh, instance):
        referenced |= set(volumes.live_disks(virsh, instance))
    kept = []
    for leftover in disk.parent.glob(f"{OVERLAY_PREFIX}*"):
        if str(leftover) in referenced:
            kept.append(str(leftover))  # the guest's data since the snapshot: never removed
        else:
            leftover.unlink()
    if kept:
        raise CommandError(
            f"the guest's disk is still the snapshot overlay {kept[0]} (it stopped before "
            "the merge): start it and make an image again, which merges it back first"
        )
    return {"merged": merged}


def snapshot(
    state_dir: Path, virsh: Virsh, policy: images.ImagePolicy, args: Mapping[str, Any]
) -> Dict[str, Any]:
    """The root disk of instance ``uuid``, flattened (its base image folded in) into a
    qcow2 in this host's image cache, inspected as any image committed there is:
    ``{"sha256", "size", "live"}``."""
    instance = uuid_arg(args, "uuid")
    disk = _disk(state_dir, instance)
    settle(state_dir, virsh, args)
    part = images.incoming_dir(state_dir) / f"snapshot-{instance}-{secrets.token_hex(4)}.part"
    live = _running(virsh, instance)
    try:
        if live:
            _convert_live(state_dir, virsh, instance, disk, part)
        else:
            _convert(disk, part, force_share=False)
        digest = images.file_sha256(part)
        cached = images.commit(state_dir, digest, part, "qcow2", policy)
    finally:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
    return {"sha256": digest, "size": cached.size, "live": live}


def _convert(disk: Path, out: Path, *, force_share: bool, fmt: str = "qcow2") -> None:
    argv = ["qemu-img", "convert", "-q", "-f", fmt, "-O", "qcow2"]
    if force_share:  # the running QEMU holds the (now read-only) disk open
        argv.append("-U")
    proc.run([*argv, str(disk), str(out)], CONVERT_TIMEOUT, what="qemu-img convert")


def _convert_live(state_dir: Path, virsh: Virsh, instance: str, disk: Path, out: Path) -> None:
    overlay = disk.parent / f"{OVERLAY_PREFIX}{secrets.token_hex(4)}"
    convert_frozen(virsh, instance, "vda", disk, "qcow2", out, overlay)


def convert_frozen(
    virsh: Virsh, instance: str, dev: str, disk: Path, fmt: str, out: Path, overlay: Path
) -> None:
    """``disk`` (the running guest's ``dev``) converted into ``out`` while the guest
    runs on ``overlay``, then the overlay merged back and removed; the guest is checked
    to be on ``disk`` again."""
    specs = ["--diskspec", f"{dev},snapshot=external,file={overlay}"]
    for other in sorted(volumes.live_disks(virsh, instance).values()):
        if other != dev:
            specs += ["--diskspec", f"{other},snapshot=no"]
    virsh.run(
        ["snapshot-create-as", instance, "--disk-only", "--atomic", "--no-metadata", *specs],
        timeout=COMMIT_TIMEOUT,
    )
    try:
        _convert(disk, out, force_share=True, fmt=fmt)
    finally:
        _commit(virsh, instance, dev)
        live = volumes.live_disks(virsh, instance)
        if live.get(str(disk)) != dev:
            raise CommandError(f"after the merge the guest's {dev} is not {disk}: {live}")
        with contextlib.suppress(FileNotFoundError):
            overlay.unlink()


def _commit(virsh: Virsh, instance: str, dev: str = "vda") -> None:
    """The overlay's writes back into the disk, the guest switched back onto it.

    ``--shallow`` is what makes the disk the commit's base: without it virsh commits
    down to the deepest backing file, the cached base image every server built from it
    shares, and writes this guest's data into it."""
    try:
        virsh.run(
            ["blockcommit", instance, dev, "--active", "--shallow", "--pivot", "--wait"],
            timeout=COMMIT_TIMEOUT,
        )
    except CommandError as exc:
        raise CommandError(
            f"the guest still runs on its snapshot overlay ({exc}); `herd reconcile` or the "
            "next image create merges it back"
        ) from None
