"""What several operators at once must not break, on PostgreSQL (READ COMMITTED: every
check-then-insert races) and on SQLite: each test runs real concurrency, several
asyncio tasks each with its own engine (so its own connections and transactions)."""

from __future__ import annotations

import asyncio
import sys
import textwrap
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from sqlalchemy import text
from sqlmodel import select

from orchestrator.api import groups, images, keypairs
from orchestrator.api.servers import CreateRequest, create_servers
from orchestrator.db.engine import Database, open_database
from orchestrator.db.models import Flavor, Host, Image, Instance, Port, VmState, utcnow
from orchestrator.errors import Conflict, NoValidHost
from orchestrator.inventory import load_inventory
from orchestrator.inventory.apply import apply_inventory
from orchestrator.scheduler.loader import load_host_states
from orchestrator.scheduler.request import RequestSpec
from orchestrator.scheduler.scheduler import FilterScheduler
from tests.conftest import selected_engines


@pytest.fixture(params=selected_engines())
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'herd.db'}"
    return request.getfixturevalue("pg_url")


async def at_once(url: str, count: int, work: Callable[[Database, int], Awaitable[Any]]) -> list:
    """``work`` in ``count`` tasks with an engine each, released together; results or
    the exceptions they raised."""
    dbs = [await open_database(url) for _ in range(count)]
    go = asyncio.Event()

    async def one(db: Database, n: int) -> Any:
        async with db.session() as session:  # a connection ready before the start
            await session.exec(text("SELECT 1"))
        await go.wait()
        return await work(db, n)

    tasks = [asyncio.create_task(one(db, n)) for n, db in enumerate(dbs)]
    await asyncio.sleep(0.05)
    go.set()
    try:
        return await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for db in dbs:
            await db.dispose()


def winners_and_conflicts(results: list) -> tuple[list, list[Conflict]]:
    unexpected = [
        r for r in results if isinstance(r, BaseException) and not isinstance(r, Conflict)
    ]
    assert not unexpected, unexpected
    return [r for r in results if not isinstance(r, BaseException)], [
        r for r in results if isinstance(r, Conflict)
    ]


async def seed_catalog(url: str) -> None:
    db = await open_database(url)
    async with db.session() as session:
        session.add(Flavor(name="small", vcpus=1, ram_mb=512, disk_gb=1))
        session.add(Image(name="cirros", source="/dev/null", sha256="0" * 64, min_ram_mb=0))
    await db.dispose()


async def add_hosts(url: str, count: int, *, ram_mb: int) -> None:
    db = await open_database(url)
    async with db.session() as session:
        for n in range(count):
            session.add(
                Host(
                    name=f"hv{n}", address="127.0.0.1", vcpus=64, ram_mb=ram_mb, disk_gb=1000,
                    libvirt_ok=True, last_seen_at=utcnow(), reserved_ram_mb=0,
                    cpu_ratio=1.0, ram_ratio=1.0,
                )
            )  # fmt: skip
    await db.dispose()


# -- unique names ---------------------------------------------------------------


async def test_eight_creates_of_one_server_name_at_once_one_wins(url: str) -> None:
    await seed_catalog(url)
    results = await at_once(
        url, 8, lambda db, _: create_servers(db, CreateRequest("web", "small", "cirros"))
    )
    won, conflicts = winners_and_conflicts(results)
    assert len(won) == 1 and len(conflicts) == 7
    assert all("a server named 'web' already exists" in str(c) for c in conflicts)
    assert all(c.exit_code == 4 for c in conflicts)
    db = await open_database(url)
    async with db.read() as session:
        live = (await session.exec(select(Instance).where(Instance.name == "web"))).all()
    await db.dispose()
    assert len(live) == 1


async def test_a_deleted_servers_name_may_be_taken_again(url: str) -> None:
    await seed_catalog(url)
    db = await open_database(url)
    (first,) = await create_servers(db, CreateRequest("web", "small", "cirros"))
    async with db.session() as session:
        row = (await session.exec(select(Instance).where(Instance.uuid == first.uuid))).one()
        row.vm_state = VmState.DELETED
        session.add(row)
    (again,) = await create_servers(db, CreateRequest("web", "small", "cirros"))
    await db.dispose()
    assert again.uuid != first.uuid


def _public_key() -> str:
    return asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()


@pytest.mark.parametrize("thing", ["group", "keypair", "image", "inventory"])
async def test_concurrent_creates_of_one_name_are_conflicts_naming_it(
    url: str, thing: str, tmp_path: Path
) -> None:
    key = _public_key()
    inventory_file = tmp_path / "inv.yaml"
    inventory_file.write_text(
        textwrap.dedent("""\
        hosts:
          - name: hv-new
            address: 192.0.2.1
        flavors:
          - {name: tiny, vcpus: 1, ram_mb: 256, disk_gb: 1}
        """)
    )
    inventory = load_inventory(inventory_file)
    work: dict[str, Callable[[Database, int], Awaitable[Any]]] = {
        "group": lambda db, _: groups.create_group(db, "pack", "anti-affinity"),
        "keypair": lambda db, _: keypairs.import_key_pair(db, "mykey", key, "test"),
        "image": lambda db, _: images.create_image(
            db, {"name": "disk", "source": "host:///srv/disk.qcow2"}
        ),
        "inventory": lambda db, _: apply_inventory(db, inventory),
    }
    named = {"group": "pack", "keypair": "mykey", "image": "disk", "inventory": "apply again"}
    won, conflicts = winners_and_conflicts(await at_once(url, 6, work[thing]))
    assert len(won) >= 1
    if thing != "inventory":  # a second apply that came after the first is a no-op
        assert len(won) == 1 and len(conflicts) == 5
    assert all(named[thing] in str(c) and "\n" not in str(c) for c in conflicts)


