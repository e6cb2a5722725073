"""The `reconcile:` section of herd's config: timeouts, and a policy per kind of drift.

Defaults follow Nova's periodic tasks where Nova has one: power state is synced into
the DB (``sync_power_state``), domains of deleted instances are reaped
(``running_deleted_instance_action = reap``). Domains herd knows nothing about are only
reported: they may belong to another herd, or to an operator.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

FixOrReport = Literal["fix", "report"]


class ReconcileConfig(BaseModel):
    # An infinite timeout would never let an abandoned task clear ("never" is null).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    host_timeout: float = Field(default=20.0, gt=0, le=600)
    """Seconds one host's survey may take (handshake, facts, domains, jobs)."""
    survey_concurrency: int = Field(default=64, ge=1, le=10000)
    """Hosts surveyed at once: a fleet-wide stampede of SSH handshakes would make every
    host miss its timeout; the timeout counts from when a host's turn comes."""
    down_after: int = Field(default=3, ge=1, le=1000)
    """Consecutive missed surveys before a host is marked down."""
    build_timeout: float = Field(default=3600.0, gt=0)
    """Seconds a server may stay building with no job running before it is stuck."""
    collect_grace: float = Field(default=30.0, ge=0, le=3600)
    """Seconds a job may sit finished on its host, not yet collected, before reconcile
    collects it: the command that cast it (on this machine or another operator's)
    collects it itself moments later, and a reconcile during the boots must not race
    it. Only a caster that died leaves a job uncollected for longer."""
    finished_jobs: FixOrReport = "fix"
    stuck_builds: FixOrReport = "fix"
    power_state: Literal["record", "restore", "report"] = "record"
    """record: the DB takes the host's power state (Nova); restore: the host is put back
    to the DB's state (start the domain, or stop it); report: only say so."""
    deleted_running: Literal["noop", "log", "shutdown", "reap"] = "reap"
    """Domains of servers that are deleted, or that the DB places on another host."""
    unknown_domains: Literal["noop", "log", "shutdown", "reap"] = "log"
    """Domains with herd's metadata whose server this DB has never heard of."""
    missing_domains: FixOrReport = "fix"
    claims: FixOrReport = "fix"
    orphan_volumes: Literal["noop", "report", "reap"] = "report"
    """Volume files no record of this host has (another herd's, a copy left by a move):
    only reported by default; ``reap`` deletes the file, unless a domain has it;
    ``noop`` does not look (a volume directory shared with something else)."""
    missing_volumes: Literal["record", "report"] = "record"
    """Available or in-use volumes whose file is gone: ``record`` keeps the record with
    the loss written on it (an available one goes to ``error``); never dropped."""
    volume_attachments: Literal["restore", "record", "report"] = "report"
    """A volume the DB has attached that the domain lacks, or a volume disk the domain
    has that the DB does not: ``restore`` makes the domain match the DB (attach, or
    detach), ``record`` makes the DB match the domain, ``report`` only says so."""
    stuck_volumes: FixOrReport = "fix"
    """Volumes left creating, extending or deleting by a command that died: finished or
    undone from what the host has."""
    volume_timeout: float = Field(default=3600.0, gt=0)
    """Seconds a volume may stay creating, extending or deleting, its command not seen
    alive on this machine, before it is stuck."""
    image_cache_max_age_hours: float | None = Field(default=None, ge=0)
    """Remove cached images unused for this long; null: never."""
