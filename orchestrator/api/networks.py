"""Networks: what the inventory declared, with how many of each pool's addresses are taken.

Ports themselves are allocated by the conductor's build (orchestrator/networking.py);
this is the operator's view of the networks.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import select

from orchestrator.db.engine import Database
from orchestrator.db.models import Network, Port
from orchestrator.networking import pool_addresses


@dataclass(frozen=True)
class NetworkView:
    network: Network
    ports: int  # ports on it now
    pool_size: int  # addresses its pool can give (0: no subnet)


async def list_networks(db: Database) -> list[NetworkView]:
    async with db.read() as session:
        rows = (await session.exec(select(Network).order_by(Network.name))).all()
        ports = (await session.exec(select(Port.network_id))).all()
    return [NetworkView(n, ports.count(n.id), len(pool_addresses(n))) for n in rows]
