"""Through the real `herd` process: names with a line break and values the agent would
refuse get one line and exit 2, and nothing is written."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.herdcli import HerdCli, assert_one_line_error
from tests.unit.cli.forkcli import ForkedHerd

CATALOG = """\
flavors:
  - {{name: m1.small, vcpus: 1, ram_mb: 512, disk_gb: 1}}
images:
  - {{name: blank, source: "{image}"}}
networks:
"""


@pytest.fixture
def herd(tmp_path: Path) -> HerdCli:
    return ForkedHerd(tmp_path)


def test_a_group_name_with_a_trailing_newline_is_refused(herd: HerdCli) -> None:
    herd.ok("group", "create", "db", "--policy", "anti-affinity")
    line = assert_one_line_error(
        herd.run("group", "create", "db\n", "--policy", "anti-affinity"), code=2
    )
    assert line == (
        "herd: error: group name 'db\\n' is invalid: use letters, digits, '.', '_' or '-', "
        "start with a letter or digit, at most 63 characters"
    )
    assert [g["name"] for g in herd.ok("group", "list", "--json").json()] == ["db"]


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
def test_more_networks_than_a_server_has_nics_is_one_line(herd: HerdCli, tmp_path: Path) -> None:
    image = tmp_path / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "1M"], check=True)
    names = [f"n{i}" for i in range(17)]
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(
        CATALOG.format(image=image)
        + "".join(f"  - {{name: {n}, type: bridge, bridge: br0}}\n" for n in names)
    )
    herd.ok("inventory", "apply", str(inventory))
    networks = [arg for name in names for arg in ("--network", name)]
    command = ("server", "create", "web", "--flavor", "m1.small", "--image", "blank")
    for dry_run in ((), ("--dry-run",)):
        assert_one_line_error(
            herd.run(*command, *networks, *dry_run),
            code=2,
            contains="17 --network options: a server has at most 16 NICs",
        )
    assert herd.servers() == []


def test_an_image_property_the_agent_would_refuse_is_one_line(herd: HerdCli) -> None:
    result = herd.run(
        "image",
        "create",
        "k",
        "--url",
        "https://images.example.org/k",
        "--property",
        "os_command_line=a\tb",
    )
    assert_one_line_error(result, code=2, contains="properties.os_command_line: must be one line")
    assert herd.ok("image", "list", "--json").json() == []


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
def test_a_timeout_the_agent_would_refuse_is_refused_before_the_task_is_taken(
    herd: HerdCli, tmp_path: Path
) -> None:
    image = tmp_path / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "1M"], check=True)
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(CATALOG.format(image=image))
    herd.ok("inventory", "apply", str(inventory))
    assert herd.run("server", "create", "web", "--flavor", "m1.small", "--image", "blank").code == 5
    before = herd.server("web")
    actions = herd.ok("server", "actions", "web", "--json").json()
    for command, limits in [
        (("server", "stop", "web", "--timeout", "3601"), "0 to 3600"),
        (("server", "reboot", "web", "--timeout", "-1"), "0 to 3600"),
        (("server", "migrate", "web", "--timeout", "86400"), "0 to 3600"),
        (("server", "live-migrate", "web", "--timeout", "0"), "1 to 86400"),
    ]:
        assert_one_line_error(
            herd.run(*command), code=2, contains=f"--timeout must be {limits} seconds"
        )
    after = herd.server("web")
    assert (after["task_state"], after["vm_state"]) == (before["task_state"], before["vm_state"])
    assert herd.ok("server", "actions", "web", "--json").json() == actions  # none begun
