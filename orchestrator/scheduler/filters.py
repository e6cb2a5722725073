"""Filters: each says whether a host can take the request, and if not, why.

Nova's filters return a bare boolean and leave the operator with "No valid host was
found"; ours return the reason so the scheduler can say what was short where.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from orchestrator.scheduler.host_state import HostState
from orchestrator.scheduler.request import RequestSpec


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str = ""

    @classmethod
    def ok(cls) -> Verdict:
        return cls(True)

    @classmethod
    def no(cls, reason: str) -> Verdict:
        return cls(False, reason)


class HostFilter:
    name: ClassVar[str]

    def check(self, host: HostState, spec: RequestSpec) -> Verdict:
        raise NotImplementedError


class ComputeFilter(HostFilter):
    """Hosts must be enabled, have reported their facts, and have a working libvirt."""

    name = "compute"

    def check(self, host: HostState, spec: RequestSpec) -> Verdict:
        if not host.enabled:
            return Verdict.no("disabled")
        if host.libvirt_ok is False:
            return Verdict.no(f"libvirt unavailable: {host.libvirt_error or 'unknown error'}")
        if not host.known:
            return Verdict.no("capacity unknown (never reached)")
        return Verdict.ok()


class RamFilter(HostFilter):
    """Hosts need the flavor's RAM free after the allocation ratio and reservation."""

    name = "ram"

    def check(self, host: HostState, spec: RequestSpec) -> Verdict:
        free = host.free_ram_mb
        if free >= spec.ram_mb:
            return Verdict.ok()
        return Verdict.no(
            f"needs {spec.ram_mb} MiB, {max(free, 0):.0f} MiB free after {host.ram_ratio:g} ratio"
        )


class VcpuFilter(HostFilter):
    name = "vcpu"

    def check(self, host: HostState, spec: RequestSpec) -> Verdict:
        free = host.free_vcpus
        if free >= spec.vcpus:
            return Verdict.ok()
        return Verdict.no(
            f"needs {spec.vcpus} vCPU, {max(free, 0):g} free after {host.cpu_ratio:g} ratio"
        )


class DiskFilter(HostFilter):
    name = "disk"

    def check(self, host: HostState, spec: RequestSpec) -> Verdict:
        free = host.free_disk_gb
        if free >= spec.disk_gb:
            return Verdict.ok()
        return Verdict.no(
            f"needs {spec.disk_gb} GiB, {max(free, 0):.0f} GiB free after {host.disk_ratio:g} ratio"
        )


DEFAULT_FILTERS: tuple[HostFilter, ...] = (ComputeFilter(), RamFilter(), VcpuFilter(), DiskFilter())
