"""Host contact: reach each host's agent, record what it reports, and what it costs not to.

Kept apart from the workflows because nearly everything needs a host's SSH target and
facts (the CLI, reconcile, image delivery), and none of those should import the build
manager to get them. One host's failure is recorded on that host and hides nothing else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from orchestrator.db.engine import Database
from orchestrator.db.models import Host, utcnow
from orchestrator.errors import HerdError
from orchestrator.rpc.pool import AgentPool
from orchestrator.rpc.ssh import HostTarget

# Facts older than this are refreshed before scheduling (a warm session costs ~0.3 s).
FACTS_MAX_AGE = 60.0


def age_seconds(moment: datetime) -> float:
    if moment.tzinfo is None:  # SQLite drops the zone; we always store UTC
        moment = moment.replace(tzinfo=UTC)
    return (utcnow() - moment).total_seconds()


@dataclass(frozen=True)
class HostContact:
    name: str
    ok: bool
    error: str | None = None
    facts: dict[str, Any] | None = None


def target_of(host: Host) -> HostTarget:
    return HostTarget(
        name=host.name,
        address=host.address,
        port=host.ssh_port,
        user=host.ssh_user,
        key=host.ssh_key,
        known_hosts=host.known_hosts,
        ssh_config=host.ssh_config,
        proxy_jump=host.ssh_proxy_jump,
        agent_dir=host.agent_dir,
        libvirt_uri=host.libvirt_uri,
        domain_type=host.domain_type_pref,
        image_source_dirs=tuple(host.image_source_dirs),
        max_image_gb=host.max_image_gb,
    )


def apply_facts(host: Host, facts: dict[str, Any], agent_version: str | None) -> None:
    libvirt = facts.get("libvirt") or {}
    host.vcpus = facts.get("cpus")
    host.ram_mb = facts.get("memory_mb")
    host.disk_gb = facts.get("disk_gb")
    host.domain_type = facts.get("domain_type")
    host.libvirt_ok = bool(libvirt.get("ok"))
    host.libvirt_error = libvirt.get("error")
    host.agent_version = agent_version
    host.facts = facts
    host.last_seen_at = utcnow()
    host.last_error = None
    host.updated_at = utcnow()


async def contact_hosts(db: Database, pool: AgentPool, hosts: Sequence[Host]) -> list[HostContact]:
    """Open (or reuse) each host's agent session and record its facts, all at once."""

    async def one(host: Host) -> HostContact:
        target = target_of(host)
        try:
            session = await pool.session(target)
        except HerdError as exc:
            await record_host_error(db, host.id, str(exc))
            return HostContact(host.name, False, str(exc))
        facts = session.facts
        async with db.session() as tx:
            row = await tx.get(Host, host.id)
            if row is not None:
                apply_facts(row, facts, session.hello.get("agent_version"))
                tx.add(row)
        libvirt = facts.get("libvirt") or {}
        if not libvirt.get("ok"):
            error = (
                f"host {host.name}: libvirt not available at {target.libvirt_uri}: "
                f"{libvirt.get('error')}"
            )
            return HostContact(host.name, False, error, facts)
        return HostContact(host.name, True, None, facts)

    return list(await asyncio.gather(*(one(h) for h in hosts)))


async def record_host_error(db: Database, host_id: int | None, error: str) -> None:
    async with db.session() as tx:
        row = await tx.get(Host, host_id)
        if row is not None:
            row.last_error = error
            row.updated_at = utcnow()
            tx.add(row)
