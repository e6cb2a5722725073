"""A database with many servers, for timing what `herd server list` costs at scale.

Rows are written through herd's own models and ``Database`` (the schema is migrated
to head as any herd command would), spread over a few hosts in the states a fleet
has: most active, some building, stopped or in error, each with one port on a
network with a subnet. Nothing is contacted: these hosts do not exist.

    HERD_DATABASE_URL=sqlite:////tmp/herd-1000.db python -m bench.seed_servers --servers 1000
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from datetime import UTC, datetime, timedelta

from orchestrator.db.connection import database_url
from orchestrator.db.engine import Database, open_database
from orchestrator.db.models import Host, Instance, Network, Port

STATES = [
    ("active", None, "running"),
    ("active", None, "running"),
    ("active", None, "running"),
    ("building", "spawning", "nostate"),
    ("stopped", None, "shutdown"),
    ("error", None, "nostate"),
]


async def seed(db: Database, servers: int, hosts: int) -> None:
    """``servers`` instances on ``hosts`` hosts."""
    now = datetime.now(UTC)
    async with db.session() as session:
        host_rows = [Host(name=f"bench-{n}", address=f"127.0.100.{n + 1}") for n in range(hosts)]
        network = Network(name="bench-net", kind="bridge", source="br-bench", cidr="10.9.0.0/16")
        session.add_all([*host_rows, network])
        await session.flush()
        for n in range(servers):
            vm_state, task_state, power_state = STATES[n % len(STATES)]
            instance = Instance(
                uuid=str(uuid.uuid4()),
                name=f"web-{n:04d}",
                flavor_name="m1.small",
                vcpus=1,
                ram_mb=512,
                disk_gb=5,
                image_name="cirros",
                host_id=host_rows[n % hosts].id,
                vm_state=vm_state,
                task_state=task_state,
                power_state=power_state,
                created_at=now - timedelta(minutes=n),
                launched_at=now - timedelta(minutes=n),
            )
            instance.task_state = task_state  # None would read as "use the default"
            port = Port(
                instance_uuid=instance.uuid,
                network_id=network.id or 0,
                mac=f"52:54:00:{n >> 16 & 0xFF:02x}:{n >> 8 & 0xFF:02x}:{n & 0xFF:02x}",
                ip=f"10.9.{n // 250}.{n % 250 + 2}",
            )
            session.add_all([instance, port])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=1000)
    parser.add_argument("--hosts", type=int, default=10)
    args = parser.parse_args()
    db = await open_database()
    try:
        await seed(db, args.servers, args.hosts)
    finally:
        await db.dispose()
    print(f"{args.servers} servers on {args.hosts} hosts in {database_url()}")


if __name__ == "__main__":
    asyncio.run(main())
