"""What reconcile finds, and the snapshot of the DB it finds it in: shared by the rules
(drift.py for servers, volume_drift.py for volumes) and the repairs."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from orchestrator.db.models import (
    AgentJob,
    Allocation,
    Host,
    Instance,
    TaskRecord,
    Volume,
    VolumeSnapshot,
)
from orchestrator.errors import HerdError


class Skipped(HerdError):
    """The drift resolved itself (or changed) between the snapshot and the repair."""


HELD = "held"  # the policy of a finding an open task keeps out of reach: reported only
REPORT_ONLY = ("report", "log", HELD)


@dataclass
class Finding:
    kind: str
    detail: str
    policy: str  # what the configured policy does about it: fix, record, reap, report...
    host: str | None = None
    server: str | None = None
    uuid: str | None = None
    outcome: str = "unfixed"  # fixed | unfixed | failed | would fix
    error: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def wants_fix(self) -> bool:
        return self.policy not in REPORT_ONLY

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "host": self.host,
            "server": self.server,
            "uuid": self.uuid,
            "detail": self.detail,
            "policy": self.policy,
            "outcome": self.outcome,
            "error": self.error,
            "held_by": self.data.get("held_by"),
        }


@dataclass(frozen=True)
class OpenTask:
    """An open journal task as reconcile sees it: what it may own, and whether its
    runner still runs (judged by the reconciler, so the rules stay pure)."""

    id: int
    kind: str
    step: str
    server: str  # the server's uuid
    hosts: frozenset[int]  # source and destination: where a domain of it may be the task's
    claims: frozenset[str]  # allocation keys it holds: the server's, its migration's
    live: bool

    @classmethod
    def of(cls, record: TaskRecord, live: bool) -> OpenTask:
        held = {record.instance_uuid}
        held.update(v for v in record.claims.values() if isinstance(v, str))
        if record.migration_uuid:
            held.add(record.migration_uuid)
        hosts = {h for h in (record.source_host_id, record.dest_host_id) if h is not None}
        assert record.id is not None
        return cls(
            record.id, record.kind, record.step, record.instance_uuid, frozenset(hosts),
            frozenset(held), live,
        )  # fmt: skip

    def __str__(self) -> str:
        return f"open task {self.id} ({self.kind}, step {self.step})"


@dataclass(frozen=True)
class Snapshot:
    hosts: dict[int, Host]
    instances: Sequence[Instance]
    allocations: Sequence[Allocation]
    open_jobs: Sequence[AgentJob]  # not yet collected
    image_names: dict[str, list[str]]  # sha256 -> image names
    now: float = field(default_factory=time.time)
    # Claims held by an open migration (a resize's old size on its source), by uuid.
    migration_claims: frozenset[str] = frozenset()
    # Claims whose consumer is a volume (its disk space), not a server.
    volume_claims: frozenset[str] = frozenset()
    # Journal tasks still open (running, or recovering: recovery could not finish them).
    open_tasks: Sequence[OpenTask] = ()
    volumes: Sequence[Volume] = ()
    # (host name, sha256) of images whose only copy is that host's cache (made from a
    # server): never pruned there.
    pinned_images: frozenset[tuple[str, str]] = frozenset()
    # Volumes whose status was set by a command still running (judged by the reconciler).
    live_volume_owners: frozenset[str] = frozenset()
    volume_snapshots: Sequence[VolumeSnapshot] = ()
    live_snapshot_owners: frozenset[str] = frozenset()  # as live_volume_owners


def epoch(moment: datetime | None) -> float:
    if moment is None:
        return 0.0
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
