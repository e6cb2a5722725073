"""The placement core: hosts + request + config → a host (and alternates) per instance.

Pure: no DB, no asyncio, no clock. The caller loads host states, calls
`select_destinations`, then claims in the DB and reschedules onto alternates after
re-checking them with `check_host` against fresh state.

Why it is fast (1,000 instances on 10,000 hosts well under a second): placing an
instance changes only the chosen host (and the request's shared group counter), so

1. every filter runs over every host once, for the first spec; the first refusal per
   host is kept — that is the explanation, collected while filtering;
2. the passing hosts are weighed once and put in a heap keyed by (-total, name);
3. each spec pops from the heap, re-checks only the popped hosts (one host's filters
   are cheap), consumes on the chosen one, re-weighs and pushes back only that one.

A host that fails a re-check is dropped for the rest of the request, which is sound
because within a request filters only get stricter: resources and counters only grow,
and a group only gains members.

Deliberate difference from Nova: Nova re-normalises every weigher over all candidates
for every instance. Here each weigher's min/max bounds are fixed for the request —
widened to cover the values the request itself can reach (weighers.Weigher.widen) — and
later values are clamped to [0, 1]. Other hosts' totals therefore never change, which
is what makes the heap valid. Rankings within a weigher are exact; the balance between
weighers can drift from Nova's as a long request drains hosts.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from orchestrator.scheduler.config import SchedulerConfig, build_filters, build_weighers
from orchestrator.scheduler.filters import HostFilter
from orchestrator.scheduler.host_state import HostState
from orchestrator.scheduler.request import RequestSpec
from orchestrator.scheduler.weighers import Weigher


@dataclass(frozen=True)
class Choice:
    instance_uuid: str
    host: HostState | None
    alternates: tuple[HostState, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class HostVerdict:
    """One host's fate for the request: its first refusal, or its weighted scores."""

    host_name: str
    passed: bool
    filter: str | None = None
    reason: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    total: float | None = None


@dataclass(frozen=True)
class Selection:
    choices: list[Choice]
    # For the first spec: passing hosts best first, then refused hosts in input order.
    explanation: list[HostVerdict]

    @property
    def placed(self) -> list[Choice]:
        return [c for c in self.choices if c.host is not None]


def check_host(host: HostState, spec: RequestSpec, filters: Sequence[HostFilter]) -> HostVerdict:
    """Run the filters on one host, e.g. an alternate re-read from the DB before a retry."""
    for host_filter in filters:
        verdict = host_filter.check(host, spec)
        if not verdict.passed:
            return HostVerdict(host.name, False, host_filter.name, verdict.reason)
    return HostVerdict(host.name, True)


def summarise(total_hosts: int, verdicts: Iterable[HostVerdict]) -> str:
    """ "0/12 hosts fit: 7 ram, 3 anti_affinity — lab-1: needs ...": what Nova never says.

    Examples are taken one per filter, most common first, so the three shown cover the
    reasons an operator is most likely to act on.
    """
    refused = [v for v in verdicts if not v.passed]
    if total_hosts == 0:
        return "no hosts"
    fit = total_hosts - len(refused)
    if not refused:
        return f"{fit}/{total_hosts} hosts fit"
    counts = Counter(v.filter for v in refused)
    parts = ", ".join(f"{n} {name}" for name, n in counts.most_common())
    examples: list[HostVerdict] = []
    for name, _ in counts.most_common():
        examples.append(next(v for v in refused if v.filter == name))
        if len(examples) == 3:
            break
    for verdict in refused:
        if len(examples) == 3:
            break
        if verdict not in examples:
            examples.append(verdict)
    detail = "; ".join(f"{v.host_name}: {v.reason}" for v in examples)
    return f"{fit}/{total_hosts} hosts fit: {parts} — {detail}"


def _same_request(first: RequestSpec, spec: RequestSpec) -> bool:
    return (
        spec.vcpus == first.vcpus
        and spec.ram_mb == first.ram_mb
        and spec.disk_gb == first.disk_gb
        and spec.group is first.group
        and spec.availability_zone == first.availability_zone
        and spec.requested_host == first.requested_host
        and spec.volume_host == first.volume_host
        and spec.ignore_hosts == first.ignore_hosts
        and spec.same_host == first.same_host
        and spec.different_host == first.different_host
        and spec.extra_specs == first.extra_specs
        and spec.image_properties == first.image_properties
    )


