"""The scheduler: load host states, select (filters → weighers), then claim.

select → plan → apply as named steps: `engine.select_destinations` decides in memory
from one consistent read of the DB; `place` then writes the whole request's claims in
one transaction, with optimistic concurrency on every chosen host's generation. A
claim against a stale view writes nothing; the states are re-read and the request is
selected again after a jittered backoff (db/retry.py): a concurrent operator costs a
re-read, never an oversubscribed host, and never half a request.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlmodel.ext.asyncio.session import AsyncSession

from orchestrator.db.engine import Database
from orchestrator.db.retry import ATTEMPTS, RetriesExhausted, StaleGeneration, retrying
from orchestrator.errors import NoValidHost
from orchestrator.scheduler.claims import claim_all, try_claim
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

# A request that keeps losing races is refused after this many tries.
CLAIM_ATTEMPTS = ATTEMPTS


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
            hosts = await load_host_states(session, servers=hinted(specs))
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
        """Claim a host for each spec that fits; fewer than `min_count` (default: all)
        means none, and NoValidHost says why.

        The request's claims are written in one transaction that checks every chosen
        host's generation: all of them land or none does. A request that lost a race
        (a host moved on since it was read) reads again and decides again after a
        jittered backoff, so of several requests racing for the last room each one
        either gets all it needs or is refused for want of room, never for having
        collided with another that was refused too."""
        wanted = len(specs) if min_count is None else min_count
        plan = Plan()
        try:
            await retrying(lambda: self._attempt(list(specs), wanted, plan))
        except RetriesExhausted:
            plan.placements.clear()
            for spec in specs:
                plan.unplaced[spec.instance_uuid] = (
                    f"could not claim resources after {CLAIM_ATTEMPTS} tries (heavy contention)"
                )
        shortfall = plan.shortfall(wanted)
        if shortfall is not None:
            raise NoValidHost(shortfall)
        return plan

    async def _attempt(self, specs: list[RequestSpec], wanted: int, plan: Plan) -> None:
        """One read, one selection, one transaction; StaleGeneration when a chosen host
        changed since the read (the transaction then wrote nothing)."""
        async with self.db.read() as session:
            hosts = await load_host_states(session, servers=hinted(specs))
            await _refresh_groups(session, specs)
        generations = {h.id: h.generation for h in hosts}
        selection = self._select(hosts, specs)
        plan.placements.clear()
        plan.unplaced.clear()
        plan.explanation, plan.total_hosts = selection.explanation, len(hosts)
        chosen: list[tuple[Choice, RequestSpec]] = []
        for choice, spec in zip(selection.choices, specs, strict=True):
            if choice.host is None:
                plan.unplaced[spec.instance_uuid] = choice.error or "no valid host"
            else:
                chosen.append((choice, spec))
        if len(chosen) < wanted:
            return  # refused on this view: nothing to claim
        async with self.db.session() as session:
            # In id order, so two requests on PostgreSQL never wait for each other's
            # hosts in opposite orders (a deadlock).
            host_ids = sorted({c.host.id for c, _ in chosen if c.host is not None})
            if not await claim_all(session, {h: generations[h] for h in host_ids}, chosen):
                raise StaleGeneration("a chosen host was claimed on since it was read")
        plan.placements.extend(
            _placement(spec.instance_uuid, choice.host, choice)
            for choice, spec in chosen
            if choice.host is not None
        )

    async def claim_alternate(
        self, spec: RequestSpec, alternates: Sequence[tuple[int, str]]
    ) -> tuple[Placement | None, list[str]]:
        """Reschedule: claim the first alternate that still passes the filters, read
        fresh from the DB. Returns the placement (or None) and why the others were not."""
        refused: list[str] = []
        for host_id, host_name in alternates:
            async with self.db.session() as session:
                found = await load_host_states(session, [host_id], hinted([spec]))
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


def hinted(specs: Sequence[RequestSpec]) -> set[str]:
    """The servers the request's same-host and different-host hints name: the only
    ones whose hosts the filters need to know."""
    return {uuid for spec in specs for uuid in spec.same_host | spec.different_host}


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
