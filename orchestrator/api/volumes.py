"""Volumes as the CLI reads them: by name or UUID, with their host and server."""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import col, or_, select

from orchestrator.db.engine import Database
from orchestrator.db.models import Host, Instance, Volume, VolumeSnapshot
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


@dataclass(frozen=True)
class SnapshotView:
    snapshot: VolumeSnapshot
    volume: str  # its volume, by name
    host: str

    def to_dict(self) -> dict[str, object]:
        s = self.snapshot
        return {
            "name": s.name, "uuid": s.uuid, "status": s.status, "size_gb": s.size_gb,
            "volume": self.volume, "host": self.host, "path": s.path, "error": s.error,
            "created_at": s.created_at.isoformat() if s.created_at else None,
        }  # fmt: skip


async def list_snapshots(
    db: Database, names: list[str] | None = None, *, volume: str | None = None
) -> list[SnapshotView]:
    """Every snapshot (of ``volume``, or those named, each of which must exist)."""
    async with db.read() as session:
        query = (
            select(VolumeSnapshot, Volume.name, Host.name)
            .join(Volume, col(Volume.id) == col(VolumeSnapshot.volume_id))
            .join(Host, col(Host.id) == col(Volume.host_id))
            .order_by(col(VolumeSnapshot.created_at), col(VolumeSnapshot.name))
        )
        if names:
            query = query.where(
                or_(col(VolumeSnapshot.name).in_(names), col(VolumeSnapshot.uuid).in_(names))
            )
        if volume is not None:
            query = query.where(or_(col(Volume.name) == volume, col(Volume.uuid) == volume))
        rows = (await session.exec(query)).all()
    views = [SnapshotView(s, v, h) for s, v, h in rows]
    for name in names or ():
        if not any(name in (v.snapshot.name, v.snapshot.uuid) for v in views):
            raise NotFound(f"snapshot {name!r} not found")
    return views


async def find_snapshot(db: Database, name: str) -> SnapshotView:
    (view,) = [
        v for v in await list_snapshots(db, [name]) if name in (v.snapshot.name, v.snapshot.uuid)
    ]
    return view
