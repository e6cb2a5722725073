"""Numbers on the command line: nan and infinities are one-line errors, not a wait for ever."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.herdcli import assert_one_line_error
from tests.unit.cli.forkcli import ForkedHerd


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_a_wait_timeout_must_be_a_finite_number_of_seconds(tmp_path: Path, value: str) -> None:
    result = ForkedHerd(tmp_path).run("server", "wait", "--timeout", value)
    assert_one_line_error(result, code=2, contains="--timeout")


@pytest.mark.parametrize("value", ["nan", "-inf"])
def test_a_prune_age_must_be_a_finite_number_of_hours(tmp_path: Path, value: str) -> None:
    result = ForkedHerd(tmp_path).run("image", "cache", "prune", "--older-than", value, "--dry-run")
    assert_one_line_error(result, code=2, contains="--older-than")
