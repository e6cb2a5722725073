"""`herd server image create` (Nova's createImage): the server's root disk flattened
into a new image, registered like any other and bootable anywhere.

The host makes the image (agent/snapshots.py): a running guest's disk is frozen by a
disk-only snapshot and converted while the guest runs on, so the image is
crash-consistent, as Nova's live snapshot is. The image stays in that host's cache and
is registered with the source ``cache://HOST``: another host that needs it gets it
relayed through this machine (image_delivery.py), as a migration carries a disk, so
it needs no store of its own, and reconcile never prunes it from its source's cache.

Journalled in two steps: ``snapshot`` (the host's call) and ``register`` (the image's
row, with the sha256 the host reported, journalled before it is written).
"""

from __future__ import annotations

import contextlib
from typing import ClassVar

from sqlmodel import select

from orchestrator.conductor.hosts import target_of
from orchestrator.conductor.journal import TaskHandle
from orchestrator.conductor.manager import Conductor
from orchestrator.conductor.outcomes import Outcome, guard_outcome
from orchestrator.conductor.tasks.attach import finish
from orchestrator.conductor.tasks.base import Resumed, Task
from orchestrator.db.duplicates import duplicates_conflict
from orchestrator.db.engine import Database
from orchestrator.db.models import Host, Image, Instance, utcnow
from orchestrator.errors import Conflict, HerdError, InvalidInput
from orchestrator.names import check_name

CACHE_SOURCE = "cache://"
# Properties a server's image keeps from its base: how to boot it.
BOOT_PROPERTIES = ("kernel_id", "ramdisk_id", "os_command_line")


def cache_source(host: Host) -> str:
    return f"{CACHE_SOURCE}{host.name}"


async def register_image(
    db: Database,
    row: Instance,
    host: Host,
    name: str,
    sha256: str,
    size: int,
    *,
    image_type: str = "snapshot",
) -> int:
    """The image's row (its id): its base's boot properties, the server it came from.
    Conflict if another image has the name; this very image, written by a runner that
    died before it finished its task, counts as registered."""
    taken = f"an image named {name!r} already exists"
    try:
        async with duplicates_conflict("images", taken), db.session() as session:
            base = await session.get(Image, row.image_id) if row.image_id else None
            kept = {k: v for k, v in (base.properties if base else {}).items()
                    if k in BOOT_PROPERTIES}  # fmt: skip
            image = Image(
                name=name, source=cache_source(host), format="qcow2",
                sha256=sha256, size=size, min_disk_gb=row.disk_gb,
                min_ram_mb=base.min_ram_mb if base else 0, managed_by="cli",
                properties={**kept, "image_type": image_type, "instance_uuid": row.uuid,
                            "base_image_ref": base_image_ref(base)},
                created_at=utcnow(), updated_at=utcnow(),
            )  # fmt: skip
            session.add(image)
            await session.flush()
            assert image.id is not None
            return image.id
    except Conflict:
        async with db.read() as session:
            found = (await session.exec(select(Image).where(Image.name == name))).first()
        if (
            found is not None
            and found.id is not None
            and found.sha256 == sha256
            and found.properties.get("instance_uuid") == row.uuid
        ):
            return found.id
        raise


def base_image_ref(base: Image | None) -> str:
    """The image the server was first booted from: a shelved server, unshelved, runs on
    its shelve image, but its image made later descends from what it was booted from."""
    if base is None:
        return ""
    if base.properties.get("image_type") == "shelved":
        return str(base.properties.get("base_image_ref") or base.name)
    return base.name


class ImageCreateTask(Task):
    kind = "image_create"
    RECOVERY: ClassVar[dict[str, str]] = {
        "snapshot": "rolled back: the guest is merged back onto its own disk if the dead "
        "call left it running on a snapshot overlay; no image is registered",
        "register": "finished: the image the host made (its sha256 was journalled) is registered",
    }

    def __init__(self, conductor: Conductor, instance: Instance, name: str) -> None:
        super().__init__(conductor)
        self.instance, self.name = instance, name

    async def _execute(self) -> Outcome:
        try:
            await self._check_name()
            row, action_id, host = await self.steps.begin(self.instance, "image_create")
        except (Conflict, InvalidInput) as exc:
            return guard_outcome(self.instance, str(exc))
        if host is None:
            return await self.steps.abort(row, action_id, None, "the server is on no host")
        await self.open_journal(
            row, action_id, step="snapshot", source_host_id=host.id, inputs={"name": self.name}
        )
        self.progress.update(row, "imaging its disk", host=host.name)
        try:
            made = await self.steps.stepped(
                action_id, "snapshot", host.name,
                self.agent.image_snapshot(target_of(host), row.uuid),
                lambda m: f"{m['size']} bytes, sha256 {m['sha256'][:12]}"
                + (", taken while it ran" if m["live"] else ""),
            )  # fmt: skip
        except HerdError as exc:
            with contextlib.suppress(HerdError):  # never leave it on an overlay
                await self.agent.image_snapshot_settle(target_of(host), row.uuid)
            return await self.steps.abort(row, action_id, host.name, f"image create: {exc}")
        assert self.journal is not None
        await self.journal.step("register", sha256=made["sha256"], size=made["size"])
        return await self._register(row, action_id, host, made["sha256"], made["size"])

    async def _check_name(self) -> None:
        check_name("image", self.name)
        async with self.db.read() as db:
            if (await db.exec(select(Image.id).where(Image.name == self.name))).first():
                raise Conflict(f"an image named {self.name!r} already exists")

    async def _register(
        self, row: Instance, action_id: int, host: Host, sha256: str, size: int
    ) -> Outcome:
        try:
            await register_image(self.db, row, host, self.name, sha256, size)
        except Conflict as exc:
            return await self.steps.abort(row, action_id, host.name, f"image create: {exc}")
        await self.note_registered(action_id, host, sha256)
        return await finish(self, row, action_id, host)

    async def note_registered(self, action_id: int, host: Host, sha256: str) -> None:
        step = await self.steps.step(action_id, "register", host.name, owned=False)
        await self.steps.end_step(step, True, f"image {self.name} ({sha256[:12]})")

    @classmethod
    async def resume(cls, conductor: Conductor, handle: TaskHandle, found: Resumed) -> Outcome:
        task = cls(conductor, found.instance, handle.inputs["name"])
        await task.adopt(handle, found.died)
        assert found.source is not None
        inputs = handle.inputs
        if handle.current_step == "register" and "sha256" in inputs:
            await task.note(f"registering image {task.name} made on {found.source.name}")
            return await task._register(
                found.instance, found.action_id, found.source, inputs["sha256"], inputs["size"]
            )
        with contextlib.suppress(HerdError):
            await task.agent.image_snapshot_settle(target_of(found.source), found.instance.uuid)
        await task.note(f"no image made: {found.source.name}'s guest is on its own disk")
        return await task.steps.abort(
            found.instance, found.action_id, found.source.name,
            "image create stopped at snapshot: rolled back by recovery",
        )  # fmt: skip
