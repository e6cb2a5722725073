"""The scheduler places within capacity, spreads, explains refusals, and never
oversubscribes a host even when two schedulers race."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from orchestrator.db.engine import Database
from orchestrator.errors import NoValidHost
from orchestrator.scheduler.claims import release
from orchestrator.scheduler.config import SchedulerConfig
from orchestrator.scheduler.filters import ComputeFilter, DiskFilter, RamFilter, VcpuFilter
from orchestrator.scheduler.loader import load_host_states
from orchestrator.scheduler.request import RequestSpec
from orchestrator.scheduler.scheduler import FilterScheduler
from tests.unit.scheduler.test_filters import state


def spec(ram_mb: int = 1024, vcpus: int = 1, disk_gb: int = 10) -> RequestSpec:
    return RequestSpec(str(uuid.uuid4()), vcpus, ram_mb, disk_gb)


@pytest.mark.parametrize(
    ("host_filter", "host", "request_spec", "reason"),
    [
        pytest.param(ComputeFilter(), state(enabled=False), spec(), "disabled", id="disabled-host"),
        pytest.param(
            ComputeFilter(), state(libvirt_ok=False, libvirt_error="no socket"), spec(),
            "libvirt unavailable: no socket", id="no-libvirt",
        ),
        pytest.param(ComputeFilter(), state(total_ram_mb=None), spec(), "capacity unknown", id="never-seen"),
        pytest.param(
            RamFilter(), state(total_ram_mb=2048, ram_ratio=1.5, used_ram_mb=1536), spec(ram_mb=4096),
            "needs 4096 MiB, 1536 MiB free after 1.5 ratio", id="ram-after-ratio",
        ),
        pytest.param(VcpuFilter(), state(total_vcpus=2, used_vcpus=2), spec(vcpus=1), "needs 1 vCPU", id="vcpu"),
        pytest.param(DiskFilter(), state(total_disk_gb=5), spec(disk_gb=10), "needs 10 GiB", id="disk"),
    ],
)  # fmt: skip
def test_filters_refuse_with_a_reason(host_filter, host, request_spec, reason) -> None:
    verdict = host_filter.check(host, request_spec)
    assert not verdict.passed
    assert reason in verdict.reason


def test_filters_pass_a_host_with_room() -> None:
    for host_filter in (ComputeFilter(), RamFilter(), VcpuFilter(), DiskFilter()):
        assert host_filter.check(state(), spec()).passed


async def test_instances_spread_by_free_ram_and_see_earlier_claims(db: Database, add_host) -> None:
    await add_host("a", ram_mb=4096)
    await add_host("b", ram_mb=4096)
    await add_host("c", ram_mb=4096)
    plan = await FilterScheduler(db).place([spec() for _ in range(4)])
    hosts = [p.host_name for p in plan.placements]
    assert sorted(hosts[:3]) == ["a", "b", "c"]
    async with db.session() as session:
        states = {s.name: s for s in await load_host_states(session)}
    assert sum(s.used_ram_mb for s in states.values()) == 4 * 1024
    assert sum(s.instances for s in states.values()) == 4


async def test_no_valid_host_explains_and_releases_partial_claims(db: Database, add_host) -> None:
    await add_host("a", ram_mb=2048)
    await add_host("off", enabled=False)
    with pytest.raises(NoValidHost) as caught:
        await FilterScheduler(db).place([spec(ram_mb=1024) for _ in range(3)])
    message = str(caught.value)
    assert "0/2 hosts fit" in message and "1 ram" in message and "1 compute" in message
    async with db.session() as session:
        assert all(s.instances == 0 for s in await load_host_states(session))


async def test_two_racing_schedulers_never_oversubscribe(db: Database, add_host) -> None:
    await add_host("only", ram_mb=10 * 1024, vcpus=64)
    first, second = FilterScheduler(db), FilterScheduler(db)

    async def boot(scheduler: FilterScheduler) -> int:
        placed = 0
        for _ in range(8):
            try:
                await scheduler.place([spec(ram_mb=1024)])
                placed += 1
            except NoValidHost:
                pass
        return placed

    counts = await asyncio.gather(boot(first), boot(second))
    assert sum(counts) == 10
    async with db.session() as session:
        (only,) = await load_host_states(session)
    assert only.used_ram_mb == 10 * 1024


async def test_min_count_boots_what_fits_and_all_or_none_below_it(db: Database, add_host) -> None:
    await add_host("a", ram_mb=3072)
    specs = [spec(ram_mb=1024) for _ in range(5)]
    plan = await FilterScheduler(db).place(specs, min_count=2)
    assert len(plan.placements) == 3
    assert set(plan.unplaced) == {s.instance_uuid for s in specs[3:]}
    assert "ram" in next(iter(plan.unplaced.values()))

    with pytest.raises(NoValidHost, match="0 of 2 placeable, 2 needed"):
        await FilterScheduler(db).place([spec(ram_mb=1024) for _ in range(2)], min_count=2)
    with pytest.raises(NoValidHost):
        await FilterScheduler(db).place([spec(ram_mb=512), spec(ram_mb=512)])
    async with db.session() as session:
        (only,) = await load_host_states(session)
    assert only.instances == 3  # the refused requests gave back what they had claimed


async def test_placements_carry_alternates_and_a_reschedule_claims_one(
    db: Database, add_host
) -> None:
    for name in ("a", "b", "c"):
        await add_host(name, ram_mb=4096)
    scheduler = FilterScheduler(db, SchedulerConfig(max_attempts=3))
    request = spec(ram_mb=1024)
    (placement,) = (await scheduler.place([request])).placements
    assert len(placement.alternates) == 2
    assert placement.host_id not in {host_id for host_id, _ in placement.alternates}

    async with db.session() as session:
        await release(session, request.instance_uuid)
    chosen, refused = await scheduler.claim_alternate(request, placement.alternates)
    assert chosen is not None and refused == []
    assert chosen.host_id == placement.alternates[0][0]


async def test_a_reschedule_skips_alternates_that_no_longer_fit(db: Database, add_host) -> None:
    await add_host("a", ram_mb=4096)
    await add_host("b", ram_mb=1024)
    scheduler = FilterScheduler(db)
    request = spec(ram_mb=1024)
    (placement,) = (await scheduler.place([request])).placements
    assert placement.host_name == "a" and [n for _, n in placement.alternates] == ["b"]
    await scheduler.place([spec(ram_mb=1024)])  # lands on b: more free vCPU and disk than a
    chosen, refused = await scheduler.claim_alternate(spec(ram_mb=1024), placement.alternates)
    assert chosen is None
    assert refused and refused[0].startswith("b: needs 1024 MiB")
