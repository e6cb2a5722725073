"""A resource's commands load that resource's API, not the workflows: the build manager
and its tasks come with the commands that run one (the conductor is made on first use),
and SSH only with the commands that can reach a host or parse a key."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(sys.modules)))
"""

WORKFLOWS = ("orchestrator.conductor.manager", "orchestrator.conductor.tasks")


def _loaded(module: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, module],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return set(json.loads(done.stdout))


@pytest.mark.parametrize(
    ("module", "ssh"),
    [
        ("orchestrator.cli.servers", False),
        ("orchestrator.cli.groups", False),
        ("orchestrator.cli.networks", False),
        ("orchestrator.cli.catalog", True),  # image delivery reads through the agent client
        ("orchestrator.cli.keypairs", True),  # asyncssh parses and makes the keys
        ("orchestrator.cli.hosts", True),  # trust and check speak SSH themselves
    ],
)
def test_a_command_module_loads_no_workflow(module: str, ssh: bool) -> None:
    modules = _loaded(module)
    assert module in modules
    assert not [m for m in modules if m.startswith(WORKFLOWS)]
    assert "orchestrator.api.console" not in modules  # only `server console(-log)` loads it
    if not ssh:
        assert "asyncssh" not in modules
