"""A shelved server's image: made by its shelve, the only copy of its disk while it is
shelved, and its base once unshelved. It goes when nothing needs it any more: when the
server is deleted, or shelved again (a newer image then holds its disk), unless another
server was booted from it meanwhile."""

from __future__ import annotations

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from orchestrator.db.models import Image, Instance, VmState

SHELVED_IMAGE = "shelved"  # the image_type of a shelve image (Nova's too)


async def drop_shelve_image(db: AsyncSession, server: Instance, image_id: int | None) -> None:
    """Delete image ``image_id`` if it is ``server``'s own shelve image and no live server
    but ``server`` itself (deleted, or moved on to a newer image) uses it."""
    image = await db.get(Image, image_id) if image_id else None
    if image is None or image.properties.get("image_type") != SHELVED_IMAGE:
        return
    if image.properties.get("instance_uuid") != server.uuid:
        return
    live = await db.exec(
        select(Instance.uuid).where(
            Instance.image_id == image.id, Instance.vm_state != VmState.DELETED
        )
    )
    if any(uuid != server.uuid for uuid in live.all()):
        return  # another server was booted from it
    if server.vm_state != VmState.DELETED and server.image_id == image.id:
        return  # still its base
    for row in (await db.exec(select(Instance).where(Instance.image_id == image.id))).all():
        row.image_id = None  # deleted servers keep their history, not the pointer
        db.add(row)
    await db.flush()
    await db.delete(image)
