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
