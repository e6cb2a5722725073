"""`--dry-run` and `--explain`: where servers go, and why every host was or was not
chosen — the answer Nova's "No valid host was found" never gives."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich.text import Text

from orchestrator.cli.output import out, print_json, table, text
from orchestrator.cli.states import age
from orchestrator.scheduler.engine import HostVerdict
from orchestrator.scheduler.scheduler import Plan, summarise


def plan_dict(
    plan: Plan, names: dict[str, str], facts: dict[str, datetime | None] | None = None
) -> dict[str, Any]:
    shown: dict[str, Any] = {} if facts is None else {"facts": facts_list(facts)}
    return {
        "placements": [
            {
                "server": names.get(p.instance_uuid, p.instance_uuid),
                "host": p.host_name,
                "alternates": [name for _, name in p.alternates],
            }
            for p in plan.placements
        ],
        "unplaced": [
            {"server": names.get(u, u), "reason": reason} for u, reason in plan.unplaced.items()
        ],
        "summary": summarise(plan.total_hosts, plan.explanation),
        "explanation": [verdict_dict(v) for v in plan.explanation],
        **shown,
    }


def facts_list(facts: dict[str, datetime | None]) -> list[dict[str, Any]]:
    """Each host's facts and their age, for a plan made from the DB: a host silent for
    an hour may have changed since, and the operator should see that before trusting it."""
    return [
        {
            "host": name,
            "last_seen_at": seen,
            "age_seconds": None if seen is None else round(seconds_since(seen), 1),
        }
        for name, seen in facts.items()
    ]


def seconds_since(moment: datetime) -> float:
    if moment.tzinfo is None:  # SQLite drops the zone; herd always stores UTC
        moment = moment.replace(tzinfo=UTC)
    return (datetime.now(UTC) - moment).total_seconds()


def verdict_dict(verdict: HostVerdict) -> dict[str, Any]:
    return {
        "host": verdict.host_name,
        "passed": verdict.passed,
        "filter": verdict.filter,
        "reason": verdict.reason,
        "scores": verdict.scores,
        "total": verdict.total,
    }


def show_plan(
    plan: Plan,
    names: dict[str, str],
    *,
    as_json: bool,
    explain: bool,
    placements: bool = True,
    facts: dict[str, datetime | None] | None = None,
) -> None:
    """The plan as JSON or tables; ``facts`` (host → last seen) says how old the
    knowledge it was made from is."""
    if as_json:
        print_json(plan_dict(plan, names, facts))
        return
    if facts is not None:
        out.print(
            table(
                "host facts the plan used (--refresh contacts hosts first)",
                ("host", "facts from"),
                ((name, age(seen)) for name, seen in facts.items()),
            )
        )
    if explain:
        out.print(explanation_table(plan))
    if placements:
        rows = [
            (names.get(p.instance_uuid), p.host_name, ", ".join(n for _, n in p.alternates) or "-")
            for p in plan.placements
        ]
        rows += [(names.get(u), "-", f"not placed: {why}") for u, why in plan.unplaced.items()]
        out.print(table("plan (dry run)", ("server", "host", "alternates"), rows))


def explanation_table(plan: Plan) -> Any:
    weighers = sorted({name for v in plan.explanation for name in v.scores})
    rows = []
    for verdict in plan.explanation:
        if verdict.passed:
            scores = [f"{verdict.scores.get(w, 0.0):.3g}" for w in weighers]
            total = f"{verdict.total:.3g}" if verdict.total is not None else "-"
            rows.append((verdict.host_name, text("pass", "green"), "", *scores, total))
        else:
            refusal = Text.assemble(text(verdict.filter, "red"), ": ", text(verdict.reason))
            rows.append(
                (verdict.host_name, text("no", "red"), refusal, *("" for _ in weighers), "")
            )
    title = f"scheduler: {summarise(plan.total_hosts, plan.explanation)}"
    return table(title, ("host", "fits", "refused by", *weighers, "total"), rows)
