"""Weighers rank hosts in the direction their multiplier says; the config builds them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from orchestrator.scheduler.config import (
    DEFAULT_FILTER_NAMES,
    SchedulerConfig,
    build_filters,
    build_weighers,
)
from orchestrator.scheduler.filters import (
    ComputeFilter,
    IoOpsFilter,
    RequestedHostFilter,
    VolumeHostFilter,
)
from orchestrator.scheduler.weighers import (
    BuildFailureWeigher,
    DiskWeigher,
    IoOpsWeigher,
    NumInstancesWeigher,
    RamWeigher,
    SoftAffinityWeigher,
    SoftAntiAffinityWeigher,
    VcpuWeigher,
    Weigher,
)
from tests.unit.scheduler.test_filters import group, spec, state


@pytest.mark.parametrize(
    ("weigher", "host", "request_spec", "raw"),
    [
        pytest.param(RamWeigher(1.0), state(total_ram_mb=4096, ram_ratio=1.5, used_ram_mb=1024), spec(), 5120, id="ram"),
        pytest.param(VcpuWeigher(1.0), state(total_vcpus=8, cpu_ratio=4.0, reserved_vcpus=2), spec(), 30, id="vcpu"),
        pytest.param(DiskWeigher(1.0), state(total_disk_gb=100, used_disk_gb=40), spec(), 60, id="disk"),
        pytest.param(NumInstancesWeigher(1.0), state(instances=7), spec(), 7, id="num-instances"),
        pytest.param(IoOpsWeigher(-1.0), state(builds_in_progress=3), spec(), 3, id="io-ops"),
        pytest.param(BuildFailureWeigher(1e6), state(failed_builds=2), spec(), -2, id="build-failure"),
        pytest.param(SoftAffinityWeigher(1.0), state(id=1), spec(group=group("soft-affinity", h1=2)), 2, id="soft-affinity"),
        pytest.param(SoftAffinityWeigher(1.0), state(id=1), spec(group=group("affinity", h1=2)), 0, id="soft-affinity-other-policy"),
        pytest.param(SoftAntiAffinityWeigher(1.0), state(id=1), spec(group=group("soft-anti-affinity", h1=2)), -2, id="soft-anti-affinity"),
        pytest.param(SoftAntiAffinityWeigher(1.0), state(id=1), spec(), 0, id="soft-anti-affinity-no-group"),
    ],
)  # fmt: skip
def test_raw_values_are_higher_for_more_attractive_hosts(
    weigher: Weigher, host, request_spec, raw: float
) -> None:
    assert weigher.raw(host, request_spec) == raw


def test_free_resource_bounds_reach_down_to_what_the_request_can_drain() -> None:
    ram = RamWeigher(1.0)
    assert ram.widen(8192, 16384, spec(ram_mb=1024), 1) == (7168, 16384)
    assert ram.widen(8192, 16384, spec(ram_mb=1024), 100) == (0, 16384)
    assert ram.widen(8192, 8192, spec(ram_mb=1024), 1) == (7168, 8192)


def test_counter_bounds_stop_at_the_filter_ceiling() -> None:
    assert IoOpsWeigher(-1.0, ceiling=8).widen(0, 2, spec(), 1000) == (0, 8)
    assert IoOpsWeigher(-1.0).widen(0, 2, spec(), 3) == (0, 5)
    assert NumInstancesWeigher(1.0, ceiling=50).widen(0, 60, spec(), 5) == (0, 60)


def test_group_bounds_span_at_least_one_member() -> None:
    soft = spec(group=group("soft-affinity"))
    assert SoftAffinityWeigher(1.0).widen(0, 0, soft, 10) == (0, 1)
    assert SoftAntiAffinityWeigher(1.0).widen(0, 0, soft, 10) == (-1, 0)
    assert SoftAntiAffinityWeigher(1.0).widen(-4, 0, soft, 10) == (-4, 0)


def test_group_weighers_only_apply_to_their_policy() -> None:
    assert SoftAffinityWeigher(1.0).applies(spec(group=group("soft-affinity")))
    assert not SoftAffinityWeigher(1.0).applies(spec(group=group("soft-anti-affinity")))
    assert not SoftAntiAffinityWeigher(1.0).applies(spec())


def test_default_config_has_novas_filters_and_multipliers() -> None:
    config = SchedulerConfig()
    assert config.enabled_filters == list(DEFAULT_FILTER_NAMES)
    assert config.weights["io_ops"] == -1.0 and config.weights["build_failure"] == 1e6
    assert (config.host_subset_size, config.max_attempts) == (1, 3)


def test_unknown_filter_is_refused_with_the_valid_names() -> None:
    with pytest.raises(ValidationError) as caught:
        SchedulerConfig(enabled_filters=["ram", "ramm"])
    message = str(caught.value)
    assert "unknown filter(s) ramm; valid: compute, availability_zone, ram" in message


def test_filter_listed_twice_is_refused() -> None:
    with pytest.raises(ValidationError, match="listed twice: ram"):
        SchedulerConfig(enabled_filters=["ram", "ram"])


def test_unknown_weigher_is_refused_and_missing_ones_take_defaults() -> None:
    with pytest.raises(ValidationError, match="unknown weigher"):
        SchedulerConfig(weights={"cpu": 1.0})
    config = SchedulerConfig(weights={"ram": -1.0})
    assert config.weights["ram"] == -1.0 and config.weights["disk"] == 1.0


@pytest.mark.parametrize(
    "bad",
    [{"host_subset_size": 0}, {"max_attempts": 0}, {"schedular": "typo"}],
    ids=["subset", "attempts", "extra-key"],
)
def test_config_rejects_nonsense(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        SchedulerConfig(**bad)  # type: ignore[arg-type]


def test_config_is_frozen() -> None:
    with pytest.raises(ValidationError):
        SchedulerConfig().max_attempts = 5  # type: ignore[misc]


def test_build_filters_puts_the_requested_host_first_and_passes_limits() -> None:
    config = SchedulerConfig(
        enabled_filters=["io_ops", "compute"], max_io_ops_per_host=2, service_down_seconds=60
    )
    first, volume_host, io_ops, compute = build_filters(config)
    assert isinstance(first, RequestedHostFilter)
    assert isinstance(volume_host, VolumeHostFilter)  # always on: a volume cannot move
    assert isinstance(io_ops, IoOpsFilter) and io_ops.max_io_ops_per_host == 2
    assert isinstance(compute, ComputeFilter) and compute.service_down_seconds == 60


def test_build_weighers_drops_zero_multipliers_and_caps_counters() -> None:
    weighers = build_weighers(SchedulerConfig())
    names = [w.name for w in weighers]
    assert "num_instances" not in names
    io_ops = next(w for w in weighers if isinstance(w, IoOpsWeigher))
    assert io_ops.ceiling == 8
    uncapped = build_weighers(SchedulerConfig(enabled_filters=["compute", "ram"]))
    assert next(w for w in uncapped if isinstance(w, IoOpsWeigher)).ceiling is None
