"""Hosts as the operator sees them: their usage from the scheduler's own view, found by
name, enabled or disabled for scheduling."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlmodel import select

from orchestrator.db.engine import Database
from orchestrator.db.models import Host, utcnow
from orchestrator.errors import NotFound
from orchestrator.names import choices


async def hosts_last_seen(db: Database) -> dict[str, datetime | None]:
    """When each host's facts were last read, by name: how old the knowledge is that a
    dry run planned from (None: never reached)."""
    async with db.read() as session:
        rows = (await session.exec(select(Host.name, Host.last_seen_at).order_by(Host.name))).all()
    return {name: seen for name, seen in rows}


@dataclass
class HostView:
    host: Host
    used_vcpus: int
    used_ram_mb: int
    used_disk_gb: int
    instances: int


async def list_hosts(db: Database) -> list[HostView]:
    from orchestrator.scheduler.loader import load_host_states

    async with db.read() as session:
        hosts = {h.id: h for h in (await session.exec(select(Host).order_by(Host.name))).all()}
        states = {s.id: s for s in await load_host_states(session, servers=())}
    return [
        HostView(
            host,
            states[host_id].used_vcpus,
            states[host_id].used_ram_mb,
            states[host_id].used_disk_gb,
            states[host_id].instances,
        )
        for host_id, host in hosts.items()
        if host_id is not None
    ]


async def find_hosts(db: Database, names: list[str] | None) -> list[Host]:
    async with db.read() as session:
        hosts = list((await session.exec(select(Host).order_by(Host.name))).all())
    if not names:
        return hosts
    by_name = {h.name: h for h in hosts}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise NotFound(f"host {missing[0]!r} not found (known: {choices(list(by_name))})")
    return [by_name[n] for n in names]


def host_status(host: Host) -> str:
    return host.status


@dataclass(frozen=True)
class EnabledChange:
    """What `host enable`/`disable` did: the host's state now, and whether it moved."""

    host: str
    enabled: bool
    disabled_reason: str | None
    changed: bool


async def set_enabled(db: Database, name: str, enabled: bool, reason: str | None) -> EnabledChange:
    """Let the scheduler use the host, or not. A reason is always stored on disabling:
    an operator's disable is what `herd inventory apply` keeps, and the scheduler's
    refusal names it."""
    async with db.session() as session:
        host = (await session.exec(select(Host).where(Host.name == name))).first()
        if host is None:
            raise NotFound(f"host {name!r} not found")
        changed = host.enabled != enabled
        host.enabled = enabled
        host.disabled_reason = None if enabled else (reason or "disabled by an operator")
        host.updated_at = utcnow()
        session.add(host)
        return EnabledChange(name, enabled, host.disabled_reason, changed)
