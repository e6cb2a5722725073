"""Every way the DB's volumes and the hosts' volume files can disagree.

Pure, as drift.py is: the findings carry what their repair needs, and the repair
(volume_repairs.py) reads the DB again before it acts. A volume in a transitional
status is its command's business (or, past ``volume_timeout``, a stuck one's: see
``stuck_volume``), and a server with a task is its task's: neither is judged here.

Data is never removed by default. A file no record knows is only reported (it may be
another herd's, or a copy an operator keeps); a record whose file is missing is kept,
in ``error``, so the operator sees what was lost. Attachment drift is reported by
default: re-plugging a disk into a running guest, or unplugging one, is a change the
guest sees, so it is the operator's to allow.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

from orchestrator.db.models import (
    Allocation,
    Host,
    Instance,
    SnapshotStatus,
    Volume,
    VolumeStatus,
)
from orchestrator.reconcile.config import ReconcileConfig
from orchestrator.reconcile.findings import HELD, Finding, Snapshot, epoch
from orchestrator.reconcile.survey import HostSurvey

S = VolumeStatus
SS = SnapshotStatus
SETTLED = (S.AVAILABLE, S.IN_USE)
# Set by a command that has no journal task: past volume_timeout, a dead command's.
UNJOURNALLED = (S.CREATING, S.EXTENDING, S.DELETING, S.REVERTING)
CLAIMED = (S.AVAILABLE, S.IN_USE, S.ATTACHING, S.DETACHING, S.EXTENDING)
FORMATS = ("qcow2", "raw")


def volume_findings(
    snapshot: Snapshot, surveys: Sequence[HostSurvey], config: ReconcileConfig
) -> list[Finding]:
    found: list[Finding] = []
    for survey in surveys:
        if survey.ok and survey.volume_dir is not None:
            found += _host_volumes(survey, snapshot, config)
    found += _volume_claims(snapshot, config)
    return found


def _host_volumes(survey: HostSurvey, snapshot: Snapshot, config: ReconcileConfig) -> list[Finding]:
    host = survey.host
    by_uuid = {v.uuid: v for v in snapshot.volumes}
    here = [v for v in snapshot.volumes if v.host_id == host.id]
    found: list[Finding] = []
    for file_uuid, entry in survey.volume_files.items():
        if config.orphan_volumes == "noop":
            break
        volume = by_uuid.get(file_uuid)
        if volume is not None and volume.host_id == host.id:
            continue
        if volume is not None and _moving(volume, host, snapshot):
            found.append(
                Finding(
                    "orphan_volume",
                    f"volume file {survey.volume_dir}/{file_uuid}.{entry['format']}: "
                    f"{volume.name}'s copy being moved here; left alone",
                    HELD,
                    host=host.name,
                    uuid=file_uuid,
                    data={"volume": file_uuid, "format": entry["format"]},
                )
            )
            continue
        owner = snapshot.hosts.get(volume.host_id) if volume is not None else None
        why = (
            f"no volume in this database has UUID {file_uuid}"
            if volume is None
            else f"a copy of volume {volume.name}, which lives on "
            f"{owner.name if owner else 'another host'}"
        )
        found.append(
            Finding(
                "orphan_volume",
                f"volume file {survey.volume_dir}/{file_uuid}.{entry['format']}: {why}",
                config.orphan_volumes,
                host=host.name,
                uuid=file_uuid,
                data={"volume": file_uuid, "format": entry["format"]},
            )
        )
    settled = [v for v in here if v.status in SETTLED]
    if len(settled) > 1 and not any(v.uuid in survey.volume_files for v in settled):
        # Not one of them: rather the storage than every volume (an unmounted
        # storage.path). Said once, and nothing is marked.
        found.append(
            Finding(
                "missing_volume",
                f"none of the {len(settled)} volume files of {host.name} is in "
                f"{survey.volume_dir}: is its storage mounted? (nothing marked)",
                "report",
                host=host.name,
            )
        )
        settled = []
    for volume in here:
        if volume.status in SETTLED and volume not in settled:
            continue
        if volume.status in SETTLED and volume.uuid not in survey.volume_files:
            found.append(
                Finding(
                    "missing_volume",
                    f"volume {volume.name} is {volume.status} but its file "
                    f"{volume.path or survey.volume_dir} is not on {host.name}",
                    config.missing_volumes,
                    host=host.name,
                    uuid=volume.uuid,
                    data={"volume": volume.uuid},
                )
            )
        elif volume.status in UNJOURNALLED:
            stuck = _stuck(volume, survey, snapshot, config)
            if stuck is not None:
                found.append(stuck)
    found += _attachments(survey, snapshot, here, by_uuid, config)
    found += _stuck_snapshots(survey, snapshot, {v.id for v in here}, config)
    return found


def _stuck_snapshots(
    survey: HostSurvey, snapshot: Snapshot, here: set[int | None], config: ReconcileConfig
) -> list[Finding]:
    """A snapshot create or delete whose command is gone: made or deleted again (both
    repeat safely on the host), as a stuck volume's step is."""
    found = []
    for snap in snapshot.volume_snapshots:
        if snap.volume_id not in here or snap.status not in (SS.CREATING, SS.DELETING):
            continue
        if snap.uuid in snapshot.live_snapshot_owners:
            continue
        age = snapshot.now - epoch(snap.updated_at or snap.created_at)
        if age < config.volume_timeout:
            continue
        found.append(
            Finding(
                "stuck_snapshot",
                f"snapshot {snap.name} is {snap.status} for {age / 60:.0f} min and its command "
                f"({snap.task_owner or 'unknown'}) is gone",
                config.stuck_volumes,
                host=survey.host.name,
                uuid=snap.uuid,
                data={"snapshot": snap.uuid, "status": snap.status},
            )
        )
    return found


