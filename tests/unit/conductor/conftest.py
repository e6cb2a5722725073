"""Fixtures for the conductor's task tests: a herd of fake hosts (herdlab.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from orchestrator.db.engine import Database
from tests.unit.conductor.herdlab import HerdLab, herd_lab


@pytest.fixture
async def lab(db: Database) -> AsyncIterator[HerdLab]:
    """Three fake hosts hv1..hv3 (4 vCPUs each), flavors small/big/huge, image cirros."""
    async with herd_lab(db) as herd:
        yield herd


@pytest.fixture(autouse=True)
def killed_steps_never_ran(recwarn: pytest.WarningsRecorder) -> None:
    """A runner 'killed' at a step leaves that step's coroutine unstarted, as a real
    kill does: Python's warning about it is expected here, not a defect."""
    import warnings

    warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
