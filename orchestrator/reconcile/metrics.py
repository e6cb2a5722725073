"""node_exporter textfile-collector metrics for one reconcile run.

Written to a temporary file in the same directory and renamed over the target, so
node_exporter never reads half a file (its documented contract for textfiles).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from pathlib import Path

from orchestrator.db.models import VmState
from orchestrator.errors import HerdError, InvalidInput
from orchestrator.reconcile.reconciler import RunReport

KINDS = (
    "finished_job",
    "stuck_build",
    "stuck_task",
    "power_state",
    "deleted_running",
    "unknown_domain",
    "missing_domain",
    "claim",
    "stale_image",
    "orphan_volume",
    "missing_volume",
    "stuck_volume",
    "stuck_snapshot",
    "volume_attachment_missing",
    "volume_attachment_unknown",
    "host_unreachable",
    "host_down",
    "host_up",
)
HOST_STATES = ("up", "down", "disabled", "unknown", "no-libvirt")
VM_STATES = tuple(s.value for s in VmState if s != VmState.DELETED)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(report: RunReport, now: float | None = None) -> str:
    found = Counter(f.kind for f in report.findings)
    fixed = Counter(f.kind for f in report.findings if f.outcome == "fixed")
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lines.append(f"{name}{labels} {value:.15g}")

    metric(
        "herd_hosts",
        "gauge",
        "Hosts by status after the last reconcile.",
        [(f'{{status="{s}"}}', report.host_states.get(s, 0)) for s in HOST_STATES],
    )
    metric(
        "herd_reconcile_hosts_unreachable",
        "gauge",
        "Hosts that did not answer the last survey.",
        [("", len(report.unreachable))],
    )
    metric(
        "herd_instances",
        "gauge",
        "Servers by vm_state (deleted ones excluded).",
        [(f'{{vm_state="{s}"}}', report.instance_states.get(s, 0)) for s in VM_STATES],
    )
    metric(
        "herd_reconcile_drift_found",
        "gauge",
        "Drift found by the last reconcile, by kind.",
        [(f'{{kind="{_escape(k)}"}}', found.get(k, 0)) for k in KINDS],
    )
    metric(
        "herd_reconcile_drift_fixed",
        "gauge",
        "Drift repaired by the last reconcile, by kind.",
        [(f'{{kind="{_escape(k)}"}}', fixed.get(k, 0)) for k in KINDS],
    )
    metric(
        "herd_reconcile_duration_seconds",
        "gauge",
        "Wall time of the last reconcile.",
        [("", round(report.duration, 3))],
    )
    metric(
        "herd_reconcile_exit_code",
        "gauge",
        "Exit code of the last reconcile (0 clean, 1 fixed, 2 drift left or hosts unreachable).",
        [("", report.exit_code)],
    )
    metric(
        "herd_reconcile_last_run_timestamp_seconds",
        "gauge",
        "When the last reconcile finished (UNIX time).",
        [("", round(now if now is not None else time.time(), 3))],
    )
    return "\n".join(lines) + "\n"


def check_textfile(path: Path) -> None:
    """What can be known before a run: the file's directory exists and the path is
    not itself a directory (the rename over it would fail after the run)."""
    if path.is_dir():
        raise InvalidInput(f"--prometheus-textfile {path}: is a directory; name a file in it")
    if path.exists() and not path.is_file():
        # The rename would put a regular file where a device or a pipe was (as root,
        # --prometheus-textfile /dev/null would replace /dev/null).
        raise InvalidInput(f"--prometheus-textfile {path}: exists and is not a regular file")
    if not path.parent.is_dir():
        raise InvalidInput(f"--prometheus-textfile {path}: directory {path.parent} does not exist")


def write_textfile(path: Path, text: str) -> None:
    check_textfile(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise HerdError(f"--prometheus-textfile {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        # World-readable on purpose: node_exporter, another user, reads it, and it
        # holds counts and timings only (no names, no user data).
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise HerdError(f"--prometheus-textfile {path}: {exc.strerror}") from None
        raise
