"""Each filter refuses with a reason an operator can act on, and passes what it should."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from orchestrator.db.models import Host
from orchestrator.scheduler.filters import (
    PASS,
    AvailabilityZoneFilter,
    ComputeFilter,
    DifferentHostFilter,
    DiskFilter,
    HostFilter,
    ImagePropertiesFilter,
    IoOpsFilter,
    LabelsFilter,
    NumInstancesFilter,
    RamFilter,
    RequestedHostFilter,
    SameHostFilter,
    ServerGroupAffinityFilter,
    ServerGroupAntiAffinityFilter,
    VcpuFilter,
    Verdict,
    ago,
)
from orchestrator.scheduler.host_state import HostState
from orchestrator.scheduler.request import GroupState, RequestSpec


def state(**kw: Any) -> HostState:
    fields: dict[str, Any] = {
        "id": 1, "name": "hv1", "enabled": True, "libvirt_ok": True, "libvirt_error": None,
        "total_vcpus": 4, "total_ram_mb": 4096, "total_disk_gb": 100, "cpu_ratio": 1.0,
        "ram_ratio": 1.0, "disk_ratio": 1.0, "reserved_vcpus": 0, "reserved_ram_mb": 0,
        "reserved_disk_gb": 0, "generation": 0, "last_seen_at": None,
    }  # fmt: skip
    fields.update(kw)
    return HostState(**fields)


def spec(**kw: Any) -> RequestSpec:
    fields: dict[str, Any] = {"instance_uuid": "u-1", "vcpus": 1, "ram_mb": 1024, "disk_gb": 10}
    fields.update(kw)
    return RequestSpec(**fields)


def group(policy: str, **hosts: int) -> GroupState:
    """A group with members on hosts given as h<id>=count."""
    return GroupState(7, "web", policy, Counter({int(k[1:]): n for k, n in hosts.items()}))


REFUSALS = [
    pytest.param(RequestedHostFilter(), state(), spec(requested_host="lab-2"), "not the requested host lab-2", id="requested-host"),
    pytest.param(ComputeFilter(), state(enabled=False), spec(), "disabled", id="disabled"),
    pytest.param(ComputeFilter(), state(enabled=False, disabled_reason="disk swap"), spec(), "disabled: disk swap", id="disabled-with-reason"),
    pytest.param(ComputeFilter(), state(status="down", seen_seconds_ago=720), spec(), "down: last seen 12 min ago", id="down"),
    pytest.param(ComputeFilter(), state(status="down"), spec(), "down", id="down-never-seen"),
    pytest.param(ComputeFilter(), state(libvirt_ok=False, libvirt_error="no socket"), spec(), "libvirt unavailable: no socket", id="no-libvirt"),
    pytest.param(ComputeFilter(), state(total_ram_mb=None), spec(), "capacity unknown (never reached)", id="never-reached"),
    pytest.param(ComputeFilter(60), state(seen_seconds_ago=600), spec(), "not heard from for 10 min (limit 60 s)", id="silent"),
    pytest.param(AvailabilityZoneFilter(), state(availability_zone="az2"), spec(availability_zone="az1"), "in zone az2, az1 wanted", id="zone"),
    pytest.param(RamFilter(), state(total_ram_mb=2048, ram_ratio=1.5, used_ram_mb=1536), spec(ram_mb=4096), "needs 4096 MiB, 1536 MiB free after 1.5 ratio", id="ram"),
    pytest.param(RamFilter(), state(reserved_ram_mb=4000), spec(ram_mb=512), "needs 512 MiB, 96 MiB free after 1 ratio", id="ram-reserved"),
    pytest.param(VcpuFilter(), state(total_vcpus=2, cpu_ratio=2.0, used_vcpus=4), spec(vcpus=1), "needs 1 vCPU, 0 free after 2 ratio", id="vcpu"),
    pytest.param(DiskFilter(), state(total_disk_gb=5), spec(disk_gb=10), "needs 10 GiB, 5 GiB free after 1 ratio", id="disk"),
    pytest.param(LabelsFilter(), state(labels={"ssd": "false"}), spec(extra_specs={"label:ssd": "true"}), "label ssd=true wanted, host has ssd=false", id="label-differs"),
    pytest.param(LabelsFilter(), state(), spec(extra_specs={"aggregate_instance_extra_specs:ssd": "true"}), "has no label ssd", id="label-nova-scope"),
    pytest.param(ImagePropertiesFilter(), state(arch="aarch64"), spec(image_properties={"architecture": "x86_64"}), "image is x86_64, host is aarch64", id="arch"),
    pytest.param(ImagePropertiesFilter(), state(domain_type="qemu"), spec(image_properties={"hypervisor_type": "kvm"}), "image needs kvm, host runs qemu", id="kvm-on-qemu"),
    pytest.param(ImagePropertiesFilter(), state(domain_type="kvm"), spec(image_properties={"img_hv_type": "xen"}), "image needs xen, host runs kvm", id="xen"),
    pytest.param(SameHostFilter(), state(instance_uuids={"x"}), spec(same_host=frozenset({"a", "b"})), "holds none of the 2 instance(s) in same_host", id="same-host"),
    pytest.param(DifferentHostFilter(), state(instance_uuids={"a", "x"}), spec(different_host=frozenset({"a", "b"})), "holds a, named in different_host", id="different-host"),
    pytest.param(ServerGroupAffinityFilter(), state(id=1), spec(group=group("affinity", h2=3)), "group web (affinity) has its 3 member(s) elsewhere", id="affinity"),
    pytest.param(ServerGroupAntiAffinityFilter(), state(id=1), spec(group=group("anti-affinity", h1=2)), "group web (anti-affinity) already has 2 member(s) here", id="anti-affinity"),
    pytest.param(NumInstancesFilter(3), state(instances=3), spec(), "has 3 instances, max 3", id="num-instances"),
    pytest.param(IoOpsFilter(2), state(builds_in_progress=2), spec(), "2 builds in progress, max 2", id="io-ops"),
]  # fmt: skip


@pytest.mark.parametrize(("host_filter", "host", "request_spec", "reason"), REFUSALS)
def test_filter_refuses_with_a_reason(
    host_filter: HostFilter, host: HostState, request_spec: RequestSpec, reason: str
) -> None:
    assert host_filter.check(host, request_spec) == Verdict(False, reason)


PASSES = [
    pytest.param(RequestedHostFilter(), state(name="lab-2"), spec(requested_host="lab-2"), id="requested-host"),
    pytest.param(ComputeFilter(), state(seen_seconds_ago=30), spec(), id="recently-seen"),
    pytest.param(ComputeFilter(), state(status="unknown"), spec(), id="status-unknown-but-known-capacity"),
    pytest.param(AvailabilityZoneFilter(), state(availability_zone="az2"), spec(), id="no-zone-wanted"),
    pytest.param(AvailabilityZoneFilter(), state(availability_zone="az1"), spec(availability_zone="az1"), id="zone"),
    pytest.param(RamFilter(), state(total_ram_mb=2048, ram_ratio=1.5), spec(ram_mb=3072), id="ram-exactly-fits"),
    pytest.param(LabelsFilter(), state(labels={"ssd": "true"}), spec(extra_specs={"label:ssd": "true"}), id="label-matches"),
    pytest.param(LabelsFilter(), state(), spec(extra_specs={"ssd": "true", "hw:cpu_policy": "dedicated"}), id="unscoped-ignored"),
    pytest.param(ImagePropertiesFilter(), state(arch="x86_64"), spec(image_properties={"architecture": "amd64"}), id="amd64-is-x86_64"),
    pytest.param(ImagePropertiesFilter(), state(domain_type="kvm"), spec(image_properties={"hypervisor_type": "qemu"}), id="qemu-on-kvm"),
    pytest.param(ImagePropertiesFilter(), state(), spec(image_properties={"architecture": "s390x", "img_hv_type": "kvm"}), id="unknown-host-facts"),
    pytest.param(SameHostFilter(), state(instance_uuids={"b"}), spec(same_host=frozenset({"a", "b"})), id="same-host"),
    pytest.param(DifferentHostFilter(), state(instance_uuids={"x"}), spec(different_host=frozenset({"a"})), id="different-host"),
    pytest.param(ServerGroupAffinityFilter(), state(id=1), spec(group=group("affinity")), id="affinity-empty-group"),
    pytest.param(ServerGroupAffinityFilter(), state(id=2), spec(group=group("affinity", h2=1)), id="affinity-home"),
    pytest.param(ServerGroupAffinityFilter(), state(id=1), spec(group=group("soft-affinity", h2=1)), id="affinity-soft-policy"),
    pytest.param(ServerGroupAntiAffinityFilter(), state(id=1), spec(group=group("anti-affinity", h2=1)), id="anti-affinity"),
    pytest.param(ServerGroupAntiAffinityFilter(), state(id=1), spec(group=group("soft-anti-affinity", h1=1)), id="anti-affinity-soft-policy"),
    pytest.param(NumInstancesFilter(3), state(instances=2), spec(), id="num-instances"),
    pytest.param(IoOpsFilter(2), state(builds_in_progress=1), spec(), id="io-ops"),
]  # fmt: skip


@pytest.mark.parametrize(("host_filter", "host", "request_spec"), PASSES)
def test_filter_passes(host_filter: HostFilter, host: HostState, request_spec: RequestSpec) -> None:
    assert host_filter.check(host, request_spec) is PASS


@pytest.mark.parametrize(
    ("host_filter", "request_spec", "applies"),
    [
        (RequestedHostFilter(), spec(), False),
        (AvailabilityZoneFilter(), spec(availability_zone="az1"), True),
        (AvailabilityZoneFilter(), spec(), False),
        (LabelsFilter(), spec(extra_specs={"hw:numa_nodes": "1"}), False),
        (LabelsFilter(), spec(extra_specs={"label:gpu": "a100"}), True),
        (ImagePropertiesFilter(), spec(image_properties={"os_distro": "debian"}), False),
        (SameHostFilter(), spec(), False),
        (DifferentHostFilter(), spec(different_host=frozenset({"a"})), True),
        (ServerGroupAffinityFilter(), spec(group=group("anti-affinity")), False),
        (ServerGroupAntiAffinityFilter(), spec(group=group("anti-affinity")), True),
        (RamFilter(), spec(), True),
    ],
)
def test_filters_skip_requests_they_cannot_refuse(
    host_filter: HostFilter, request_spec: RequestSpec, applies: bool
) -> None:
    assert host_filter.applies(request_spec) is applies


def test_labels_filter_rereads_a_new_flavor_after_its_memo() -> None:
    labels = LabelsFilter()
    host = state(labels={"ssd": "true"})
    assert labels.check(host, spec(extra_specs={"label:ssd": "true"})).passed
    assert not labels.check(host, spec(extra_specs={"label:ssd": "false"})).passed


def test_a_disabled_host_state_carries_the_operators_reason_from_its_row() -> None:
    row = Host(id=3, name="lab-1", address="127.0.0.1", enabled=False, disabled_reason="disk swap")
    assert HostState.from_host(row).disabled_reason == "disk swap"


def test_compute_filter_says_disabled_before_down() -> None:
    assert ComputeFilter().check(state(enabled=False, status="down"), spec()).reason == "disabled"


@pytest.mark.parametrize(
    ("seconds", "text"), [(45, "45 s"), (720, "12 min"), (3 * 3600, "3 h"), (3 * 86400, "3 d")]
)
def test_durations_read_like_an_operator_says_them(seconds: float, text: str) -> None:
    assert ago(seconds) == text


def test_consume_takes_a_spec_and_records_the_instance() -> None:
    host = state()
    host.consume(spec(vcpus=2, ram_mb=512, disk_gb=5))
    assert (host.used_vcpus, host.used_ram_mb, host.used_disk_gb) == (2, 512, 5)
    assert (host.instances, host.builds_in_progress, host.generation) == (1, 1, 1)
    assert host.instance_uuids == {"u-1"}
