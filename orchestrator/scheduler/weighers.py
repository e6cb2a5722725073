"""Weighers: among the hosts that fit, which is most attractive.

Nova's shape: each weigher returns a raw number per host (higher = more attractive
before the multiplier), the scheduler normalises each weigher's numbers to [0, 1] over
the candidates and multiplies, so one multiplier per weigher sets its direction and its
importance relative to the others (`nova/scheduler/weights/`).

Normalisation bounds are fixed once per request (see engine.py), so a weigher also says
how far the request itself can move a host's raw value (`widen`): resources only go
down to the host running dry, counters only go up to the filter's ceiling. With those
bounds, values reached later in the request still fall inside [0, 1].
"""

from __future__ import annotations

from typing import ClassVar

from orchestrator.scheduler.host_state import HostState
from orchestrator.scheduler.request import RequestSpec


class Weigher:
    name: ClassVar[str]

    def __init__(self, multiplier: float) -> None:
        self.multiplier = multiplier

    def applies(self, spec: RequestSpec) -> bool:
        """False when the raw value is the same on every host for this request."""
        return True

    def raw(self, host: HostState, spec: RequestSpec) -> float:
        raise NotImplementedError

    def widen(self, lo: float, hi: float, spec: RequestSpec, count: int) -> tuple[float, float]:
        """Bounds that also hold every value placing `count` instances can produce."""
        return lo, hi


class _FreeResourceWeigher(Weigher):
    """Free capacity: spread by default, like Nova's RAM/CPU/disk weighers."""

    def demand(self, spec: RequestSpec) -> int:
        raise NotImplementedError

    def widen(self, lo: float, hi: float, spec: RequestSpec, count: int) -> tuple[float, float]:
        # A candidate's free capacity falls by `demand` per instance placed on it, and
        # never below zero while the capacity filter runs.
        return min(lo, max(0.0, lo - count * self.demand(spec))), hi


class RamWeigher(_FreeResourceWeigher):
    name = "ram"

    def demand(self, spec: RequestSpec) -> int:
        return spec.ram_mb

    def raw(self, host: HostState, spec: RequestSpec) -> float:
        return host.free_ram_mb


class VcpuWeigher(_FreeResourceWeigher):
    name = "vcpu"

    def demand(self, spec: RequestSpec) -> int:
        return spec.vcpus

    def raw(self, host: HostState, spec: RequestSpec) -> float:
        return host.free_vcpus


class DiskWeigher(_FreeResourceWeigher):
    name = "disk"

    def demand(self, spec: RequestSpec) -> int:
        return spec.disk_gb

    def raw(self, host: HostState, spec: RequestSpec) -> float:
        return host.free_disk_gb


class _CounterWeigher(Weigher):
    """A count the request raises by one per instance, up to its filter's ceiling."""

    def __init__(self, multiplier: float, ceiling: int | None = None) -> None:
        super().__init__(multiplier)
        self.ceiling = ceiling

    def widen(self, lo: float, hi: float, spec: RequestSpec, count: int) -> tuple[float, float]:
        top = hi + count
        if self.ceiling is not None:
            top = min(top, self.ceiling)
        return lo, max(hi, top)


class NumInstancesWeigher(_CounterWeigher):
    """Instances on the host; Nova's multiplier 0 ignores it, negative spreads by count."""

    name = "num_instances"

    def raw(self, host: HostState, spec: RequestSpec) -> float:
        return host.instances


class IoOpsWeigher(_CounterWeigher):
    """Builds in progress; the default multiplier -1 sinks busy hosts."""

    name = "io_ops"

    def raw(self, host: HostState, spec: RequestSpec) -> float:
        return host.builds_in_progress


class BuildFailureWeigher(Weigher):
    """Recent build failures; the huge default multiplier makes them decisive.

    Nova's answer to a host that accepts every build and fails it: without this weigher
    that host looks emptiest and attracts every retry.
    """

    name = "build_failure"

    def raw(self, host: HostState, spec: RequestSpec) -> float:
        return -host.failed_builds


class SoftAffinityWeigher(Weigher):
    """Soft affinity: prefer hosts already holding members of the group."""

    name = "soft_affinity"

    def applies(self, spec: RequestSpec) -> bool:
        return spec.group is not None and spec.group.policy == "soft-affinity"

    def raw(self, host: HostState, spec: RequestSpec) -> float:
        group = spec.group
        if group is None or group.policy != "soft-affinity":
            return 0.0
        return group.hosts.get(host.id, 0)

    def widen(self, lo: float, hi: float, spec: RequestSpec, count: int) -> tuple[float, float]:
        # At least one member's worth: otherwise a group with no members yet spans
        # nothing, and the first member would not pull the second towards it.
        return lo, max(hi, lo + 1)


class SoftAntiAffinityWeigher(Weigher):
    """Soft anti-affinity: prefer hosts holding fewer members of the group."""

    name = "soft_anti_affinity"

    def applies(self, spec: RequestSpec) -> bool:
        return spec.group is not None and spec.group.policy == "soft-anti-affinity"

    def raw(self, host: HostState, spec: RequestSpec) -> float:
        group = spec.group
        if group is None or group.policy != "soft-anti-affinity":
            return 0.0
        return -group.hosts.get(host.id, 0)

    def widen(self, lo: float, hi: float, spec: RequestSpec, count: int) -> tuple[float, float]:
        # One member's worth, as for soft affinity; a host with more members than the
        # least loaded one by a whole member scores 0 (clamped), which keeps the weigher
        # as strong as Nova's while members are being spread over fresh hosts.
        return min(lo, hi - 1), hi


WEIGHER_CLASSES: dict[str, type[Weigher]] = {
    cls.name: cls
    for cls in (
        RamWeigher,
        VcpuWeigher,
        DiskWeigher,
        NumInstancesWeigher,
        IoOpsWeigher,
        BuildFailureWeigher,
        SoftAffinityWeigher,
        SoftAntiAffinityWeigher,
    )
}
