"""Volumes as the CLI reads them: by name or UUID, with their host and server."""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import col, or_, select

from orchestrator.db.engine import Database
from orchestrator.db.models import Host, Instance, Volume
from orchestrator.errors import NotFound


@dataclass(frozen=True)
class VolumeView:
    volume: Volume
    host: str
    server: str | None  # the server it is attached to, by name
    # Its host's status: a volume on a host that is down is still listed, and says so.
    host_status: str = "up"

    def to_dict(self) -> dict[str, object]:
        v = self.volume
        return {
            "name": v.name, "uuid": v.uuid, "status": v.status, "size_gb": v.size_gb,
            "format": v.format, "host": self.host, "host_status": self.host_status,
            "server": self.server,
            "server_uuid": v.instance_uuid, "device": v.device, "image": v.image_name,
            "path": v.path, "error": v.error,
            "created_at": v.created_at.isoformat() if v.created_at else None,
        }  # fmt: skip


async def list_volumes(
    db: Database, names: list[str] | None = None, *, server_uuid: str | None = None
) -> list[VolumeView]:
    """Every volume (or those named, by name or UUID, each of which must exist)."""
    async with db.read() as session:
        query = (
            select(Volume, Host, Instance.name)
            .join(Host, col(Host.id) == col(Volume.host_id))
            .join(Instance, col(Instance.uuid) == col(Volume.instance_uuid), isouter=True)
            .order_by(col(Volume.name))
        )
        if names:
            query = query.where(or_(col(Volume.name).in_(names), col(Volume.uuid).in_(names)))
        if server_uuid is not None:
            query = query.where(col(Volume.instance_uuid) == server_uuid)
        rows = (await session.exec(query)).all()
    views = [VolumeView(volume, host.name, server, host.status) for volume, host, server in rows]
    for name in names or ():
        if not any(name in (v.volume.name, v.volume.uuid) for v in views):
            raise NotFound(f"volume {name!r} not found")
    return views


async def find_volume(db: Database, name: str) -> VolumeView:
    (view,) = [v for v in await list_volumes(db, [name]) if name in (v.volume.name, v.volume.uuid)]
    return view
