"""bench/db.py runs end to end at tiny sizes on each engine and its tables hold the
figures: every request placed, none refused or failed, the big request placed whole.
A bench that silently stopped placing (or crashed after printing a header) fails here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
TINY = [
    "--operators", "1", "2",
    "--requests", "2",
    "--per-request", "2",
    "--op-hosts", "5",
    "--hosts", "40",
    "--instances", "10",
    "--runs", "1",
]  # fmt: skip


def rows(output: str, engine: str) -> list[list[str]]:
    """The table rows of one engine, as their cells."""
    found = []
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if len(cells) > 5 and cells[0] == engine:
            found.append(cells)
    return found


def run_bench(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "bench.db", *TINY, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def check(output: str, engine: str) -> None:
    operators, scale = rows(output, engine)[:2], rows(output, engine)[2:]
    assert [r[1] for r in operators] == ["1", "2"]
    for row in operators:
        placed, refused, errors = int(row[2]), int(row[3]), int(row[5])
        assert placed == int(row[1]) * 2 * 2  # operators x requests x servers each
        assert (refused, errors) == (0, 0)
        assert float(row[7]) > 0  # the operators' own CPUs
        assert re.fullmatch(r"\d+\.\d\d of \d+", row[8]), row[8]  # the machine's
        assert float(row[9]) > 0  # placements per second
    (big,) = scale
    assert big[1] == "40" and big[3] == "10"
    assert big[9] == "10"  # all ten placed
    for cell in big[5:9]:  # load, filter+weigh, claim, total
        assert re.fullmatch(r"\d+ ms", cell), cell
    assert f"goal ({engine}): 4 operators" not in output  # only measured with 1 and 4
    assert f"goal ({engine}): 10 on 40 hosts <= 1 s including the load" in output


def test_bench_db_on_sqlite() -> None:
    check(run_bench("--engines", "sqlite"), "sqlite")


def test_bench_db_on_postgresql(pg_empty_url: str) -> None:
    check(run_bench("--engines", "postgresql", "--pg-url", pg_empty_url), "postgresql")


def test_bench_db_parts_can_be_skipped() -> None:
    output = run_bench("--engines", "sqlite", "--skip", "operators")
    assert len(rows(output, "sqlite")) == 1
