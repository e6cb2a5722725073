"""Filters: each says whether a host can take the request, and if not, why.

Nova's filters return a bare boolean and leave the operator with "No valid host was
found"; ours return the reason so the scheduler can say what was short where.

Every filter is run once per host for a whole request and then again on one host at a
time as instances land, so `check` must be cheap: no allocation on the passing path
(`Verdict.ok()` is a shared constant) and no parsing of the request per call.
`applies(spec)` lets the engine skip a filter the request does not exercise (no zone
asked for, no group) instead of calling it ten thousand times to say yes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from orchestrator.scheduler.host_state import HostState
from orchestrator.scheduler.request import RequestSpec


@dataclass(frozen=True, slots=True)
class Verdict:
    passed: bool
    reason: str = ""

    @classmethod
    def ok(cls) -> Verdict:
        return PASS

    @classmethod
    def no(cls, reason: str) -> Verdict:
        return cls(False, reason)


PASS = Verdict(True)


class HostFilter:
    name: ClassVar[str]

    def applies(self, spec: RequestSpec) -> bool:
        """False when this request cannot be refused by this filter on any host."""
        return True

    def check(self, host: HostState, spec: RequestSpec) -> Verdict:
        raise NotImplementedError


def ago(seconds: float) -> str:
    """A duration as an operator says it: "45 s", "12 min", "3 h", "2 d"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"


class RequestedHostFilter(HostFilter):
    """With `--host`, every other host is out; the named one still faces the filters.
    A move (migrate, evacuate) also names the hosts it must not land on."""

    name = "requested_host"

    def applies(self, spec: RequestSpec) -> bool:
        return spec.requested_host is not None or bool(spec.ignore_hosts)

    def check(self, host: HostState, spec: RequestSpec) -> Verdict:
        if host.name in spec.ignore_hosts:
            return Verdict.no("the server is moving away from this host")
        if spec.requested_host is None or host.name == spec.requested_host:
            return PASS
        return Verdict.no(f"not the requested host {spec.requested_host}")


class VolumeHostFilter(HostFilter):
    """A server booting with local volumes goes to their host: a volume is a file on
    one host's storage and cannot follow it elsewhere."""

    name = "volume_host"

    def applies(self, spec: RequestSpec) -> bool:
        return spec.volume_host is not None

    def check(self, host: HostState, spec: RequestSpec) -> Verdict:
        if spec.volume_host is None or host.name == spec.volume_host:
            return PASS
        return Verdict.no(
            f"not the host of its volumes ({', '.join(spec.volumes)} on {spec.volume_host})"
        )


class ComputeFilter(HostFilter):
    """Hosts must be enabled, recently heard from, and have a working libvirt."""

    name = "compute"

    def __init__(self, service_down_seconds: float = 300.0) -> None:
        self.service_down_seconds = service_down_seconds

    def check(self, host: HostState, spec: RequestSpec) -> Verdict:
        if not host.enabled:
            reason = host.disabled_reason
            return Verdict.no(f"disabled: {reason}" if reason else "disabled")
        seen = host.seen_seconds_ago
        if host.status == "down":
            return Verdict.no(f"down: last seen {ago(seen)} ago" if seen is not None else "down")
        if host.libvirt_ok is False:
            return Verdict.no(f"libvirt unavailable: {host.libvirt_error or 'unknown error'}")
        if not host.known:
            return Verdict.no("capacity unknown (never reached)")
        # Nova's servicegroup rule: a host silent for longer than this may be gone, and
        # building there would fail only after the operator has waited for it.
        if seen is not None and seen > self.service_down_seconds:
            return Verdict.no(
                f"not heard from for {ago(seen)} (limit {ago(self.service_down_seconds)})"
            )
        return PASS


class AvailabilityZoneFilter(HostFilter):
    """A request for a zone only goes to hosts in that zone."""

    name = "availability_zone"

    def applies(self, spec: RequestSpec) -> bool:
        return spec.availability_zone is not None

    def check(self, host: HostState, spec: RequestSpec) -> Verdict:
        zone = spec.availability_zone
        if zone is None or host.availability_zone == zone:
            return PASS
        return Verdict.no(f"in zone {host.availability_zone}, {zone} wanted")


