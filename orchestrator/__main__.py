"""`python -m orchestrator` is `herd`."""

from orchestrator.cli.main import run

run()
