"""Ports: first-free IPs from the pool, unique MACs, release and reuse, exhaustion."""

from __future__ import annotations

import asyncio
import itertools
import re

import pytest

from orchestrator import networking
from orchestrator.db.engine import Database
from orchestrator.db.models import Network
from orchestrator.errors import Conflict, NotFound


async def add_network(db: Database, name: str = "net", **kw: object) -> Network:
    fields: dict[str, object] = {
        "kind": "user",
        "cidr": "10.0.2.0/24",
        "gateway": "10.0.2.2",
        "pool_start": "10.0.2.1",
        "pool_end": "10.0.2.4",
    }
    fields.update(kw)
    async with db.session() as session:
        network = Network(name=name, **fields)
        session.add(network)
    return network


async def allocate(db: Database, uuid: str, *networks: Network) -> list[networking.PortView]:
    async with db.session() as session:
        await networking.allocate_ports(session, uuid, list(networks))
    async with db.session() as session:
        return await networking.ports_of(session, uuid)


async def test_ips_are_first_free_from_the_pool_skipping_the_gateway(db: Database) -> None:
    net = await add_network(db)
    ips = [(await allocate(db, f"i{n}", net))[0].ip for n in range(3)]
    assert ips == ["10.0.2.1", "10.0.2.3", "10.0.2.4"]  # .2 is the gateway


async def test_an_exhausted_pool_is_a_conflict_and_a_released_address_is_reused(
    db: Database,
) -> None:
    net = await add_network(db)
    for n in range(3):
        await allocate(db, f"i{n}", net)
    with pytest.raises(Conflict, match="network net has no free address left"):
        await allocate(db, "extra", net)
    async with db.session() as session:
        await networking.release_ports(session, "i1")
    assert (await allocate(db, "extra", net))[0].ip == "10.0.2.3"


async def test_macs_have_herds_prefix_and_are_never_shared(db: Database, monkeypatch) -> None:
    net = await add_network(db, pool_end="10.0.2.200")
    # The first two draws collide: the second allocation must draw again.
    draws = itertools.chain(["02:68:64:aa:bb:cc"] * 2, ["02:68:64:aa:bb:cd"])
    monkeypatch.setattr(networking, "random_mac", lambda: next(draws))
    first = await allocate(db, "a", net)
    second = await allocate(db, "b", net)
    assert first[0].mac == "02:68:64:aa:bb:cc" and second[0].mac == "02:68:64:aa:bb:cd"
    monkeypatch.undo()
    assert re.fullmatch(r"02:68:64(:[0-9a-f]{2}){3}", networking.random_mac())


async def test_concurrent_allocations_never_hand_out_one_ip_twice(db_url: str) -> None:
    """Separate databases handles, racing: the unique constraint decides."""
    from orchestrator.db.engine import open_database

    setup = await open_database(db_url)
    net = await add_network(setup, pool_end="10.0.2.40")
    handles = [await open_database(db_url) for _ in range(4)]
    try:
        await asyncio.gather(*(allocate(handles[n % 4], f"i{n}", net) for n in range(20)))
        async with setup.session() as session:
            ports = [p for n in range(20) for p in await networking.ports_of(session, f"i{n}")]
    finally:
        for handle in [setup, *handles]:
            await handle.dispose()
    assert len(ports) == 20
    assert len({p.ip for p in ports}) == 20 and len({p.mac for p in ports}) == 20


async def test_several_networks_give_ports_in_order_and_no_subnet_means_no_ip(
    db: Database,
) -> None:
    first = await add_network(db, "first")
    plain = await add_network(
        db,
        "plain",
        kind="bridge",
        source="br0",
        cidr=None,
        gateway=None,
        pool_start=None,
        pool_end=None,
    )
    ports = await allocate(db, "i", first, plain)
    assert [(p.network, p.device_index, p.ip) for p in ports] == [
        ("first", 0, "10.0.2.1"),
        ("plain", 1, None),
    ]
    assert ports[1].to_agent() == {"mac": ports[1].mac, "kind": "bridge", "source": "br0"}


async def test_networks_resolve_by_name_or_fall_back_to_the_default(db: Database) -> None:
    await add_network(db, "a")
    await add_network(db, "b", is_default=True)
    async with db.session() as session:
        assert [n.name for n in await networking.resolve_networks(session, [])] == ["b"]
        assert [n.name for n in await networking.resolve_networks(session, ["a", "b"])] == [
            "a",
            "b",
        ]
        with pytest.raises(NotFound, match=r"no network 'c' \(known: a, b\)"):
            await networking.resolve_networks(session, ["c"])