class RamFilter(HostFilter):
    """Hosts need the flavor's RAM free after the allocation ratio and reservation."""

    name = "ram"

    def check(self, host: HostState, spec: RequestSpec) -> Verdict:
        free = host.free_ram_mb
        if free >= spec.ram_mb:
            return PASS
        return Verdict.no(
            f"needs {spec.ram_mb} MiB, {max(free, 0):.0f} MiB free after {host.ram_ratio:g} ratio"
        )


class VcpuFilter(HostFilter):
    """Hosts need the flavor's vCPUs free after the allocation ratio and reservation."""

    name = "vcpu"

    def check(self, host: HostState, spec: RequestSpec) -> Verdict:
        free = host.free_vcpus
        if free >= spec.vcpus:
            return PASS
        return Verdict.no(
            f"needs {spec.vcpus} vCPU, {max(free, 0):g} free after {host.cpu_ratio:g} ratio"
        )


class DiskFilter(HostFilter):
    """Hosts need the flavor's disk free after the allocation ratio and reservation."""

    name = "disk"

    def check(self, host: HostState, spec: RequestSpec) -> Verdict:
        free = host.free_disk_gb
        if free >= spec.disk_gb:
            return PASS
        return Verdict.no(
            f"needs {spec.disk_gb} GiB, {max(free, 0):.0f} GiB free after {host.disk_ratio:g} ratio"
        )


LABEL_SCOPES = ("label:", "aggregate_instance_extra_specs:")


class LabelsFilter(HostFilter):
    """Flavor extra specs scoped `label:` must match the host's labels.

    Nova's AggregateInstanceExtraSpecsFilter does this with aggregate metadata; herd
    keeps the metadata on the host, and accepts Nova's scope name so flavors carry over.
    Unscoped keys and other scopes belong to other consumers and are ignored.
    """

    name = "labels"

    def __init__(self) -> None:
        # One-entry memo keyed on the dict's identity: every spec of a request usually
        # shares the flavor's dict, and parsing it per host would dominate the filter.
        self._memo_of: dict[str, str] | None = None
        self._memo: tuple[tuple[str, str], ...] = ()

    def wanted(self, spec: RequestSpec) -> tuple[tuple[str, str], ...]:
        if spec.extra_specs is not self._memo_of:
            pairs = []
            for key, value in spec.extra_specs.items():
                for scope in LABEL_SCOPES:
                    if key.startswith(scope):
                        pairs.append((key[len(scope) :], value))
            self._memo_of, self._memo = spec.extra_specs, tuple(pairs)
        return self._memo

    def applies(self, spec: RequestSpec) -> bool:
        return bool(self.wanted(spec))

    def check(self, host: HostState, spec: RequestSpec) -> Verdict:
        labels = host.labels
        for key, value in self.wanted(spec):
            have = labels.get(key)
            if have != value:
                if have is None:
                    return Verdict.no(f"has no label {key}")
                return Verdict.no(f"label {key}={value} wanted, host has {key}={have}")
        return PASS


ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "ppc64el": "ppc64le"}


def canonical_arch(arch: str) -> str:
    arch = arch.lower()
    return ARCH_ALIASES.get(arch, arch)


class ImagePropertiesFilter(HostFilter):
    """The image's architecture and hypervisor type must suit the host.

    A host whose agent has not reported a value passes: refusing it would make a fresh
    fleet unschedulable until every fact is in, and the build would fail loudly anyway.
    """

    name = "image_properties"

    def applies(self, spec: RequestSpec) -> bool:
        props = spec.image_properties
        return "architecture" in props or "hypervisor_type" in props or "img_hv_type" in props

    def check(self, host: HostState, spec: RequestSpec) -> Verdict:
        props = spec.image_properties
        arch = props.get("architecture")
        host_arch = host.arch
        if (
            arch
            and host_arch
            and arch != host_arch
            and canonical_arch(arch) != canonical_arch(host_arch)
        ):
            return Verdict.no(f"image is {arch}, host is {host_arch}")
        hv_type = props.get("hypervisor_type") or props.get("img_hv_type")
        if hv_type and host.domain_type:
            hv_type = hv_type.lower()
            # A KVM host can always fall back to plain QEMU emulation; not the reverse.
            runs = ("kvm", "qemu") if host.domain_type == "kvm" else (host.domain_type,)
            if hv_type not in runs:
                return Verdict.no(f"image needs {hv_type}, host runs {host.domain_type}")
        return PASS


