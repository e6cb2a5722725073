"""`herd volume` and `herd server add/remove volume` through the real CLI process: bad
input is one line with its exit code, and a refused create stores nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.herdcli import HerdCli, assert_one_line_error
from tests.unit.cli.forkcli import ForkedHerd


@pytest.fixture
def herd(tmp_path: Path, db_url: str) -> HerdCli:
    return ForkedHerd(tmp_path, database_url=db_url)


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (("volume", "create", "v", "--size", "0"), 2, "--size must be from 1 to"),
        (("volume", "create", "v", "--size", "1", "--format", "vmdk"), 2, "--format must be"),
        (("volume", "create", "bad name", "--size", "1"), 2, "volume name 'bad name'"),
        (("volume", "create", "v", "--size", "1"), 5, "no valid host"),
        (("volume", "create", "v", "--size", "1", "--image", "nope"), 3, "image 'nope'"),
        (("volume", "show", "nope"), 3, "volume 'nope' not found"),
        (("volume", "delete", "nope"), 3, "volume 'nope' not found"),
        (("volume", "extend", "nope", "--size", "2"), 3, "volume 'nope' not found"),
        (("server", "add", "volume", "web", "nope"), 3, "not found"),
        (("server", "image", "create", "web", "--name", "img"), 3, "not found"),
    ],
)
def test_bad_volume_requests_are_one_line_errors(
    herd: HerdCli, args: tuple[str, ...], code: int, says: str
) -> None:
    assert_one_line_error(herd.run(*args), code=code, contains=says)
    assert herd.ok("volume", "list", "--json").json() == []
