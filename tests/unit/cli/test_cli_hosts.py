"""`herd host list | disable | enable` through the real CLI: why a host is disabled is
shown wherever the host is, and an IPv6 endpoint reads back as one."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.herdcli import HerdCli
from tests.unit.cli.forkcli import ForkedHerd

# Documentation addresses (RFC 3849, RFC 5737): applied to the DB, never contacted
# (a disabled host is not met before scheduling, and `host list` reads the DB only).
INVENTORY = """\
hosts:
  - name: v6
    address: 2001:db8::30
    ssh: {port: 2222}
  - name: v4
    address: 192.0.2.7
    enabled: false
flavors:
  - name: m1
    vcpus: 1
    ram_mb: 512
    disk_gb: 1
images:
  - name: blank
    source: https://example.invalid/blank.qcow2
    sha256: "0000000000000000000000000000000000000000000000000000000000000000"
"""


@pytest.fixture
def herd(tmp_path: Path, db_url: str) -> HerdCli:
    """On each selected engine (db_url): the CLI stores what these tests read back."""
    cli = ForkedHerd(tmp_path, database_url=db_url)
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(INVENTORY)
    cli.ok("inventory", "apply", str(inventory))
    return cli


def test_host_list_brackets_an_ipv6_address_before_its_port(herd: HerdCli) -> None:
    table = herd.ok("host", "list").stdout
    assert "[2001:db8::30]:2222" in table
    assert "2001:db8::30:2222" not in table


def test_a_disable_reason_shows_in_host_list_its_json_and_the_schedulers_refusal(
    herd: HerdCli,
) -> None:
    done = herd.ok("host", "disable", "v6", "--reason", "disk swap", "--json")
    assert done.json() == {
        "host": "v6", "enabled": False, "disabled_reason": "disk swap", "changed": True
    }  # fmt: skip
    hosts = {h["name"]: h for h in herd.ok("host", "list", "--json").json()}
    assert hosts["v6"]["disabled_reason"] == "disk swap"
    assert hosts["v4"]["disabled_reason"] is None  # `enabled: false` in the files gives none
    table = herd.ok("host", "list").stdout
    assert "reason" in table and "disk swap" in table
    refused = herd.run("server", "create", "x", "--flavor", "m1", "--image", "blank")
    assert refused.code == 5 and "v6: disabled: disk swap" in refused.stderr.splitlines()[-1]


def test_enable_says_as_json_that_the_host_is_back_and_forgets_the_reason(
    herd: HerdCli,
) -> None:
    herd.ok("host", "disable", "v6", "--reason", "disk swap")
    done = herd.ok("host", "enable", "v6", "--json").json()
    assert done == {"host": "v6", "enabled": True, "disabled_reason": None, "changed": True}
    assert herd.ok("host", "enable", "v6", "--json").json()["changed"] is False
