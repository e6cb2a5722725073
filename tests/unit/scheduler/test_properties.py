"""Properties that must hold for any fleet and any request, checked with hypothesis.

Each property is a plain function, run both on generated cases and on hand-made ones
where placements certainly happen, so a generator that never places anything could not
make the properties pass vacuously.
"""

from __future__ import annotations

import copy
import dataclasses
import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st

from orchestrator.scheduler.config import SchedulerConfig, build_filters
from orchestrator.scheduler.engine import Selection, check_host, select_destinations
from orchestrator.scheduler.host_state import HostState
from orchestrator.scheduler.request import GroupState, RequestSpec

EPSILON = 1e-6


@st.composite
def host_states(draw: st.DrawFn, host_id: int) -> HostState:
    vcpus = draw(st.integers(1, 16))
    ram_mb = draw(st.integers(1, 32)) * 512
    disk_gb = draw(st.integers(10, 400))
    cpu_ratio = draw(st.sampled_from([1.0, 1.5, 4.0]))
    ram_ratio = draw(st.sampled_from([1.0, 1.5]))
    disk_ratio = draw(st.sampled_from([1.0, 2.0]))
    reserved_vcpus = draw(st.integers(0, 1))
    reserved_ram_mb = draw(st.sampled_from([0, 512]))
    reserved_disk_gb = draw(st.integers(0, 5))

    def used(total: float) -> int:
        return draw(st.integers(0, max(0, int(total))))

    return HostState(
        id=host_id,
        name=f"hv{host_id}",
        enabled=draw(st.booleans().map(lambda b: b or host_id == 0)),
        libvirt_ok=True,
        libvirt_error=None,
        total_vcpus=vcpus,
        total_ram_mb=ram_mb,
        total_disk_gb=disk_gb,
        cpu_ratio=cpu_ratio,
        ram_ratio=ram_ratio,
        disk_ratio=disk_ratio,
        reserved_vcpus=reserved_vcpus,
        reserved_ram_mb=reserved_ram_mb,
        reserved_disk_gb=reserved_disk_gb,
        generation=0,
        last_seen_at=None,
        used_vcpus=used(vcpus * cpu_ratio - reserved_vcpus),
        used_ram_mb=used(ram_mb * ram_ratio - reserved_ram_mb),
        used_disk_gb=used(disk_gb * disk_ratio - reserved_disk_gb),
        instances=draw(st.integers(0, 6)),
        builds_in_progress=draw(st.integers(0, 3)),
        failed_builds=draw(st.integers(0, 1)),
    )


@st.composite
def fleets(draw: st.DrawFn) -> list[HostState]:
    count = draw(st.integers(1, 8))
    return [draw(host_states(i)) for i in range(count)]


@st.composite
def requests(draw: st.DrawFn, hosts: int, policy: str | None) -> list[RequestSpec]:
    group = None
    if policy is not None:
        members: Counter[int] = Counter()
        if policy == "affinity":
            if draw(st.booleans()):
                members[draw(st.integers(0, hosts - 1))] = draw(st.integers(1, 3))
        else:
            for host_id in draw(st.sets(st.integers(0, hosts - 1), max_size=hosts)):
                members[host_id] = draw(st.integers(1, 2))
        group = GroupState(1, "g", policy, members)
    count = draw(st.integers(1, 10))
    vcpus = draw(st.integers(1, 4))
    ram_mb = draw(st.sampled_from([256, 512, 1024, 2048, 4096]))
    disk_gb = draw(st.integers(1, 60))
    return [RequestSpec(f"u-{n}", vcpus, ram_mb, disk_gb, group=group) for n in range(count)]


configs = st.builds(
    SchedulerConfig,
    host_subset_size=st.integers(1, 3),
    max_attempts=st.integers(1, 4),
    max_instances_per_host=st.integers(3, 50),
    max_io_ops_per_host=st.integers(2, 8),
)

Case = tuple[list[HostState], list[RequestSpec], SchedulerConfig, int]


@st.composite
def cases(draw: st.DrawFn, policies: list[str | None]) -> Case:
    hosts = draw(fleets())
    specs = draw(requests(len(hosts), draw(st.sampled_from(policies))))
    return hosts, specs, draw(configs), draw(st.integers(0, 2**16))


def run(case: Case) -> tuple[list[HostState], Selection]:
    hosts, specs, config, seed = case
    selection = select_destinations(hosts, specs, config, random.Random(seed))
    target(float(len(selection.placed)), label="placed")
    return hosts, selection


def assert_within_capacity(hosts: list[HostState], selection: Selection) -> None:
    receivers = {c.host.id for c in selection.placed if c.host is not None}
    for host in hosts:
        if host.id not in receivers:
            continue
        assert host.free_vcpus >= -EPSILON, host
        assert host.free_ram_mb >= -EPSILON, host
        assert host.free_disk_gb >= -EPSILON, host


