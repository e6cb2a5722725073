"""config.yaml as an operator writes it: nonsense is one line naming the file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import load_config
from orchestrator.errors import InvalidInput


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "where"),
    [
        # A NaN multiplier makes every score NaN: the ranking, silently, random.
        ("scheduler:\n  weights: {ram: .nan}\n", "scheduler.weights.ram"),
        ("scheduler:\n  weights: {disk: -.inf}\n", "scheduler.weights.disk"),
        ("scheduler:\n  service_down_seconds: .inf\n", "scheduler.service_down_seconds"),
        # "Never" is null for the cache, and a stuck task must clear some day.
        ("reconcile:\n  image_cache_max_age_hours: .inf\n", "reconcile.image_cache_max_age"),
        ("reconcile:\n  build_timeout: .inf\n", "reconcile.build_timeout"),
    ],
    ids=["nan-weight", "inf-weight", "inf-down", "inf-cache-age", "inf-build-timeout"],
)
def test_a_number_that_is_not_finite_is_refused(tmp_path: Path, text: str, where: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InvalidInput) as refused:
        load_config(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: {where}") and "finite" in message, message
    assert "\n" not in message


@pytest.mark.parametrize("filters", ["[]", "[ram, vcpu, disk]"], ids=["empty", "no-compute"])
def test_the_filters_must_include_compute(tmp_path: Path, filters: str) -> None:
    path = write(tmp_path, f"scheduler:\n  enabled_filters: {filters}\n")
    with pytest.raises(
        InvalidInput, match=r"scheduler.enabled_filters: .*must include 'compute'.*disabled"
    ):
        load_config(path)


def test_a_key_written_twice_is_refused_naming_both_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "scheduler:\n  max_attempts: 2\n  max_attempts: 5\n")
    with pytest.raises(InvalidInput, match=rf"^{path}:3: duplicate key 'max_attempts' .*line 2"):
        load_config(path)


def test_a_finite_config_with_compute_loads(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "scheduler:\n  enabled_filters: [compute, ram]\n  weights: {ram: -1.5}\n"
        "reconcile:\n  build_timeout: 7200\n",
    )
    config = load_config(path)
    assert config.scheduler.enabled_filters == ["compute", "ram"]
    assert config.scheduler.weights["ram"] == -1.5 and config.reconcile.build_timeout == 7200
