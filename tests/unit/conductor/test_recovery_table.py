"""README's recovery table is the one the task classes' RECOVERY rules generate."""

from __future__ import annotations

from pathlib import Path

from orchestrator.conductor.recovery import (
    TABLE_BEGIN,
    TABLE_END,
    recovery_table_markdown,
    task_classes,
)

README = Path(__file__).resolve().parents[3] / "README.md"


def test_readme_carries_the_generated_recovery_table() -> None:
    text = README.read_text()
    assert text.count(TABLE_BEGIN) == 1 and text.count(TABLE_END) == 1, (
        f"README.md needs exactly one {TABLE_BEGIN} ... {TABLE_END} block"
    )
    shown = text.split(TABLE_BEGIN, 1)[1].split(TABLE_END, 1)[0].strip("\n") + "\n"
    assert shown == recovery_table_markdown(), (
        "README.md's recovery table differs from the tasks' RECOVERY rules: replace the "
        f"block between {TABLE_BEGIN} and {TABLE_END} with the output of "
        "`python -m orchestrator.conductor.recovery`"
    )


def test_every_journalled_step_has_a_row() -> None:
    table = recovery_table_markdown()
    for kind, cls in task_classes().items():
        assert cls.RECOVERY, f"{kind} journals steps but says nothing of their recovery"
        for step in cls.RECOVERY:
            assert f"| `{kind}` | `{step}` |" in table
