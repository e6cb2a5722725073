"""Flavors: what the inventory declared, smallest first."""

from __future__ import annotations

from sqlmodel import select

from orchestrator.db.engine import Database
from orchestrator.db.models import (
    Flavor,
)


async def list_flavors(db: Database) -> list[Flavor]:
    async with db.read() as session:
        return list(
            (
                await session.exec(
                    select(Flavor).order_by(Flavor.vcpus, Flavor.ram_mb, Flavor.name)
                )
            ).all()
        )
