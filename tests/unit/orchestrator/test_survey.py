"""A host that answers around a file it cannot read is up, with a warning."""

from __future__ import annotations

from typing import Any

from orchestrator.db.models import Host
from orchestrator.reconcile.reconciler import EXIT_CLEAN, EXIT_UNFIXED, RunReport
from orchestrator.reconcile.survey import survey_hosts

HOST = Host(id=1, name="hv1", address="192.0.2.1")
JOURNAL = "/var/lib/herd/jobs/j-bad.json"
USES = "/var/lib/herd/instances/u-x/images.json"


class Session:
    def __init__(self) -> None:
        self.facts: dict[str, Any] = {}
        self.hello = {"agent_version": "0.1.0"}


class Pool:
    """Answers like an agent whose journal and one images.json are damaged."""

    async def session(self, target: Any) -> Session:
        return Session()

    async def call(self, target: Any, op: str, args: dict[str, Any]) -> dict[str, Any]:
        if op == "list":
            return {"domains": []}
        if op == "jobs":
            return {
                "jobs": [{"job_id": "j-good", "state": "succeeded"}],
                "unreadable": [{"job_id": "j-bad", "file": JOURNAL, "error": "Expecting value"}],
            }
        if op == "volume_list":
            return {"dir": "/var/lib/herd/volumes", "volumes": []}
        assert op == "image_list"
        return {
            "images": [{"sha256": "a" * 64, "size": 1, "last_used": 0, "instances": []}],
            "unreadable": [{"file": USES, "error": "Expecting value"}],
        }


async def test_unreadable_host_files_are_warnings_and_the_host_is_up() -> None:
    (survey,) = await survey_hosts(Pool(), [HOST], timeout=5, with_cache=True)  # type: ignore[arg-type]
    assert survey.ok and list(survey.jobs) == ["j-good"]
    assert survey.unreadable_jobs == {"j-bad"}
    assert survey.cache is None  # which images that instance uses is unknown: prune nothing
    assert [w.split(" (")[0] for w in survey.warnings] == [
        f"host hv1: skipped the unreadable {JOURNAL}",
        f"host hv1: skipped the unreadable {USES}",
    ]
    report = RunReport([], [survey], 0.1, dry_run=False)
    assert report.unreachable == [] and report.exit_code == EXIT_UNFIXED
    assert report.to_dict()["warnings"] == survey.warnings
    assert report.to_dict()["hosts"] == {"hv1": "ok"}
    survey.warnings.clear()
    assert report.exit_code == EXIT_CLEAN
