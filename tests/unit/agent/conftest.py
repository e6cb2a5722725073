"""Run the agent's tests from a checkout the way the bundle runs the agent.

The checkout goes on sys.path (the agent is not installed on the orchestrator side)
and ``HERD_TEMPLATES_DIR`` points at templates/, which the bundle ships as the
package ``herd_templates``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
TEMPLATES = REPO / "templates"
# The checkout for ``import agent``; this directory for agent_testlib, whatever
# import mode or package layout pytest ends up using for tests/.
for path in (REPO, HERE):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


@pytest.fixture(autouse=True)
def templates_dir(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HERD_TEMPLATES_DIR", str(TEMPLATES))
    return TEMPLATES


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path
