"""Ask every host, at once, what it really has: facts, herd's domains, job results,
volume files.

Each host gets ``host_timeout`` seconds for all of it; one that does not answer in
time is a missed survey for that host and nothing else waits on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.conductor.hosts import target_of
from orchestrator.db.models import Host
from orchestrator.errors import HerdError
from orchestrator.rpc.agent_api import AgentAPI
from orchestrator.rpc.pool import AgentPool


@dataclass
class HostSurvey:
    host: Host
    error: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    agent_version: str | None = None
    domains: dict[str, dict[str, Any]] = field(default_factory=dict)  # uuid -> domain
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # job_id -> record
    cache: list[dict[str, Any]] | None = None
    # The host's volume directory and the volume files in it, by UUID.
    volume_dir: str | None = None
    volume_files: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Files the agent could not read and skipped (a corrupt journal, an images.json):
    # the host answered, so it is up; what those files hold is unknown.
    unreadable_jobs: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


async def _survey_one(pool: AgentPool, host: Host, with_cache: bool) -> HostSurvey:
    target = target_of(host)
    session = await pool.session(target)
    survey = HostSurvey(host, facts=session.facts, agent_version=session.hello.get("agent_version"))
    agent = AgentAPI(pool)
    listing, jobs, volumes = await asyncio.gather(
        agent.list_domains(target), agent.jobs(target), agent.volume_list(target, host.volume_dir)
    )
    survey.domains = {d["uuid"]: d for d in listing["domains"]}
    survey.volume_dir = volumes["dir"]
    survey.volume_files = {v["uuid"]: v for v in volumes["volumes"]}
    survey.jobs = {j["job_id"]: j for j in jobs["jobs"]}
    for problem in jobs.get("unreadable", []):
        survey.unreadable_jobs.add(problem.get("job_id", ""))
        survey.warnings.append(_skipped(host, problem))
    if with_cache:
        cache = await agent.image_list(target)
        survey.cache = cache["images"]
        if cache.get("unreadable"):
            # Which images those instances use is unknown: prune nothing there.
            survey.cache = None
            survey.warnings += [_skipped(host, p) for p in cache["unreadable"]]
    return survey


def _skipped(host: Host, problem: dict[str, Any]) -> str:
    return (
        f"host {host.name}: skipped the unreadable {problem.get('file')} "
        f"({problem.get('error')}); repair or remove it"
    )


async def survey_hosts(
    pool: AgentPool,
    hosts: Sequence[Host],
    timeout: float,
    with_cache: bool = False,
    concurrency: int = 64,
) -> list[HostSurvey]:
    turns = asyncio.Semaphore(concurrency)

    async def one(host: Host) -> HostSurvey:
        try:
            async with turns:
                return await asyncio.wait_for(_survey_one(pool, host, with_cache), timeout)
        except TimeoutError:
            return HostSurvey(host, error=f"host {host.name}: no answer within {timeout:g}s")
        except HerdError as exc:
            return HostSurvey(host, error=str(exc))

    return list(await asyncio.gather(*(one(h) for h in hosts)))
