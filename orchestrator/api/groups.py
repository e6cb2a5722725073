"""Server groups: (anti-)affinity policies and their members."""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import col, select

from orchestrator.db.duplicates import duplicates_conflict
from orchestrator.db.engine import Database
from orchestrator.db.models import (
    Host,
    Instance,
    ServerGroup,
    VmState,
    utcnow,
)
from orchestrator.errors import Conflict, InvalidInput, NotFound
from orchestrator.names import check_name
from orchestrator.scheduler.request import GROUP_POLICIES


@dataclass(frozen=True)
class GroupView:
    group: ServerGroup
    members: list[tuple[str, str | None]]  # (server name, host name)


async def create_group(db: Database, name: str, policy: str) -> ServerGroup:
    check_name("group", name)
    if policy not in GROUP_POLICIES:
        raise InvalidInput(f"policy {policy!r} is not one of {', '.join(GROUP_POLICIES)}")
    taken = f"a server group named {name!r} already exists"
    async with duplicates_conflict("server_groups", taken), db.session() as session:
        exists = (await session.exec(select(ServerGroup).where(ServerGroup.name == name))).first()
        if exists is not None:
            raise Conflict(taken)
        group = ServerGroup(name=name, policy=policy, created_at=utcnow())
        session.add(group)
    return group


async def list_groups(db: Database, names: list[str] | None = None) -> list[GroupView]:
    async with db.read() as session:
        query = select(ServerGroup).order_by(ServerGroup.name)
        if names:
            query = query.where(col(ServerGroup.name).in_(names))
        groups = (await session.exec(query)).all()
        missing = set(names or ()) - {g.name for g in groups}
        if missing:
            raise NotFound(f"server group {sorted(missing)[0]!r} not found")
        rows = (
            await session.exec(
                select(Instance.group_id, Instance.name, Host.name)
                .join(Host, col(Host.id) == col(Instance.host_id), isouter=True)
                .where(Instance.group_id.is_not(None), Instance.vm_state != VmState.DELETED)  # type: ignore[union-attr]
                .order_by(Instance.name)
            )
        ).all()
    members: dict[int, list[tuple[str, str | None]]] = {}
    for group_id, server, host in rows:
        members.setdefault(group_id, []).append((server, host))
    return [GroupView(g, members.get(g.id or 0, [])) for g in groups]


async def delete_group(db: Database, name: str) -> None:
    (view,) = await list_groups(db, [name])
    if view.members:
        raise Conflict(
            f"server group {name!r} still has {len(view.members)} server(s): "
            f"{', '.join(m for m, _ in view.members[:5])}; delete them first"
        )
    async with db.session() as session:
        group = await session.get(ServerGroup, view.group.id)
        if group is not None:
            await session.delete(group)
