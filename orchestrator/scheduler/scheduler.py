"""The scheduler: load host states, select (filters → weighers), then claim.

select → plan → apply as named steps: `engine.select_destinations` decides in memory
from one consistent read of the DB; `place` then writes each claim with optimistic
concurrency on the host's generation. A claim against a stale view fails, the states
are re-read and the instances not yet claimed are selected again: a concurrent
operator costs a re-read, never an oversubscribed host.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlmodel.ext.asyncio.session import AsyncSession

from orchestrator.db.engine import Database
from orchestrator.errors import NoValidHost
from orchestrator.scheduler.claims import release, try_claim
from orchestrator.scheduler.config import SchedulerConfig, build_filters
from orchestrator.scheduler.engine import (
    Choice,
    HostVerdict,
    Selection,
    check_host,
    select_destinations,
    summarise,
)
from orchestrator.scheduler.filters import HostFilter
from orchestrator.scheduler.host_state import HostState
from orchestrator.scheduler.loader import load_group, load_host_states
from orchestrator.scheduler.request import GroupState, RequestSpec

MAX_CLAIM_RETRIES = 10


@dataclass(frozen=True)
class Placement:
    instance_uuid: str
    host_id: int
    host_name: str
    # (host id, host name) to reschedule to, best first, if the build fails here.
    alternates: tuple[tuple[int, str], ...] = ()


@dataclass
class Plan:
    """What a request got: placements, refusals, and why hosts were or were not used."""

    placements: list[Placement] = field(default_factory=list)
    unplaced: dict[str, str] = field(default_factory=dict)  # instance uuid -> why
    explanation: list[HostVerdict] = field(default_factory=list)
    total_hosts: int = 0

    def host_of(self, instance_uuid: str) -> Placement | None:
        return next((p for p in self.placements if p.instance_uuid == instance_uuid), None)

    def shortfall(self, wanted: int) -> str | None:
        """Why the request fails when fewer than ``wanted`` were placed (None if not):
        the one message a real create and a dry run both give."""
        if len(self.placements) >= wanted:
            return None
        reason = next(iter(self.unplaced.values()), "no valid host")
        placed = f"{len(self.placements)} of {len(self.placements) + len(self.unplaced)} placeable"
        return f"no valid host for the request ({placed}, {wanted} needed): {reason}"


class FilterScheduler:
    def __init__(
        self,
        db: Database,
        config: SchedulerConfig | None = None,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.db = db
        self.config = config or SchedulerConfig()
        self.filters: tuple[HostFilter, ...] = build_filters(self.config)
        self.rng = rng or random.Random()

    def _select(self, hosts: list[HostState], specs: Sequence[RequestSpec]) -> Selection:
        return select_destinations(hosts, specs, self.config, self.rng)

    async def plan(self, specs: Sequence[RequestSpec]) -> Plan:
        """Where the request would go, claiming nothing: `--dry-run` and `--explain`."""
        async with self.db.read() as session:
            hosts = await load_host_states(session)
            await _refresh_groups(session, specs)
        selection = self._select(hosts, specs)
        plan = Plan(explanation=selection.explanation, total_hosts=len(hosts))
        for choice in selection.choices:
            if choice.host is None:
                plan.unplaced[choice.instance_uuid] = choice.error or "no valid host"
            else:
                plan.placements.append(_placement(choice.instance_uuid, choice.host, choice))
        return plan

    async def place(self, specs: Sequence[RequestSpec], *, min_count: int | None = None) -> Plan:
        """Claim a host for each spec; fewer than `min_count` (default: all) claims
        means none: what was claimed is given back and NoValidHost says why."""
        wanted = len(specs) if min_count is None else min_count
        plan = Plan()
        try:
            await self._place(list(specs), plan)
        except BaseException:
            await self._release(plan.placements)
            raise
        shortfall = plan.shortfall(wanted)
        if shortfall is not None:
            await self._release(plan.placements)
            raise NoValidHost(shortfall)
        return plan

    async def _place(self, pending: list[RequestSpec], plan: Plan) -> None:
        for _ in range(MAX_CLAIM_RETRIES):
            async with self.db.read() as session:
                hosts = await load_host_states(session)
                await _refresh_groups(session, pending)
            generations = {h.id: h.generation for h in hosts}
            selection = self._select(hosts, pending)
            if not plan.explanation:
                plan.explanation, plan.total_hosts = selection.explanation, len(hosts)
            stale = False
            for choice, spec in zip(selection.choices, list(pending), strict=True):
                if choice.host is None:
                    plan.unplaced[spec.instance_uuid] = choice.error or "no valid host"
                    pending.remove(spec)
                    continue
                host_id = choice.host.id
                async with self.db.session() as session:
                    claimed = await try_claim(session, host_id, generations[host_id], spec)
                if not claimed:
                    stale = True  # someone else claimed there since we read: re-read
                    break
                generations[host_id] += 1
                plan.placements.append(_placement(spec.instance_uuid, choice.host, choice))
                pending.remove(spec)
            if not stale:
                return
        for spec in pending:
            plan.unplaced[spec.instance_uuid] = (
                f"could not claim resources after {MAX_CLAIM_RETRIES} tries (heavy contention)"
            )

    async def claim_alternate(
        self, spec: RequestSpec, alternates: Sequence[tuple[int, str]]
    ) -> tuple[Placement | None, list[str]]:
        """Reschedule: claim the first alternate that still passes the filters, read
        fresh from the DB. Returns the placement (or None) and why the others were not."""
        refused: list[str] = []
        for host_id, host_name in alternates:
            async with self.db.session() as session:
                found = await load_host_states(session, [host_id])
                await _refresh_groups(session, [spec])
                if not found:
                    refused.append(f"{host_name}: gone")
                    continue
                (host,) = found
                verdict = check_host(host, spec, self.filters)
                if not verdict.passed:
                    refused.append(f"{host_name}: {verdict.reason}")
                    continue
                if await try_claim(session, host.id, host.generation, spec):
                    return Placement(spec.instance_uuid, host.id, host.name), refused
                refused.append(f"{host_name}: claimed by someone else meanwhile")
        return None, refused

    async def _release(self, placements: Sequence[Placement]) -> None:
        async with self.db.session() as session:
            for placement in placements:
                await release(session, placement.instance_uuid)


async def _refresh_groups(session: AsyncSession, specs: Sequence[RequestSpec]) -> None:
    """Re-read where each group's members are (shared GroupState objects, in place)."""
    seen: set[int] = set()
    for spec in specs:
        group: GroupState | None = spec.group
        if group is not None and id(group) not in seen:
            seen.add(id(group))
            fresh = await load_group(session, group.id)
            group.hosts = Counter(fresh.hosts)


def _placement(instance_uuid: str, host: HostState, choice: Choice) -> Placement:
    return Placement(
        instance_uuid, host.id, host.name, tuple((a.id, a.name) for a in choice.alternates)
    )


__all__ = ["FilterScheduler", "Placement", "Plan", "summarise"]