def assert_anti_affinity(before: Counter[int], selection: Selection) -> None:
    landed = [c.host.id for c in selection.placed if c.host is not None]
    assert len(landed) == len(set(landed))
    assert not set(landed) & {h for h, n in before.items() if n > 0}


def assert_affinity(before: Counter[int], selection: Selection) -> None:
    landed = {c.host.id for c in selection.placed if c.host is not None}
    assert len(landed) <= 1
    homes = {h for h, n in before.items() if n > 0}
    if homes and landed:
        assert landed <= homes


def assert_alternates_were_valid(
    before: tuple[list[HostState], GroupState | None],
    specs: list[RequestSpec],
    config: SchedulerConfig,
    selection: Selection,
) -> None:
    """Replay the choices on copies taken before the run: each alternate (and the choice)
    passed the filters when its instance was placed."""
    replay = {h.id: h for h in before[0]}
    group = before[1]
    filters = build_filters(config)
    for spec, choice in zip(specs, selection.choices, strict=True):
        if choice.host is None:
            assert not choice.alternates
            continue
        now = dataclasses.replace(spec, group=group)
        assert check_host(replay[choice.host.id], now, filters).passed
        assert len(choice.alternates) <= config.max_attempts - 1
        for alternate in choice.alternates:
            assert alternate.id != choice.host.id
            assert check_host(replay[alternate.id], now, filters).passed
        replay[choice.host.id].consume(spec)
        if group is not None:
            group.hosts[choice.host.id] += 1


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(cases([None, "soft-affinity", "soft-anti-affinity", "affinity", "anti-affinity"]))
def test_no_host_is_ever_filled_beyond_its_capacity(case: Case) -> None:
    hosts, selection = run(case)
    assert_within_capacity(hosts, selection)


@FAST
@given(cases(["anti-affinity"]))
def test_anti_affinity_members_never_share_a_host(case: Case) -> None:
    before = copy.copy(case[1][0].group.hosts)  # type: ignore[union-attr]
    _, selection = run(case)
    assert_anti_affinity(before, selection)


@FAST
@given(cases(["affinity"]))
def test_affinity_members_all_land_on_one_host(case: Case) -> None:
    before = copy.copy(case[1][0].group.hosts)  # type: ignore[union-attr]
    _, selection = run(case)
    assert_affinity(before, selection)


@FAST
@given(cases([None, "affinity", "anti-affinity", "soft-anti-affinity"]))
def test_alternates_differ_from_the_choice_and_passed_the_filters(case: Case) -> None:
    hosts, specs, config, _ = case
    before = copy.deepcopy((hosts, specs[0].group))
    _, selection = run(case)
    assert_alternates_were_valid(before, specs, config, selection)


def fleet(count: int, **kw: Any) -> list[HostState]:
    return [
        HostState(
            id=i, name=f"hv{i}", enabled=True, libvirt_ok=True, libvirt_error=None,
            total_vcpus=4, total_ram_mb=4096, total_disk_gb=100, cpu_ratio=1.0, ram_ratio=1.0,
            disk_ratio=1.0, reserved_vcpus=0, reserved_ram_mb=0, reserved_disk_gb=0,
            generation=0, last_seen_at=None, **kw,
        )
        for i in range(count)
    ]  # fmt: skip


def specs_for(count: int, policy: str | None, members: dict[int, int]) -> list[RequestSpec]:
    group = GroupState(1, "g", policy, Counter(members)) if policy else None
    return [RequestSpec(f"u-{n}", 1, 1024, 10, group=group) for n in range(count)]


@pytest.mark.parametrize(
    ("policy", "members", "count", "placed"),
    [
        (None, {}, 20, 16),
        ("anti-affinity", {}, 6, 4),
        ("anti-affinity", {0: 1, 2: 1}, 3, 2),
        ("affinity", {}, 6, 4),
        ("affinity", {3: 1}, 2, 2),
        ("soft-anti-affinity", {1: 2}, 8, 8),
    ],
)
def test_properties_hold_where_placements_certainly_happen(
    policy: str | None, members: dict[int, int], count: int, placed: int
) -> None:
    config = SchedulerConfig(host_subset_size=2)
    hosts = fleet(4)
    specs = specs_for(count, policy, members)
    before = Counter(members)
    snapshot = copy.deepcopy((hosts, specs[0].group))
    selection = select_destinations(hosts, specs, config, random.Random(3))
    assert len(selection.placed) == placed
    assert_within_capacity(hosts, selection)
    assert_alternates_were_valid(snapshot, specs, config, selection)
    if policy == "anti-affinity":
        assert_anti_affinity(before, selection)
    if policy == "affinity":
        assert_affinity(before, selection)
