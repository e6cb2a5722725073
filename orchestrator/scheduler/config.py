"""Scheduler settings, with Nova's defaults, and the filters and weighers they build.

Names are short and lower-case because operators read them: they head the columns of
`herd` explanations and the "0/12 hosts fit: 7 ram, 3 anti_affinity" summaries.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator.scheduler.filters import (
    FILTER_CLASSES,
    ComputeFilter,
    HostFilter,
    IoOpsFilter,
    NumInstancesFilter,
    RequestedHostFilter,
    VolumeHostFilter,
)
from orchestrator.scheduler.weighers import (
    WEIGHER_CLASSES,
    IoOpsWeigher,
    NumInstancesWeigher,
    Weigher,
)

# Cheap, decisive filters first: a host is charged only until its first refusal, and
# the first refusal is the one an operator reads.
DEFAULT_FILTER_NAMES: tuple[str, ...] = (
    "compute",
    "availability_zone",
    "ram",
    "vcpu",
    "disk",
    "labels",
    "image_properties",
    "same_host",
    "different_host",
    "affinity",
    "anti_affinity",
    "num_instances",
    "io_ops",
)

# Nova's defaults (`[filter_scheduler] *_weight_multiplier`).
DEFAULT_WEIGHTS: dict[str, float] = {
    "ram": 1.0,
    "vcpu": 1.0,
    "disk": 1.0,
    "num_instances": 0.0,
    "io_ops": -1.0,
    "build_failure": 1_000_000.0,
    "soft_affinity": 1.0,
    "soft_anti_affinity": 1.0,
}


class SchedulerConfig(BaseModel):
    # NaN or an infinity would make every weighed score NaN and the ranking random.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    enabled_filters: list[str] = Field(default_factory=lambda: list(DEFAULT_FILTER_NAMES))
    # Missing names take their defaults, so a config says only what it changes.
    weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    # Nova's host_subset_size: choose at random among the best N, so two schedulers
    # working from the same view do not all pick the same host and collide on claims.
    host_subset_size: int = Field(default=1, ge=1)
    # One host to build on plus max_attempts - 1 alternates to reschedule to.
    max_attempts: int = Field(default=3, ge=1)
    max_instances_per_host: int = Field(default=50, ge=1)
    max_io_ops_per_host: int = Field(default=8, ge=1)
    service_down_seconds: float = Field(default=300.0, gt=0)

    @field_validator("enabled_filters")
    @classmethod
    def _known_filters(cls, names: list[str]) -> list[str]:
        unknown = [n for n in names if n not in FILTER_CLASSES]
        if unknown:
            raise ValueError(
                f"unknown filter(s) {', '.join(unknown)}; valid: {', '.join(FILTER_CLASSES)}"
            )
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"filter(s) listed twice: {', '.join(repeated)}")
        if ComputeFilter.name not in names:
            # Without it `herd host disable` and a down host mean nothing to placement:
            # builds, moves and evacuations would land on them.
            raise ValueError(
                f"{'is empty' if not names else 'lacks compute'}: it must include 'compute', "
                "or disabled and down hosts are chosen too"
            )
        return names

    @field_validator("weights")
    @classmethod
    def _known_weights(cls, weights: dict[str, float]) -> dict[str, float]:
        unknown = [n for n in weights if n not in WEIGHER_CLASSES]
        if unknown:
            raise ValueError(
                f"unknown weigher(s) {', '.join(unknown)}; valid: {', '.join(WEIGHER_CLASSES)}"
            )
        return {**DEFAULT_WEIGHTS, **weights}


def build_filters(config: SchedulerConfig) -> tuple[HostFilter, ...]:
    """The configured filters, in order, after the always-on requested-host filter.

    The requested-host filter is not configurable: `--host` must mean that host whatever
    the configuration, and running it first makes "not the requested host" the reason
    every other host shows.
    """
    made: list[HostFilter] = [RequestedHostFilter(), VolumeHostFilter()]
    for name in config.enabled_filters:
        if name == "compute":
            made.append(ComputeFilter(config.service_down_seconds))
        elif name == "num_instances":
            made.append(NumInstancesFilter(config.max_instances_per_host))
        elif name == "io_ops":
            made.append(IoOpsFilter(config.max_io_ops_per_host))
        else:
            made.append(FILTER_CLASSES[name]())
    return tuple(made)


def build_weighers(config: SchedulerConfig) -> tuple[Weigher, ...]:
    """The weighers with a non-zero multiplier (a zero one cannot change a choice)."""
    made: list[Weigher] = []
    for name, multiplier in config.weights.items():
        if multiplier == 0:
            continue
        if name == "num_instances":
            ceiling = (
                config.max_instances_per_host if "num_instances" in config.enabled_filters else None
            )
            made.append(NumInstancesWeigher(multiplier, ceiling))
        elif name == "io_ops":
            ceiling = config.max_io_ops_per_host if "io_ops" in config.enabled_filters else None
            made.append(IoOpsWeigher(multiplier, ceiling))
        else:
            made.append(WEIGHER_CLASSES[name](multiplier))
    return tuple(made)
