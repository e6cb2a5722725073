"""Reconcile reports a task recovery finished or undid as fixed, and leaves it at that."""

from __future__ import annotations

import pytest

from orchestrator.conductor import recovery
from orchestrator.conductor.manager import Conductor
from orchestrator.db.engine import Database
from orchestrator.reconcile.config import ReconcileConfig
from orchestrator.reconcile.reconciler import Reconciler
from tests.unit.orchestrator.fakepool import FakePool


async def test_recovered_tasks_are_fixed_or_failed_as_their_recovery_ended(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = [
        recovery.Recovery(1, "migrate", "u-1", "a", "switch", "done"),
        recovery.Recovery(2, "resize", "u-2", "b", "spawn", "rolled_back", "rolled back"),
        recovery.Recovery(3, "live_migrate", "u-3", "c", "switch", "waits", "lab-2: no answer"),
    ]

    async def recover(conductor: Conductor) -> list[recovery.Recovery]:
        return done

    monkeypatch.setattr(recovery, "recover", recover)
    report = await Reconciler(Conductor(db, FakePool()), ReconcileConfig()).run()
    found = {f.uuid: (f.kind, f.outcome, f.error) for f in report.findings}
    assert found == {
        "u-1": ("orphaned_task", "fixed", None),
        "u-2": ("orphaned_task", "fixed", "rolled back"),
        "u-3": ("orphaned_task", "failed", "lab-2: no answer"),
    }