# -- ports ----------------------------------------------------------------------


async def test_ports_for_two_networks_asked_in_opposite_orders_do_not_deadlock(
    url: str, tmp_path: Path
) -> None:
    path = tmp_path / "nets.yaml"
    path.write_text(
        textwrap.dedent("""\
        networks:
          - {name: a, type: user, subnet: 10.1.0.0/24, gateway: 10.1.0.1}
          - {name: b, type: user, subnet: 10.2.0.0/24, gateway: 10.2.0.1}
        """)
    )
    db = await open_database(url)
    await apply_inventory(db, load_inventory(path))  # (it removes flavors it does not name)
    await db.dispose()
    await seed_catalog(url)

    def boot(db: Database, n: int) -> Awaitable[Any]:
        order = ("a", "b") if n % 2 else ("b", "a")
        return create_servers(
            db, CreateRequest(f"s{n}", "small", "cirros", count=3, networks=order)
        )

    results = await at_once(url, 8, boot)
    assert [r for r in results if isinstance(r, BaseException)] == []
    db = await open_database(url)
    async with db.read() as session:
        ports = (await session.exec(select(Port))).all()
    await db.dispose()
    assert len(ports) == 8 * 3 * 2
    assert len({(p.network_id, p.ip) for p in ports}) == len(ports)  # no IP twice
    assert len({p.mac for p in ports}) == len(ports)


# -- claims ---------------------------------------------------------------------


def specs(count: int) -> list[RequestSpec]:
    return [RequestSpec(str(uuid.uuid4()), 1, 512, 1) for _ in range(count)]


async def test_all_or_nothing_requests_racing_for_the_last_room_never_starve(url: str) -> None:
    await add_hosts(url, 3, ram_mb=5 * 512)  # room for 15
    results = await at_once(url, 4, lambda db, _: FilterScheduler(db).place(specs(5)))
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(refused) == 1, results
    assert isinstance(refused[0], NoValidHost)
    assert "no valid host for the request (0 of 5 placeable, 5 needed)" in str(refused[0])
    db = await open_database(url)
    async with db.read() as session:
        states = await load_host_states(session)
    await db.dispose()
    assert all(s.used_ram_mb == 5 * 512 for s in states)  # full, never over


async def test_eight_placers_on_five_hosts_are_never_refused_while_room_exists(url: str) -> None:
    await add_hosts(url, 5, ram_mb=10 * 512)  # room for 50; 8 x 5 = 40 asked

    async def placer(db: Database, _: int) -> int:
        scheduler = FilterScheduler(db)
        return sum([len((await scheduler.place(specs(1))).placements) for _ in range(5)])

    results = await at_once(url, 8, placer)
    assert results == [5] * 8


async def test_min_count_takes_what_fits_as_before(url: str) -> None:
    await add_hosts(url, 1, ram_mb=3 * 512)
    db = await open_database(url)
    plan = await FilterScheduler(db).place(specs(5), min_count=2)
    assert len(plan.placements) == 3 and len(plan.unplaced) == 2
    with pytest.raises(NoValidHost):
        await FilterScheduler(db).place(specs(2), min_count=1)
    await db.dispose()


# -- what held before must keep holding -----------------------------------------


async def test_a_server_held_by_one_task_is_refused_to_the_others(url: str) -> None:
    from orchestrator.conductor.lifecycle import begin

    await seed_catalog(url)
    db = await open_database(url)
    (server,) = await create_servers(db, CreateRequest("web", "small", "cirros"))
    async with db.session() as session:
        row = (await session.exec(select(Instance).where(Instance.uuid == server.uuid))).one()
        row.vm_state, row.task_state = VmState.ACTIVE, None
        session.add(row)
    await db.dispose()

    async def stop(db: Database, n: int) -> Instance:
        async with db.session() as session:
            return await begin(session, server, "stop", 1000 + n)

    won, conflicts = winners_and_conflicts(await at_once(url, 8, stop))
    assert len(won) == 1 and len(conflicts) == 7
    assert all("cannot stop server web" in str(c) and c.exit_code == 4 for c in conflicts)


async def test_two_processes_claiming_at_once_never_oversubscribe(url: str, tmp_path: Path) -> None:
    await add_hosts(url, 20, ram_mb=2 * 512)
    go = tmp_path / "go"
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.unit.scheduler.race_worker", url, str(go), "30", "1",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]  # fmt: skip
    go.touch()
    placed = []
    for worker in workers:
        out, err = await asyncio.wait_for(worker.communicate(), 120)
        assert worker.returncode == 0, err
        placed.append(int(out))
    db = await open_database(url)
    async with db.read() as session:
        states = await load_host_states(session)
    await db.dispose()
    assert sum(placed) == 40  # 60 asked, 40 fit: exactly full, never over
    assert all(s.used_ram_mb == 2 * 512 for s in states)