class SameHostFilter(HostFilter):
    """Nova's `same_host` hint: the host must hold one of the named instances."""

    name = "same_host"

    def applies(self, spec: RequestSpec) -> bool:
        return bool(spec.same_host)

    def check(self, host: HostState, spec: RequestSpec) -> Verdict:
        if not spec.same_host or not spec.same_host.isdisjoint(host.instance_uuids):
            return PASS
        return Verdict.no(f"holds none of the {len(spec.same_host)} instance(s) in same_host")


class DifferentHostFilter(HostFilter):
    """Nova's `different_host` hint: the host must hold none of the named instances."""

    name = "different_host"

    def applies(self, spec: RequestSpec) -> bool:
        return bool(spec.different_host)

    def check(self, host: HostState, spec: RequestSpec) -> Verdict:
        if not host.instance_uuids or spec.different_host.isdisjoint(host.instance_uuids):
            return PASS
        held = min(spec.different_host & host.instance_uuids)
        return Verdict.no(f"holds {held}, named in different_host")


class ServerGroupAffinityFilter(HostFilter):
    """An affinity group lives on one host: once it has members, only that host."""

    name = "affinity"

    def applies(self, spec: RequestSpec) -> bool:
        return spec.group is not None and spec.group.policy == "affinity"

    def check(self, host: HostState, spec: RequestSpec) -> Verdict:
        group = spec.group
        if group is None or group.policy != "affinity" or group.hosts.get(host.id, 0) > 0:
            return PASS
        members = group.members
        if members == 0:
            return PASS
        return Verdict.no(f"group {group.name} (affinity) has its {members} member(s) elsewhere")


class ServerGroupAntiAffinityFilter(HostFilter):
    """An anti-affinity group never puts two members on one host."""

    name = "anti_affinity"

    def applies(self, spec: RequestSpec) -> bool:
        return spec.group is not None and spec.group.policy == "anti-affinity"

    def check(self, host: HostState, spec: RequestSpec) -> Verdict:
        group = spec.group
        if group is None or group.policy != "anti-affinity":
            return PASS
        here = group.hosts.get(host.id, 0)
        if here == 0:
            return PASS
        return Verdict.no(f"group {group.name} (anti-affinity) already has {here} member(s) here")


class NumInstancesFilter(HostFilter):
    """A cap on instances per host, whatever their size (Nova's NumInstancesFilter)."""

    name = "num_instances"

    def __init__(self, max_instances_per_host: int = 50) -> None:
        self.max_instances_per_host = max_instances_per_host

    def check(self, host: HostState, spec: RequestSpec) -> Verdict:
        if host.instances < self.max_instances_per_host:
            return PASS
        return Verdict.no(f"has {host.instances} instances, max {self.max_instances_per_host}")


class IoOpsFilter(HostFilter):
    """A cap on concurrent builds per host: image copies saturate its disk and network."""

    name = "io_ops"

    def __init__(self, max_io_ops_per_host: int = 8) -> None:
        self.max_io_ops_per_host = max_io_ops_per_host

    def check(self, host: HostState, spec: RequestSpec) -> Verdict:
        if host.builds_in_progress < self.max_io_ops_per_host:
            return PASS
        return Verdict.no(
            f"{host.builds_in_progress} builds in progress, max {self.max_io_ops_per_host}"
        )


DEFAULT_FILTERS: tuple[HostFilter, ...] = (ComputeFilter(), RamFilter(), VcpuFilter(), DiskFilter())

# The names `SchedulerConfig.enabled_filters` accepts; the requested-host filter is not
# among them because the engine always runs it first (see config.build_filters).
FILTER_CLASSES: dict[str, type[HostFilter]] = {
    cls.name: cls
    for cls in (
        ComputeFilter,
        AvailabilityZoneFilter,
        RamFilter,
        VcpuFilter,
        DiskFilter,
        LabelsFilter,
        ImagePropertiesFilter,
        SameHostFilter,
        DifferentHostFilter,
        ServerGroupAffinityFilter,
        ServerGroupAntiAffinityFilter,
        NumInstancesFilter,
        IoOpsFilter,
    )
}
