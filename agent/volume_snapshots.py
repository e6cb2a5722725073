"""Volume snapshots on the host: a volume's file copied, flattened into qcow2, beside it
(``<volume dir>/<volume>.snapshots/<snapshot>.qcow2``); a revert copies one back over
the volume.

A volume attached to a running guest is copied as `server image create` copies a root
disk: an external disk-only snapshot of that one disk freezes it while the guest writes
to an overlay (kept in the snapshots directory), the frozen file is converted, and the
overlay is merged back (``blockcommit --active --shallow --pivot``), so the copy is
crash-consistent and the guest never stops. Every call is idempotent by the snapshot's
UUID; the copy is made under a temporary name and renamed, so a snapshot file is whole
or absent.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from agent import proc, snapshots, volumes
from agent.errors import BadRequest, CommandError, NotFound
from agent.fsutil import DIR_MODE, ensure_dir
from agent.specs import uuid as uuid_arg
from agent.virt import Virsh

OVERLAY_PREFIX = "overlay-"


def snapshots_dir(state_dir: Path, args: Mapping[str, Any]) -> Path:
    return volumes.volumes_dir(state_dir, args) / f"{uuid_arg(args, 'volume')}.snapshots"


def snapshot_path(state_dir: Path, args: Mapping[str, Any]) -> Path:
    return snapshots_dir(state_dir, args) / f"{uuid_arg(args, 'snapshot')}.qcow2"


def _attached_to(virsh: Virsh, args: Mapping[str, Any], source: Path) -> Optional[str]:
    """The device of the volume in the running guest ``uuid`` names (None: not running,
    or not attached there)."""
    if args.get("uuid") is None:
        return None
    instance = uuid_arg(args, "uuid")
    info = virsh.dominfo(instance)
    if info is None or info.state not in ("running", "paused"):
        return None
    return volumes.live_disks(virsh, instance).get(str(source))


def _settle(virsh: Virsh, args: Mapping[str, Any], source: Path, directory: Path) -> None:
    """A call that died mid-way may have left the guest writing to an overlay in the
    snapshots directory: merged back first, so the volume file is the volume again."""
    if args.get("uuid") is None or not directory.is_dir():
        return
    instance = uuid_arg(args, "uuid")
    info = virsh.dominfo(instance)
    if info is not None and info.state in ("running", "paused"):
        for file, dev in volumes.live_disks(virsh, instance).items():
            if Path(file).parent == directory and Path(file).name.startswith(OVERLAY_PREFIX):
                snapshots._commit(virsh, instance, dev)
    referenced = set(volumes.live_disks(virsh, instance)) if info is not None else set()
    for leftover in directory.glob(f"{OVERLAY_PREFIX}*"):
        if str(leftover) not in referenced:
            leftover.unlink()


def create(state_dir: Path, virsh: Virsh, args: Mapping[str, Any]) -> Dict[str, Any]:
    source = volumes.volume_path(state_dir, args)
    fmt = volumes.volume_format(args)
    if not source.is_file():
        raise NotFound(f"volume file {source} is missing")
    target = snapshot_path(state_dir, args)
    directory = target.parent
    _settle(virsh, args, source, directory)
    if target.exists():  # a repeated call
        return {"path": str(target), "size": target.stat().st_size, "live": False}
    ensure_dir(directory, DIR_MODE)
    part = directory / f".{target.name}.part"
    dev = _attached_to(virsh, args, source)
    try:
        if dev is not None:
            overlay = directory / f"{OVERLAY_PREFIX}{secrets.token_hex(4)}"
            snapshots.convert_frozen(virsh, uuid_arg(args, "uuid"), dev, source, fmt, part, overlay)
        else:
            snapshots._convert(source, part, force_share=False, fmt=fmt)
        os.replace(part, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
    return {"path": str(target), "size": target.stat().st_size, "live": dev is not None}


def delete(state_dir: Path, args: Mapping[str, Any]) -> Dict[str, Any]:
    target = snapshot_path(state_dir, args)
    existed = target.exists()
    with contextlib.suppress(FileNotFoundError):
        target.unlink()
    # The directory stays (a create may be writing into it): the volume's delete
    # removes it.
    return {"existed": existed}


def revert(state_dir: Path, virsh: Virsh, args: Mapping[str, Any]) -> Dict[str, Any]:
    """The volume's file replaced by a copy of the snapshot, in the volume's format;
    refused while any domain here has the volume as a disk."""
    source = volumes.volume_path(state_dir, args)
    fmt = volumes.volume_format(args)
    target = snapshot_path(state_dir, args)
    if not target.is_file():
        raise NotFound(f"snapshot file {target} is missing")
    if not source.is_file():
        raise NotFound(f"volume file {source} is missing")
    users = volumes.domains_using(virsh, source)
    if users:
        raise BadRequest(f"volume file {source} is a disk of {', '.join(users)}: detach it first")
    part = source.with_name(f".{source.name}.revert")
    argv = ["qemu-img", "convert", "-q", "-f", "qcow2", "-O", fmt, str(target), str(part)]
    try:
        proc.run(argv, snapshots.CONVERT_TIMEOUT, what="qemu-img convert")
        os.chmod(part, source.stat().st_mode & 0o7777)
        os.replace(part, source)
    except OSError as exc:
        raise CommandError(f"revert of {source}: {exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
    return {"path": str(source), "size": source.stat().st_size}
