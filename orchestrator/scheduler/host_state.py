"""What the scheduler knows about a host: capacity, ratios and what is already claimed.

Built from the DB in one query per table, then updated in memory as a multi-instance
request claims, so the second instance sees the first one's usage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from orchestrator.db.models import Host
from orchestrator.scheduler.request import RequestSpec


@dataclass
class HostState:
    id: int
    name: str
    enabled: bool
    libvirt_ok: bool | None
    libvirt_error: str | None
    total_vcpus: int | None
    total_ram_mb: int | None
    total_disk_gb: int | None
    cpu_ratio: float
    ram_ratio: float
    disk_ratio: float
    reserved_vcpus: int
    reserved_ram_mb: int
    reserved_disk_gb: int
    generation: int
    last_seen_at: datetime | None
    availability_zone: str = "default"
    labels: dict[str, str] = field(default_factory=dict)
    used_vcpus: int = 0
    used_ram_mb: int = 0
    used_disk_gb: int = 0
    instances: int = 0
    # "up" | "down" | "no-libvirt" | "unknown", as the loader derives it from the facts.
    status: str = "up"
    # None when the host has never answered; the compute filter compares it with
    # `service_down_seconds`, like Nova's servicegroup check.
    seen_seconds_ago: float | None = None
    arch: str | None = None
    domain_type: str | None = None
    # Instances being built there right now: Nova's io_ops. Builds are the expensive
    # moment (image copy, domain define), so the io_ops filter and weigher steer away.
    builds_in_progress: int = 0
    # Consecutive recent build failures, reset on success: a host that keeps failing
    # sinks to the bottom (Nova's BuildFailureWeigher) instead of eating every retry.
    failed_builds: int = 0
    instance_uuids: set[str] = field(default_factory=set)
    # What the operator gave `herd host disable --reason`, so a refusal can say why.
    disabled_reason: str | None = None

    @classmethod
    def from_host(cls, host: Host) -> HostState:
        assert host.id is not None
        return cls(
            id=host.id,
            name=host.name,
            enabled=host.enabled,
            libvirt_ok=host.libvirt_ok,
            libvirt_error=host.libvirt_error,
            total_vcpus=host.total_vcpus,
            total_ram_mb=host.total_ram_mb,
            total_disk_gb=host.total_disk_gb,
            cpu_ratio=host.cpu_ratio,
            ram_ratio=host.ram_ratio,
            disk_ratio=host.disk_ratio,
            reserved_vcpus=host.reserved_vcpus,
            reserved_ram_mb=host.reserved_ram_mb,
            reserved_disk_gb=host.reserved_disk_gb,
            generation=host.generation,
            last_seen_at=host.last_seen_at,
            availability_zone=host.availability_zone,
            labels=dict(host.labels),
            disabled_reason=host.disabled_reason,
        )

    @property
    def known(self) -> bool:
        return None not in (self.total_vcpus, self.total_ram_mb, self.total_disk_gb)

    # Capacity after the allocation ratio and the reservation, minus what is claimed.
    @property
    def free_vcpus(self) -> float:
        return (self.total_vcpus or 0) * self.cpu_ratio - self.reserved_vcpus - self.used_vcpus

    @property
    def free_ram_mb(self) -> float:
        return (self.total_ram_mb or 0) * self.ram_ratio - self.reserved_ram_mb - self.used_ram_mb

    @property
    def free_disk_gb(self) -> float:
        return (
            (self.total_disk_gb or 0) * self.disk_ratio - self.reserved_disk_gb - self.used_disk_gb
        )

    def consume(self, spec: RequestSpec) -> None:
        """Account for an instance placed here, so the next spec of the request sees it."""
        self.used_vcpus += spec.vcpus
        self.used_ram_mb += spec.ram_mb
        self.used_disk_gb += spec.disk_gb
        self.instances += 1
        self.builds_in_progress += 1
        self.instance_uuids.add(spec.instance_uuid)
        self.generation += 1
