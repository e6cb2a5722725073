"""What happened to one server in a workflow, as every command shows it.

Its own module so that the CLI can read and build outcomes (``server wait``, the
renderers) without importing the conductor and, through it, SSH.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.db.models import Instance


@dataclass(frozen=True)
class Outcome:
    """What happened to one instance, for the CLI to show."""

    uuid: str
    name: str
    host: str | None
    vm_state: str
    task_state: str | None
    error: str | None = None
    failed_at: str | None = None  # the action event that failed: "schedule", "build", ...


def outcome_of(instance: Instance, host: str | None, error: str | None = None) -> Outcome:
    return Outcome(
        instance.uuid, instance.name, host, instance.vm_state, instance.task_state, error
    )


def guard_outcome(instance: Instance, error: str) -> Outcome:
    """Refused by the server's state before anything started (exit 4 at the CLI)."""
    return Outcome(
        instance.uuid, instance.name, None, instance.vm_state, instance.task_state, error,
        failed_at="guard",
    )  # fmt: skip
