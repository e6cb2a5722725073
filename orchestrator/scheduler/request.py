"""What is being placed: the resources of one instance and its constraints."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

GROUP_POLICIES = ("affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity")


@dataclass(eq=False)
class GroupState:
    """A server group as one request sees it.

    Mutable and shared by every spec of the request, so the filters and weighers for
    the second instance see where the first one landed without re-reading the DB.
    """

    id: int
    name: str
    policy: str
    hosts: Counter[int] = field(default_factory=Counter)

    @property
    def members(self) -> int:
        return sum(self.hosts.values())


@dataclass(frozen=True)
class RequestSpec:
    """One instance to place; the specs of one request differ only in `instance_uuid`."""

    instance_uuid: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    extra_specs: dict[str, str] = field(default_factory=dict)
    image_properties: dict[str, str] = field(default_factory=dict)
    availability_zone: str | None = None
    # Like Nova's `--host`: only that host is a candidate, but the filters still run, so
    # an operator pinning a build cannot overcommit a host by accident.
    requested_host: str | None = None
    # Nova's ignore_hosts: where a move comes from (migrate, evacuate) is never a target.
    ignore_hosts: frozenset[str] = frozenset()
    group: GroupState | None = None
    same_host: frozenset[str] = frozenset()
    different_host: frozenset[str] = frozenset()
    # The host of the local volumes the server boots with (`create --volume`), and
    # their names, for the refusal: a volume cannot leave its host.
    volume_host: str | None = None
    volumes: tuple[str, ...] = ()