def _moving(volume: Volume, host: Host, snapshot: Snapshot) -> bool:
    """Whether an open task of the volume's server names this host (a migration's
    destination, where the copy is the task's until its switch)."""
    return any(t.server == volume.instance_uuid and host.id in t.hosts for t in snapshot.open_tasks)


def _stuck(
    volume: Volume, survey: HostSurvey, snapshot: Snapshot, config: ReconcileConfig
) -> Finding | None:
    """A create, extend or delete whose command is gone: finished or undone from what
    the host has (the file there or not), as recovery finishes a journalled task."""
    if volume.uuid in snapshot.live_volume_owners:
        return None
    age = snapshot.now - epoch(volume.updated_at or volume.created_at)
    if age < config.volume_timeout:
        return None
    return Finding(
        "stuck_volume",
        f"volume {volume.name} is {volume.status} for {age / 60:.0f} min and its command "
        f"({volume.task_owner or 'unknown'}) is gone (limit {config.volume_timeout / 60:.0f} min)",
        config.stuck_volumes,
        host=survey.host.name,
        uuid=volume.uuid,
        data={
            "volume": volume.uuid,
            "status": volume.status,
            "file_present": volume.uuid in survey.volume_files,
        },
    )


def volume_disks(survey: HostSurvey) -> dict[str, dict[str, tuple[str, str]]]:
    """{domain UUID: {volume UUID: (dev, format)}}: the disks of each domain that are files in
    the host's volume directory, whether the file still exists or not."""
    directory = PurePosixPath(survey.volume_dir or "/nonexistent")
    disks: dict[str, dict[str, tuple[str, str]]] = {}
    for domain_uuid, domain in survey.domains.items():
        for disk in domain.get("disks") or ():
            path = PurePosixPath(disk["file"])
            stem, _, suffix = path.name.partition(".")
            if path.parent == directory and suffix in FORMATS and len(stem) == 36:
                disks.setdefault(domain_uuid, {})[stem] = (disk["dev"], suffix)
    return disks


def _attachments(
    survey: HostSurvey,
    snapshot: Snapshot,
    here: Sequence[Volume],
    by_uuid: dict[str, Volume],
    config: ReconcileConfig,
) -> list[Finding]:
    host = survey.host
    servers = {i.uuid: i for i in snapshot.instances}
    disks = volume_disks(survey)

    def settled(server: Instance | None) -> bool:
        """A server of this host that no task holds and whose domain is here."""
        return (
            server is not None
            and server.host_id == host.id
            and server.task_state is None
            and server.uuid in survey.domains
        )

    found: list[Finding] = []
    for volume in here:
        server = servers.get(volume.instance_uuid or "")
        if volume.status != S.IN_USE or server is None or not settled(server):
            continue
        if volume.uuid not in disks.get(server.uuid, {}):
            detail = (
                f"volume {volume.name} is attached to {server.name} as {volume.device} "
                "in the database, but the domain has no such disk"
            )
            data = {"action": "attach", "device": volume.device, "format": volume.format}
            found.append(
                _attachment(
                    "volume_attachment_missing", detail, config, host, server, volume.uuid, data
                )
            )
    for domain_uuid, attached in disks.items():
        server = servers.get(domain_uuid)
        if server is None or not settled(server):
            continue  # an unknown or misplaced domain: the domain rules judge it
        for volume_uuid, (dev, fmt) in attached.items():
            volume = by_uuid.get(volume_uuid)
            if volume is not None and volume.instance_uuid == server.uuid:
                continue
            if volume is not None and volume.status not in SETTLED:
                continue  # an attach or detach in flight
            if volume is None:
                what = f"file {volume_uuid}, which no volume record has"
            elif volume.instance_uuid is None:
                what = f"volume {volume.name}, which the database has {volume.status}"
            else:
                other = servers.get(volume.instance_uuid)
                what = (
                    f"volume {volume.name}, which the database has attached to "
                    f"{other.name if other else volume.instance_uuid}"
                )
            recordable = (
                volume is not None and volume.status == S.AVAILABLE and volume.host_id == host.id
            )
            detail = f"the domain of {server.name} has, as {dev}, {what}"
            data = {"action": "detach", "device": dev, "format": fmt, "recordable": recordable}
            found.append(
                _attachment(
                    "volume_attachment_unknown", detail, config, host, server, volume_uuid, data
                )
            )
    return found


def _attachment(
    kind: str,
    detail: str,
    config: ReconcileConfig,
    host: Host,
    server: Instance,
    volume_uuid: str,
    data: dict[str, Any],
) -> Finding:
    """An attachment finding is the server's (so an open task on it holds it)."""
    return Finding(
        kind,
        detail,
        config.volume_attachments,
        host=host.name,
        server=server.name,
        uuid=server.uuid,
        data={"volume": volume_uuid, **data},
    )


def _volume_claims(snapshot: Snapshot, config: ReconcileConfig) -> list[Finding]:
    """A volume that holds its host's disk without a claim for it: claimed. (A claim
    whose volume is gone is the server claim rule's: no consumer, released.)"""
    claimed = {a.instance_uuid: a for a in snapshot.allocations}
    found = []
    for volume in snapshot.volumes:
        claim: Allocation | None = claimed.get(volume.uuid)
        if volume.status in CLAIMED and claim is None:
            host = snapshot.hosts.get(volume.host_id)
            found.append(
                Finding(
                    "claim",
                    f"volume {volume.name} ({volume.size_gb} GB) is {volume.status} on "
                    f"{host.name if host else '?'} without a claim: claimed",
                    config.claims,
                    host=host.name if host else None,
                    uuid=volume.uuid,
                    data={"action": "create_volume", "volume": volume.uuid},
                )
            )
    return found
