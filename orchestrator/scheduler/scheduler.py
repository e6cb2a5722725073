"""The scheduler: filter, weigh, claim — one instance after another.

select → plan → apply as named steps: host states are read once, each instance is
filtered and weighed against the in-memory states (which already hold the claims of
the instances before it), and its claim is applied in the DB with optimistic
concurrency. A stale view costs one re-read of that host, not a failure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.db.engine import Database
from orchestrator.errors import NoValidHost
from orchestrator.scheduler.claims import release, try_claim
from orchestrator.scheduler.filters import DEFAULT_FILTERS, HostFilter
from orchestrator.scheduler.host_state import HostState
from orchestrator.scheduler.loader import load_host_states
from orchestrator.scheduler.request import RequestSpec

MAX_CLAIM_RETRIES = 10


@dataclass(frozen=True)
class Rejection:
    host: str
    filter: str
    reason: str


@dataclass(frozen=True)
class Placement:
    instance_uuid: str
    host_id: int
    host_name: str


def summarise(total: int, rejections: Sequence[Rejection]) -> str:
    """ "0/12 hosts: 7 ram, 3 disabled" — what Nova's "No valid host" never says."""
    counts = Counter(r.filter for r in rejections)
    parts = ", ".join(f"{n} {name}" for name, n in counts.most_common())
    detail = "; ".join(f"{r.host}: {r.reason}" for r in rejections[:3])
    more = f"; +{len(rejections) - 3} more" if len(rejections) > 3 else ""
    return f"0/{total} hosts fit ({parts}): {detail}{more}" if rejections else "no hosts"


class FilterScheduler:
    def __init__(self, db: Database, filters: Sequence[HostFilter] = DEFAULT_FILTERS) -> None:
        self.db = db
        self.filters = tuple(filters)

    def passing(
        self, hosts: Sequence[HostState], spec: RequestSpec
    ) -> tuple[list[HostState], list[Rejection]]:
        passed: list[HostState] = []
        rejected: list[Rejection] = []
        for host in hosts:
            for host_filter in self.filters:
                verdict = host_filter.check(host, spec)
                if not verdict.passed:
                    rejected.append(Rejection(host.name, host_filter.name, verdict.reason))
                    break
            else:
                passed.append(host)
        return passed, rejected

    @staticmethod
    def weigh(hosts: list[HostState]) -> list[HostState]:
        # Spread by free RAM, like Nova's default RAM weigher; ties by name for stability.
        return sorted(hosts, key=lambda h: (-h.free_ram_mb, h.name))

    async def place(self, specs: Sequence[RequestSpec]) -> list[Placement]:
        """Place every instance or none: a failure releases what was claimed."""
        placements: list[Placement] = []
        try:
            return await self._place(specs, placements)
        except NoValidHost:
            async with self.db.session() as session:
                for placement in placements:
                    await release(session, placement.instance_uuid)
            raise

    async def _place(
        self, specs: Sequence[RequestSpec], placements: list[Placement]
    ) -> list[Placement]:
        async with self.db.session() as session:
            hosts = await load_host_states(session)
        by_id = {h.id: h for h in hosts}
        for spec in specs:
            for _ in range(MAX_CLAIM_RETRIES):
                passed, rejected = self.passing(list(by_id.values()), spec)
                if not passed:
                    raise NoValidHost(
                        f"no valid host for the request: {summarise(len(by_id), rejected)}"
                    )
                chosen = self.weigh(passed)[0]
                async with self.db.session() as session:
                    claimed = await try_claim(session, chosen, spec)
                    if not claimed:
                        fresh = await load_host_states(session, [chosen.id])
                if claimed:
                    chosen.consume(spec.vcpus, spec.ram_mb, spec.disk_gb)
                    placements.append(Placement(spec.instance_uuid, chosen.id, chosen.name))
                    break
                if fresh:
                    by_id[chosen.id] = fresh[0]
                else:
                    by_id.pop(chosen.id)
            else:
                raise NoValidHost(
                    f"could not claim resources after {MAX_CLAIM_RETRIES} tries (heavy contention)"
                )
        return placements
