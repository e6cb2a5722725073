"""Every way the DB and the hosts can disagree, found from one snapshot of each.

Pure: no I/O, so each rule is unit-tested as data. The reconciler turns the findings
into repairs. A server with work in flight (an uncollected job that is still running,
or a task_state) is left alone by every rule but the job rule: the work in progress
will settle it, and a repair racing it would make things worse.

A server with an open journal task (conductor/journal.py) is held harder still: on the
hosts the task names, its domains may be the task's (a live migration's destination
copy before the DB says so), so every finding there is reported as ``held`` and nothing
is fixed, whether the task's runner lives or died and waits for recovery. Nor are the
claims the task holds fixed. Reconcile never removes a domain an open task may own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from orchestrator.conductor.lifecycle import TaskSeen
from orchestrator.db.models import POWER_OF, AgentJob, Host, Instance, PowerState, VmState
from orchestrator.reconcile.config import ReconcileConfig
from orchestrator.reconcile.findings import (
    HELD,
    REPORT_ONLY,
    Finding,
    OpenTask,
    Snapshot,
    epoch,
)
from orchestrator.reconcile.survey import HostSurvey
from orchestrator.reconcile.volume_drift import volume_findings

__all__ = ["HELD", "REPORT_ONLY", "Finding", "OpenTask", "Snapshot", "detect", "epoch"]

FINISHED = ("succeeded", "failed", "lost")
# A job row the host never heard of: after this long the cast surely never arrived.
LOST_CAST_SECONDS = 120.0


def detect(
    snapshot: Snapshot, surveys: Sequence[HostSurvey], config: ReconcileConfig
) -> list[Finding]:
    findings: list[Finding] = []
    by_uuid = {i.uuid: i for i in snapshot.instances}
    reached = {s.host.id: s for s in surveys if s.ok}
    findings += _host_findings(surveys, config)
    busy: set[str] = set()  # servers with a job still in flight: no other rule touches them
    for job in snapshot.open_jobs:
        survey = reached.get(job.host_id)
        if survey is None:
            if job.instance_uuid:
                busy.add(job.instance_uuid)
            continue
        findings += _job_findings(job, survey, by_uuid, snapshot.now, config, busy)
    for survey in reached.values():
        findings += _domain_findings(survey, snapshot, by_uuid, busy, config)
    findings += _stuck_builds(snapshot, busy, config)
    findings += _claim_findings(snapshot, config)
    if config.image_cache_max_age_hours is not None:
        for survey in reached.values():
            findings += _stale_images(survey, snapshot, config)
    findings += volume_findings(snapshot, surveys, config)
    _hold(findings, snapshot)
    return findings


def _holder(finding: Finding, snapshot: Snapshot, host_ids: dict[str, int]) -> OpenTask | None:
    """The open task that may own what ``finding`` would fix: a domain (or the server's
    power, state or job) on a host the task names, or a claim the task holds."""
    if finding.uuid is None:
        return None
    for task in snapshot.open_tasks:
        if finding.kind == "claim":
            if finding.uuid in task.claims:
                return task
        elif finding.uuid == task.server and host_ids.get(finding.host or "") in task.hosts:
            return task
    return None


def _hold(findings: list[Finding], snapshot: Snapshot) -> None:
    """Turn every finding an open task may own into a report: ``held``, no fix."""
    host_ids = {h.name: i for i, h in snapshot.hosts.items()}
    for finding in findings:
        task = _holder(finding, snapshot, host_ids)
        if task is None:
            continue
        finding.policy = HELD
        finding.detail = f"{finding.detail}; left alone: held by {task}"
        finding.data["held_by"] = task.id


def _host_findings(surveys: Sequence[HostSurvey], config: ReconcileConfig) -> list[Finding]:
    found = []
    for survey in surveys:
        host = survey.host
        if survey.ok:
            if host.marked_down:
                found.append(Finding("host_up", "answers again: marked up", "fix", host=host.name))
            continue
        misses = host.missed_surveys + 1
        if misses >= config.down_after and not host.marked_down:
            found.append(
                Finding(
                    "host_down",
                    f"missed {misses} surveys in a row: marked down ({survey.error})",
                    "fix",
                    host=host.name,
                )
            )
        else:
            found.append(
                Finding(
                    "host_unreachable",
                    f"missed survey {misses} (down after {config.down_after}): {survey.error}",
                    "report",
                    host=host.name,
                )
            )
    return found


def _finished_at(job: AgentJob, record: dict[str, Any]) -> float:
    """When the job finished, on this machine's clock: the row's cast time plus how
    long the host says it ran (the host's own clock may be off; its durations are not).
    A record without times counts as finished when it was cast."""
    started, finished = record.get("started_at"), record.get("finished_at")
    ran = 0.0
    if isinstance(started, (int, float)) and isinstance(finished, (int, float)):
        ran = max(0.0, float(finished) - float(started))
    return epoch(job.created_at) + ran


def _job_findings(
    job: AgentJob,
    survey: HostSurvey,
    by_uuid: dict[str, Instance],
    now: float,
    config: ReconcileConfig,
    busy: set[str],
) -> list[Finding]:
    instance = by_uuid.get(job.instance_uuid or "")
    name = instance.name if instance else None
    record = survey.jobs.get(job.id)
    if record is not None and record.get("state") not in FINISHED:
        if job.instance_uuid:
            busy.add(job.instance_uuid)
        return []
    if record is not None and now - _finished_at(job, record) < config.collect_grace:
        if job.instance_uuid:
            busy.add(job.instance_uuid)  # just finished: its caster is collecting it
        return []
    if record is None and job.id in survey.unreadable_jobs:
        # The host has a record but it cannot be read: unknown, not lost (reported).
        if job.instance_uuid:
            busy.add(job.instance_uuid)
        return []
    if record is None:
        if now - epoch(job.created_at) < LOST_CAST_SECONDS:
            if job.instance_uuid:
                busy.add(job.instance_uuid)
            return []
        record = {
            "state": "failed",
            "error": {"message": "the host has no record of this job: the cast never arrived"},
        }
        detail = f"{job.op} job {job.id} was never received by the host"
    else:
        detail = f"{job.op} job {job.id} {record['state']} on the host but was never collected"
    if job.instance_uuid:
        busy.add(job.instance_uuid)  # the job's result settles this server
    return [
        Finding(
            "finished_job",
            detail,
            config.finished_jobs,
            host=survey.host.name,
            server=name,
            uuid=job.instance_uuid,
            data={"job_id": job.id, "record": record},
        )
    ]


def _domain_findings(
    survey: HostSurvey,
    snapshot: Snapshot,
    by_uuid: dict[str, Instance],
    busy: set[str],
    config: ReconcileConfig,
) -> list[Finding]:
    host = survey.host
    found: list[Finding] = []
    for uuid, domain in survey.domains.items():
        instance = by_uuid.get(uuid)
        if uuid in busy:
            continue
        if instance is None:
            if config.unknown_domains != "noop":
                found.append(
                    Finding(
                        "unknown_domain",
                        f"domain {domain['name']} ({domain['state']}) has herd's metadata "
                        f"but no server in this database (named {domain.get('instance_name')!r})",
                        config.unknown_domains,
                        host=host.name,
                        uuid=uuid,
                        data={"state": domain["state"]},
                    )
                )
            continue
        if instance.vm_state == VmState.DELETED or instance.host_id != host.id:
            if config.deleted_running == "noop":
                continue
            if instance.vm_state != VmState.DELETED and instance.task_state is not None:
                continue  # mid-move (migrate, resize, live-migrate): both hosts have it
            elsewhere = snapshot.hosts.get(instance.host_id or -1)
            why = (
                "the server is deleted"
                if instance.vm_state == VmState.DELETED
                else f"the server lives on {elsewhere.name if elsewhere else 'no host'}"
            )
            found.append(
                Finding(
                    "deleted_running",
                    f"domain is {domain['state']} here but {why}",
                    config.deleted_running,
                    host=host.name,
                    server=instance.name,
                    uuid=uuid,
                    data={"state": domain["state"]},
                )
            )
            continue
        finding = _power_finding(instance, domain["state"], host, config)
        if finding is not None:
            found.append(finding)
    for instance in snapshot.instances:
        if (
            instance.host_id == host.id
            and instance.uuid not in survey.domains
            and instance.uuid not in busy
            and instance.task_state is None
            and instance.vm_state
            in (
                VmState.ACTIVE,
                VmState.STOPPED,
                VmState.PAUSED,
                VmState.SUSPENDED,
                VmState.RESIZED,
                VmState.RESCUED,
            )
        ):
            found.append(
                Finding(
                    "missing_domain",
                    f"the server is {instance.vm_state} but {host.name} has no domain for it",
                    config.missing_domains,
                    host=host.name,
                    server=instance.name,
                    uuid=instance.uuid,
                )
            )
    return found


def _power_finding(
    instance: Instance, state: str, host: Host, config: ReconcileConfig
) -> Finding | None:
    """Nova's _sync_instance_power_state, for the two drifts that matter: a server
    herd thinks is running whose domain is off, and one it stopped that runs."""
    if instance.task_state is not None:
        return None
    power = POWER_OF.get(state, PowerState.NOSTATE)
    if instance.vm_state == VmState.ACTIVE and power in (PowerState.SHUTDOWN, PowerState.CRASHED):
        drift = ("stopped", f"the server is active but its domain is {state}")
    elif instance.vm_state == VmState.STOPPED and power == PowerState.RUNNING:
        drift = ("running", f"the server is stopped but its domain is {state}")
    else:
        if power != instance.power_state and instance.vm_state != VmState.BUILDING:
            # Not a drift of intent, only of what we last saw: recorded quietly.
            return Finding(
                "power_seen",
                f"power state {instance.power_state} -> {power}",
                "fix",
                host=host.name,
                server=instance.name,
                uuid=instance.uuid,
                data={"power": power, "quiet": True},
            )
        return None
    return Finding(
        "power_state",
        drift[1],
        config.power_state,
        host=host.name,
        server=instance.name,
        uuid=instance.uuid,
        data={"domain": drift[0], "power": power},
    )


def _stuck_builds(snapshot: Snapshot, busy: set[str], config: ReconcileConfig) -> list[Finding]:
    """Builds, and other tasks (a migration whose herd was killed), that nothing is
    working on any more: Nova's compute does the same at start-up (_init_instance)."""
    found = []
    # A task whose runner still beats is slow, not stuck: its runner ends it.
    running = {t.server for t in snapshot.open_tasks if t.live}
    for instance in snapshot.instances:
        if (
            instance.uuid in busy
            or instance.uuid in running
            or instance.vm_state == VmState.DELETED
        ):
            continue
        building = instance.vm_state == VmState.BUILDING
        if not building and instance.task_state is None:
            continue
        age = snapshot.now - epoch(instance.updated_at or instance.created_at)
        if age < config.build_timeout:
            continue
        host = snapshot.hosts.get(instance.host_id or -1)
        found.append(
            Finding(
                "stuck_build" if building else "stuck_task",
                f"{instance.vm_state} with task {instance.task_state} for {age / 60:.0f} min "
                f"and no job running (limit {config.build_timeout / 60:.0f} min)",
                config.stuck_builds,
                host=host.name if host else None,
                server=instance.name,
                uuid=instance.uuid,
                # The repair ends this task only, not one taken since the snapshot.
                data={"seen": TaskSeen.of(instance)},
            )
        )
    return found


def _claim_findings(snapshot: Snapshot, config: ReconcileConfig) -> list[Finding]:
    found = []
    claims = {a.instance_uuid: a for a in snapshot.allocations}
    by_uuid = {i.uuid: i for i in snapshot.instances}
    holds = (
        VmState.ACTIVE, VmState.STOPPED, VmState.PAUSED, VmState.SUSPENDED, VmState.BUILDING,
        VmState.RESIZED, VmState.RESCUED,
    )  # fmt: skip
    for uuid, claim in claims.items():
        if uuid in snapshot.migration_claims or uuid in snapshot.volume_claims:
            continue
        instance = by_uuid.get(uuid)
        host = snapshot.hosts.get(claim.host_id)
        where = host.name if host else None
        if instance is None or instance.vm_state not in holds or instance.host_id is None:
            state = instance.vm_state if instance else "unknown"
            found.append(
                Finding(
                    "claim",
                    f"a claim on {where} is held by a server that is {state}: released",
                    config.claims,
                    host=where,
                    server=instance.name if instance else None,
                    uuid=uuid,
                    data={"action": "release"},
                )
            )
        elif instance.host_id != claim.host_id:
            actual = snapshot.hosts.get(instance.host_id)
            found.append(
                Finding(
                    "claim",
                    f"the claim is on {where} but the server is on "
                    f"{actual.name if actual else '?'}: moved",
                    config.claims,
                    host=where,
                    server=instance.name,
                    uuid=uuid,
                    data={"action": "move"},
                )
            )
    for instance in snapshot.instances:
        if (
            instance.host_id is not None
            and instance.vm_state in holds
            and instance.vm_state != VmState.BUILDING
            and instance.uuid not in claims
        ):
            host = snapshot.hosts.get(instance.host_id)
            found.append(
                Finding(
                    "claim",
                    f"the server is {instance.vm_state} on {host.name if host else '?'} "
                    "without a claim: claimed",
                    config.claims,
                    host=host.name if host else None,
                    server=instance.name,
                    uuid=instance.uuid,
                    data={"action": "create"},
                )
            )
    return found


def _stale_images(survey: HostSurvey, snapshot: Snapshot, config: ReconcileConfig) -> list[Finding]:
    assert config.image_cache_max_age_hours is not None
    limit = config.image_cache_max_age_hours * 3600
    found = []
    for entry in survey.cache or []:
        idle = snapshot.now - entry["last_used"]
        if entry["instances"] or idle < limit:
            continue
        if (survey.host.name, entry["sha256"]) in snapshot.pinned_images:
            continue
        names = ", ".join(snapshot.image_names.get(entry["sha256"], [])) or entry["sha256"][:12]
        found.append(
            Finding(
                "stale_image",
                f"cached image {names} unused for {idle / 3600:.1f} h: removed",
                "fix",
                host=survey.host.name,
                data={"sha256": entry["sha256"]},
            )
        )
    return found
