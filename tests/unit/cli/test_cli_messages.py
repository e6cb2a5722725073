"""Pydantic's wording never reaches the operator: `image create` and the settings file
say what the validator says ("unknown scheme 'ftp'..."), as the inventory does, not
"Value error, unknown scheme 'ftp'..." or "Input should be greater than or equal to 0"."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.herdcli import HerdCli, assert_one_line_error
from tests.unit.cli.forkcli import ForkedHerd

IMAGE_CASES = {
    "scheme": ("x", ("--url", "ftp://a/x"), "image source: unknown scheme 'ftp'"),
    "name": ("a b", ("--url", "https://a/x"), "image name: must be 1 to 63"),
    "sha256": ("x", ("--url", "https://a/x", "--sha256", "zz"), "image sha256: must be 64 hex"),
    "min ram": ("x", ("--url", "https://a/x", "--min-ram", "-1"), "min_ram_mb: must be at least 0"),
}


@pytest.fixture(scope="module")
def herd(tmp_path_factory: pytest.TempPathFactory) -> HerdCli:
    return ForkedHerd(tmp_path_factory.mktemp("messages"))


@pytest.mark.parametrize("case", IMAGE_CASES, ids=list(IMAGE_CASES))
def test_image_create_errors_are_the_validators_words(herd: HerdCli, case: str) -> None:
    name, args, expected = IMAGE_CASES[case]
    line = assert_one_line_error(herd.run("image", "create", name, *args), code=2)
    assert expected in line
    assert "Value error" not in line and "Input should" not in line


def test_a_bad_setting_is_the_validators_words(herd: HerdCli, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("scheduler:\n  enabled_filters: [ram, nosuchfilter]\n")
    herd.env["HERD_CONFIG"] = str(config)
    try:
        line = assert_one_line_error(herd.run("server", "list"), code=2)
    finally:
        del herd.env["HERD_CONFIG"]
    assert f"{config}: scheduler.enabled_filters: " in line
    assert "nosuchfilter" in line and "Value error" not in line
