"""Every command that changes something says, with `--json`, what it did: one JSON
document on stdout, nothing else there."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.herdcli import HerdCli
from tests.unit.cli.forkcli import ForkedHerd


@pytest.fixture
def herd(tmp_path: Path, db_url: str) -> HerdCli:
    """On each selected engine (db_url): the CLI stores what these tests read back."""
    return ForkedHerd(tmp_path, database_url=db_url)


def test_deleting_an_image_a_key_pair_and_a_group_answers_json(
    herd: HerdCli, tmp_path: Path
) -> None:
    disk = tmp_path / "blank.qcow2"
    disk.write_bytes(b"QFI\xfb\0\0\0\x03" + bytes(504))  # an empty qcow2 v3 header
    herd.ok("image", "create", "blank", "--file", str(disk))
    herd.ok("keypair", "create", "ops", "--private-key", str(tmp_path / "ops"))
    herd.ok("group", "create", "web", "--policy", "anti-affinity")

    assert herd.ok("image", "delete", "blank", "--json").json() == {
        "image": "blank",
        "deleted": True,
    }
    assert herd.ok("keypair", "delete", "ops", "--json").json() == {
        "keypair": "ops",
        "deleted": True,
    }
    assert herd.ok("group", "delete", "web", "--json").json() == {"group": "web", "deleted": True}
    assert herd.ok("image", "list", "--json").json() == []
    assert herd.ok("keypair", "list", "--json").json() == []
    assert herd.ok("group", "list", "--json").json() == []