class _Scorer:
    """Weighted totals with bounds fixed for the request (see the module docstring)."""

    def __init__(
        self,
        weighers: Sequence[Weigher],
        candidates: Sequence[HostState],
        spec: RequestSpec,
        count: int,
    ) -> None:
        self.names = [w.name for w in weighers]
        # (weigher, lo, multiplier / span) for the weighers that can tell hosts apart.
        self.live: list[tuple[Weigher, float, float, int]] = []
        self.first_raws: list[list[float]] = []
        for index, weigher in enumerate(weighers):
            if not weigher.applies(spec) or not candidates:
                continue
            raws = [weigher.raw(h, spec) for h in candidates]
            lo, hi = weigher.widen(min(raws), max(raws), spec, count)
            if hi > lo:
                self.live.append((weigher, lo, weigher.multiplier / (hi - lo), index))
                self.first_raws.append(raws)

    def initial_scores(self, candidates: Sequence[HostState]) -> list[list[float]]:
        """Per candidate, each configured weigher's weighted score (0 for idle ones)."""
        rows = [[0.0] * len(self.names) for _ in candidates]
        for (weigher, lo, scale, index), raws in zip(self.live, self.first_raws, strict=True):
            top = weigher.multiplier
            for row, raw in zip(rows, raws, strict=True):
                score = (raw - lo) * scale
                # Clamp in weighted space: the multiplier may be negative.
                # `+ 0.0` turns the -0.0 of a negative multiplier into 0.0 for display.
                row[index] = min(max(score, min(0.0, top)), max(0.0, top)) + 0.0
        return rows

    def total(self, host: HostState, spec: RequestSpec) -> float:
        total = 0.0
        for weigher, lo, scale, _ in self.live:
            score = (weigher.raw(host, spec) - lo) * scale
            top = weigher.multiplier
            total += min(max(score, min(0.0, top)), max(0.0, top))
        return total


def select_destinations(
    hosts: list[HostState],
    specs: Sequence[RequestSpec],
    config: SchedulerConfig,
    rng: random.Random | None = None,
) -> Selection:
    """Place every spec of one request, mutating the chosen hosts' states as it goes.

    All specs must be the same request (same flavor, image, zone, group and hints; only
    the uuid differs), because the first spec's filtering stands for all of them.
    A spec that cannot be placed gets `host=None` and the summary as `error`; later specs
    are still tried. Host states are consumed in place, so the caller's list reflects
    the request afterwards.
    """
    if not specs:
        return Selection([], [])
    first = specs[0]
    for spec in specs:
        if not _same_request(first, spec):
            raise ValueError(f"spec {spec.instance_uuid} differs from the request's first spec")
    filters = tuple(f for f in build_filters(config) if f.applies(first))
    weighers = build_weighers(config)
    rng = rng or random.Random()

    # 1. Filter every host once; keep the first refusal as the explanation.
    refused: list[HostVerdict] = []
    candidates: list[HostState] = []
    for host in hosts:
        for host_filter in filters:
            verdict = host_filter.check(host, first)
            if not verdict.passed:
                refused.append(HostVerdict(host.name, False, host_filter.name, verdict.reason))
                break
        else:
            candidates.append(host)

    # 2. Weigh the candidates once, with bounds fixed for the request.
    scorer = _Scorer(weighers, candidates, first, len(specs))
    rows = scorer.initial_scores(candidates)
    names = scorer.names
    heap: list[tuple[float, str, int, HostState]] = []
    passed: list[HostVerdict] = []
    for seq, (host, row) in enumerate(zip(candidates, rows, strict=True)):
        total = sum(row)
        heap.append((-total, host.name, seq, host))
        scores = dict(zip(names, row, strict=True))
        passed.append(HostVerdict(host.name, True, None, None, scores, total))
    heapq.heapify(heap)
    passed.sort(key=lambda v: (-(v.total or 0.0), v.host_name))
    explanation = passed + refused

    # 3. Place one spec at a time, touching only the hosts popped from the heap.
    subset = config.host_subset_size
    alternates_wanted = config.max_attempts - 1
    wanted = max(subset, config.max_attempts)
    dropped: list[HostVerdict] = []
    failure: str | None = None
    choices: list[Choice] = []
    seq = len(heap)
    for spec in specs:
        valid: list[tuple[float, str, int, HostState]] = []
        while heap and len(valid) < wanted:
            entry = heapq.heappop(heap)
            verdict = check_host(entry[3], spec, filters)
            if verdict.passed:
                valid.append(entry)
            else:
                dropped.append(verdict)
        if not valid:
            # Hosts only get stricter within a request: every later spec fails the same
            # way, so the summary is built once.
            if failure is None:
                failure = "no valid host: " + summarise(len(hosts), refused + dropped)
            choices.append(Choice(spec.instance_uuid, None, (), failure))
            continue
        pick = rng.randrange(min(subset, len(valid))) if subset > 1 else 0
        chosen = valid.pop(pick)[3]
        # Alternates are valid *before* this instance lands: if its build fails, the
        # instance is gone again and the group is as it was when they were checked.
        alternates = tuple(entry[3] for entry in valid[:alternates_wanted])
        for entry in valid:
            heapq.heappush(heap, entry)
        chosen.consume(spec)
        if spec.group is not None:
            spec.group.hosts[chosen.id] += 1
        choices.append(Choice(spec.instance_uuid, chosen, alternates))
        verdict = check_host(chosen, spec, filters)
        if verdict.passed:
            seq += 1
            heapq.heappush(heap, (-scorer.total(chosen, spec), chosen.name, seq, chosen))
        else:
            dropped.append(verdict)
    return Selection(choices, explanation)
