"""Ports: a MAC per NIC and, on networks with a subnet, a fixed IP from the pool.

Allocation is first-free for IPs (so addresses stay small and predictable, as
Neutron's) and random for MACs, under one fixed prefix so an operator recognises
herd's NICs on a wire. The database's unique constraints are what guarantees no two
live ports share a MAC or an IP: a concurrent allocation that loses the race gets an
IntegrityError inside a savepoint and simply tries the next candidate.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from agent.specs import MAX_NICS
from orchestrator.db.models import Network, Port, utcnow
from orchestrator.errors import Conflict, InvalidInput, NotFound

# Locally administered (0x02), then "hd": never a vendor's, and the same on every NIC.
MAC_PREFIX = "02:68:64"
_MAC_ATTEMPTS = 32


@dataclass(frozen=True)
class PortView:
    """A port as shown to operators and given to the agent and cloud-init."""

    network: str
    kind: str
    source: str | None
    mac: str
    ip: str | None
    cidr: str | None
    gateway: str | None
    dns: tuple[str, ...]
    device_index: int

    @property
    def prefixlen(self) -> int | None:
        return ipaddress.ip_network(self.cidr).prefixlen if self.cidr else None

    def to_agent(self) -> dict[str, str | None]:
        return {"mac": self.mac, "kind": self.kind, "source": self.source}

    def to_dict(self) -> dict[str, object]:
        return {
            "network": self.network,
            "mac": self.mac,
            "ip": self.ip,
            "cidr": self.cidr,
            "gateway": self.gateway,
        }


def random_mac() -> str:
    tail = secrets.token_bytes(3)
    return f"{MAC_PREFIX}:" + ":".join(f"{b:02x}" for b in tail)


def pool_addresses(network: Network) -> list[ipaddress.IPv4Address]:
    if not (network.cidr and network.pool_start and network.pool_end):
        return []
    start = int(ipaddress.IPv4Address(network.pool_start))
    end = int(ipaddress.IPv4Address(network.pool_end))
    gateway = ipaddress.IPv4Address(network.gateway) if network.gateway else None
    return [
        address
        for address in (ipaddress.IPv4Address(n) for n in range(start, end + 1))
        if address != gateway
    ]


async def resolve_networks(db: AsyncSession, names: Sequence[str]) -> list[Network]:
    """The networks named (in order), or the default one when none is named."""
    if len(names) > MAX_NICS:
        raise InvalidInput(f"{len(names)} --network options: a server has at most {MAX_NICS} NICs")
    if not names:
        default = (await db.exec(select(Network).where(col(Network.is_default)))).first()
        return [default] if default is not None else []
    rows = {n.name: n for n in (await db.exec(select(Network))).all()}
    missing = [name for name in names if name not in rows]
    if missing:
        known = ", ".join(sorted(rows)) or "none: add networks to the inventory"
        raise NotFound(f"no network {missing[0]!r} (known: {known})")
    return [rows[name] for name in names]


async def allocate_ports(
    db: AsyncSession, instance_uuid: str, networks: Sequence[Network]
) -> list[Port]:
    """One port per network, in order; raises Conflict when a pool is exhausted."""
    await lock_networks(db, networks)
    ports = []
    for index, network in enumerate(networks):
        ports.append(await _allocate_one(db, instance_uuid, network, index))
    return ports


async def lock_networks(db: AsyncSession, networks: Sequence[Network]) -> None:
    """Hold the networks' rows until the transaction ends, always in id order.

    On PostgreSQL two servers asking for networks A,B and B,A would otherwise each hold
    an address in one and wait for the other's (a deadlock, 40P01); in one fixed order
    the second simply waits. It also makes the free-address read below see every port
    committed before us. SQLite's IMMEDIATE transactions already run one at a time (and
    it has no FOR UPDATE)."""
    ids = sorted({n.id for n in networks if n.id is not None})
    if ids:
        await db.exec(
            select(Network.id)
            .where(col(Network.id).in_(ids))
            .order_by(Network.id)
            .with_for_update()
        )


async def _allocate_one(db: AsyncSession, instance_uuid: str, network: Network, index: int) -> Port:
    candidates = pool_addresses(network)
    if candidates:
        taken = set((await db.exec(select(Port.ip).where(Port.network_id == network.id))).all())
        free = [str(a) for a in candidates if str(a) not in taken]
        if not free:
            raise Conflict(
                f"network {network.name} has no free address left in its pool "
                f"{network.pool_start}-{network.pool_end}"
            )
    else:
        free = [None]  # type: ignore[list-item]
    for ip in free:
        for _ in range(_MAC_ATTEMPTS):
            port = Port(
                instance_uuid=instance_uuid,
                network_id=network.id,  # type: ignore[arg-type]
                device_index=index,
                mac=random_mac(),
                ip=ip,
                created_at=utcnow(),
            )
            try:
                async with db.begin_nested():
                    db.add(port)
            except IntegrityError as exc:
                if "mac" in str(exc.orig).lower():
                    continue  # a MAC in use: draw another
                break  # the IP was taken meanwhile: the next one
            return port
        else:
            raise Conflict(f"could not draw a free MAC address after {_MAC_ATTEMPTS} tries")
    raise Conflict(f"network {network.name}: every free address was taken concurrently; retry")


async def release_ports(db: AsyncSession, instance_uuid: str) -> None:
    """Free the instance's MACs and IPs for reuse (the instance is gone)."""
    await db.exec(delete(Port).where(col(Port.instance_uuid) == instance_uuid))  # type: ignore[call-overload]


async def ports_of(db: AsyncSession, instance_uuid: str) -> list[PortView]:
    return (await ports_by_instance(db, [instance_uuid])).get(instance_uuid, [])


async def ports_by_instance(
    db: AsyncSession, instance_uuids: Sequence[str]
) -> dict[str, list[PortView]]:
    rows = (
        await db.exec(
            select(Port, Network)
            .join(Network, col(Network.id) == Port.network_id)
            .where(col(Port.instance_uuid).in_(list(instance_uuids)))
            .order_by(col(Port.device_index))
        )
    ).all()
    found: dict[str, list[PortView]] = {}
    for port, network in rows:
        found.setdefault(port.instance_uuid, []).append(
            PortView(
                network=network.name,
                kind=network.kind,
                source=network.source,
                mac=port.mac,
                ip=port.ip,
                cidr=network.cidr,
                gateway=network.gateway,
                dns=tuple(network.dns),
                device_index=port.device_index,
            )
        )
    return found
